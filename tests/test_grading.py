"""The grading protocol (liverfat.grading) with graders whose scores are known: the split against
scikit-learn, no fit sees a subject it is scored on, metrics against scikit-learn, DeLong's test
of the baseline chosen without the test set, resume from the cache, failed subjects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.evaluation.grader import delong_test, grading_scheme
from liverfat.evaluation.layouts import grading_layout
from liverfat.grading import grading_split, run_grading

FITS: list[tuple[str, list[str]]] = []  # (model, subjects) of every fit, in order


class KnownGrader:
    """Scores each subject from its own reference plus seeded noise of ``noise`` (logit units);
    records what it was fitted on; fails the subjects named in ``fail``."""

    def __init__(self, name: str, noise: float, fail: tuple[str, ...] = ()) -> None:
        self.name, self.noise, self.fail = name, noise, fail

    def params_json(self) -> dict:
        return {"name": self.name, "noise": self.noise, "fail": list(self.fail)}

    def fit(self, manifest: Manifest) -> KnownGrader:
        FITS.append((self.name, list(manifest.subject_ids)))
        return self

    def predict_scores(self, manifest: Manifest) -> tuple[pd.DataFrame, dict[str, str]]:
        pdff = manifest.target("liver_pdff_pct")
        ids = [s for s in pdff.index if s not in self.fail]
        rng = np.random.default_rng(abs(hash((self.name, tuple(ids)))) % 2**32)
        logits = np.stack(
            [np.zeros(len(ids)), (pdff.loc[ids].to_numpy() - 5.5) / 3], axis=1
        ) + rng.normal(0, self.noise, (len(ids), 2))
        p = softmax(logits, axis=1)
        scores = pd.DataFrame({"p_grade0": p[:, 0], "p_grade1": p[:, 1]}, index=ids)
        scores["grade"] = p.argmax(axis=1)
        return scores, {s: f"subject {s}: unreadable" for s in self.fail if s in pdff.index}


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    rng = np.random.default_rng(0)
    n = 60
    pdff = np.exp(rng.normal(1.2, 0.9, n))
    table = pd.DataFrame(
        {
            "subject_id": [f"S{i:03d}" for i in range(n)],
            "liver_pdff_pct": np.round(pdff, 2),
            "age": rng.uniform(40, 80, n).round(1),
            "sex": rng.integers(0, 2, n),
            "bmi": (24 + 2 * np.log(pdff) + rng.normal(0, 2, n)).round(1),
        }
    )
    table.loc[3, "liver_pdff_pct"] = np.nan  # no reference: takes no part
    card = {
        "name": "known",
        "targets": {"liver_pdff_pct": {"meaning": "PDFF", "unit": "%", "range": [0, 100]}},
    }
    return Manifest(card=card, subjects=table, path=tmp_path / "m.yaml", root=tmp_path)


def _run(manifest: Manifest, graders: dict, **kwargs):
    FITS.clear()
    defaults = {"target": "liver_pdff_pct", "scheme": grading_scheme("binary"), "n_boot": 50}
    return run_grading(manifest, graders, **{**defaults, **kwargs})


def test_split_is_scikit_learns_and_the_folds_partition_the_training_part(manifest):
    reference = manifest.target("liver_pdff_pct").dropna()
    grades = pd.Series((reference >= 5.5).astype(int), index=reference.index)
    split = grading_split(grades, test_fraction=0.3, folds=4, seed=7)
    expected_train, expected_test = train_test_split(
        np.asarray(reference.index), test_size=0.3, random_state=7, stratify=grades.to_numpy()
    )
    assert split.train == sorted(expected_train) and split.test == sorted(expected_test)
    assert sorted(s for fold in split.folds for s in fold) == split.train
    assert len(split.folds) == 4 and "S003" not in split.train + split.test
    share = grades.loc[split.test].mean()
    assert abs(share - grades.mean()) < 0.05  # stratified


def test_no_fit_sees_a_subject_it_is_scored_on(manifest):
    graders = {"a": lambda: KnownGrader("a", 0.5), "b": lambda: KnownGrader("b", 2.0)}
    result = _run(manifest, graders, folds=3, seed=1)
    split = result.split
    assert len(FITS) == 2 * (1 + 3)  # per model: the training part, then each fold's rest
    for model in ("a", "b"):
        fits = [ids for name, ids in FITS if name == model]
        assert fits[0] == split.train
        for fold, ids in zip(split.folds, fits[1:], strict=True):
            assert set(ids) == set(split.train) - set(fold)
    scored = result.scores[result.scores["set"] == "train_cv"]
    assert sorted(scored[scored["model"] == "a"]["subject_id"]) == split.train


def test_metrics_equal_scikit_learn(manifest):
    graders = {"a": lambda: KnownGrader("a", 1.0)}
    result = _run(manifest, graders, folds=3)
    for name in ("train", "train_cv", "test"):
        rows = result.scores[(result.scores["model"] == "a") & (result.scores["set"] == name)]
        metrics = result.metrics.set_index(["model", "set"]).loc[("a", name)]
        assert metrics["n"] == len(rows)
        assert metrics["auc"] == pytest.approx(roc_auc_score(rows["grade"], rows["p_grade1"]))
        predicted = rows[["p_grade0", "p_grade1"]].to_numpy().argmax(axis=1)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(rows["grade"], predicted))
        assert metrics["auc_lower"] <= metrics["auc"] <= metrics["auc_upper"]


def test_delong_compares_the_baseline_chosen_on_training_folds(manifest):
    graders = {
        "good": lambda: KnownGrader("good", 0.3),
        "poor": lambda: KnownGrader("poor", 3.0),
        "net": lambda: KnownGrader("net", 1.0),
    }
    result = _run(manifest, graders, folds=3, baseline_models=["good", "poor"])
    cv = result.metrics[result.metrics["set"] == "train_cv"].set_index("model")["auc"]
    assert cv["good"] > cv["poor"]
    row = result.delong.iloc[0]
    assert (row["model_a"], row["model_b"], row["chosen_on"]) == ("good", "net", "train_cv")
    test = result.scores[result.scores["set"] == "test"].set_index(["model", "subject_id"])
    good, net = test.loc["good"], test.loc["net"].loc[test.loc["good"].index]
    expected = delong_test(good["grade"] >= 1, good["p_grade1"], net["p_grade1"])
    assert row["z"] == pytest.approx(expected["z"]) and row["p"] == pytest.approx(expected["p"])


def test_rerun_resumes_from_the_cache_and_failed_subjects_are_listed(manifest, tmp_path):
    graders = {"a": lambda: KnownGrader("a", 1.0, fail=("S010",))}
    first = _run(manifest, graders, folds=2, work_dir=tmp_path / "work")
    assert len(FITS) == 3
    assert first.failures["a"] == {"S010": "subject S010: unreadable"}
    again = _run(manifest, graders, folds=2, work_dir=tmp_path / "work")
    assert FITS == []  # every set came from the cache
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    assert again.failures == first.failures
    n_test = len(first.split.test) - ("S010" in first.split.test)
    assert first.metrics.set_index("set").loc["test", "n"] == n_test
    paths = first.write(tmp_path / "out")
    assert {p.name for p in paths} >= {"grading_table.md", "grading_table.tex", "grading.json"}
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert failures.to_dict("records") == [
        {"model": "a", "subject_id": "S010", "message": "subject S010: unreadable"}
    ]


def test_too_few_subjects_is_one_line(manifest):
    few = manifest.select(subject_ids=manifest.subject_ids[:8])
    with pytest.raises(LiverfatError, match="10\\+ subjects"):
        _run(few, {"a": lambda: KnownGrader("a", 1.0)})


def test_published_layout_of_the_grading_table():
    metrics = pd.DataFrame(
        [
            ("xgboost", "train", 0.9876, 0.95, 1.0, 0.9, 0.85, 0.94),
            ("xgboost", "test", 0.81, 0.7, 0.9, 0.783, 0.66, 0.87),
            ("densenet", "test", np.nan, np.nan, np.nan, 0.663, 0.5, 0.8),
        ],
        columns=["model", "set", "auc", "auc_lower", "auc_upper"]
        + ["accuracy", "accuracy_lower", "accuracy_upper"],
    )
    table = grading_layout(metrics).set_index("Model")
    assert table.loc["xgboost", "AUC training (95% CI)"] == "0.99 (0.95-1.00)"
    assert table.loc["xgboost", "ACC test (95% CI), %"] == "78.3 (66.0-87.0)"
    assert table.loc["densenet", "AUC test (95% CI)"] == "n/a"
    assert table.loc["densenet", "AUC training (95% CI)"] == "n/a"
    assert list(table.columns)[:2] == ["AUC training (95% CI)", "ACC training (95% CI), %"]


def test_liverfat_grade_runs_trees_and_a_network_on_the_same_rois(phantom_dir, tmp_path):
    """The command end to end on the quarter-scale phantom (4-pixel ROIs fit its livers): one
    split for both models, the ROI files both read, the tables, and a rerun from the cache."""
    from liverfat.cli import main

    out = tmp_path / "grade"
    argv = [
        "grade",
        str(phantom_dir / "manifest.yaml"),
        "--split",
        "A",
        "--out",
        str(out),
        "--models",
        "gbdt",
        "densenet",
        "--grading",
        "2",
        "--roi-size",
        "4",
        "--augment",
        "1",
        "--estimators",
        "10",
        "--iterations",
        "20",
        "--bootstrap",
        "20",
        "--folds",
        "2",
        "--executor",
        "serial",
    ]
    assert main(argv) == 0
    scores = pd.read_csv(out / "subject_scores.csv", dtype={"subject_id": str})
    by_model = {
        m: set(map(tuple, f[["set", "subject_id"]].values)) for m, f in scores.groupby("model")
    }
    assert by_model["gbdt"] == by_model["densenet"]  # one split and one set of folds
    info = json.loads((out / "grading.json").read_text())
    assert not set(info["train"]) & set(info["test"])
    rois = list((out / "work").glob("rois-*/*_rois.json"))
    assert len(rois) == 12  # split A's subjects, placed once for both models
    table = (out / "grading_table.md").read_text()
    assert "| gbdt |" in table and "| densenet |" in table
    metrics = pd.read_csv(out / "grading_metrics.csv")
    assert set(metrics["set"]) == {"train", "train_cv", "test"}
    before = {p: p.stat().st_mtime_ns for p in (out / "work" / "scores").rglob("*.csv")}
    assert main(argv) == 0  # resumes: no score file is written again
    assert before == {p: p.stat().st_mtime_ns for p in (out / "work" / "scores").rglob("*.csv")}


def test_grade_refuses_unknown_models_and_schemes_in_one_line(phantom_dir, tmp_path, capsys):
    from liverfat.cli import main

    base = ["grade", str(phantom_dir / "manifest.yaml"), "--out", str(tmp_path / "g")]
    assert main([*base, "--grading", "severe"]) == 2
    assert "unknown grading scheme 'severe'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--models", "forest"])
    assert "invalid choice: 'forest'" in capsys.readouterr().err


def test_delong_row_says_why_when_a_model_scored_too_few_test_subjects(manifest):
    """A network that failed every test subject leaves a DeLong row with its reason, not a crash."""
    reference = manifest.target("liver_pdff_pct").dropna()
    grades = pd.Series((reference >= 5.5).astype(int), index=reference.index)
    test = grading_split(grades, test_fraction=0.3, folds=2, seed=0).test
    graders = {
        "tree": lambda: KnownGrader("tree", 0.3),
        "net": lambda: KnownGrader("net", 1.0, fail=tuple(test)),
    }
    result = _run(manifest, graders, folds=2, baseline_models=["tree"])
    row = result.delong.iloc[0]
    assert np.isnan(row["p"]) and "two grades" in row["note"]
    assert result.metrics.set_index(["model", "set"]).loc[("net", "test"), "n"] == 0
