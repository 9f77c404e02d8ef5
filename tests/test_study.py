"""Study files and the study runner (with the fast linear baseline as engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from liverfat.cli import main
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.outliers import probable_reference_errors
from liverfat.study import Study, StudyError, run_study

PAIRS = [
    "reference:baseline@A",
    "reference:bmi_only@A",
    "bmi_only:baseline@A",
    "bmi_only:baseline@C",
]


def _write_study(tmp_path: Path, phantom_dir: Path, **changes) -> Path:
    study = {
        "name": "plumbing",
        "manifest": str(phantom_dir / "manifest.yaml"),
        "truth": str(phantom_dir / "truth" / "truth_predictions.csv"),
        "target": "liver_pdff_pct",
        "out": str(tmp_path / "out"),
        "engines": {
            "baseline": {
                "engine": "linear_baseline",
                "cross_validate": True,
                "folds": 3,
                "predict_on": ["B"],
            },
            "bmi_only": {
                "engine": "linear_baseline",
                "settings": {"covariates": ["bmi"]},
                "predict_on": ["A", "C"],
            },
        },
        "comparison": {"pairs": PAIRS, "review": ["baseline", "bmi_only"]},
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    return path


def test_study_runs_resumes_and_orders_rows(
    tmp_path: Path, phantom_dir: Path, phantom_manifest, monkeypatch
) -> None:
    # A spurious reference reading gives the outlier review something to find.
    cohort = tmp_path / "cohort"
    shutil.copytree(phantom_dir, cohort)
    table = pd.read_csv(cohort / "subjects.csv", dtype={"subject_id": str})
    table.loc[table["split"].eq("A").idxmax(), "liver_pdff_pct"] = 60.0
    table.to_csv(cohort / "subjects.csv", index=False)
    phantom_dir = cohort
    phantom_manifest = Manifest.load(cohort)
    study = Study.load(_write_study(tmp_path, phantom_dir))
    report = run_study(study, log=lambda m: None)
    assert report.is_file() and report.stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "out" / "tables" / "comparison.csv")
    planned = [(p.split("@")[0], p.split("@")[1]) for p in PAIRS]
    assert list(zip(table["pair"], table["subset"], strict=True))[:4] == planned
    truth_rows = table[table["pair"].str.startswith("truth:")]
    assert set(truth_rows["pair"]) == {"truth:reference", "truth:baseline", "truth:bmi_only"}
    n_a = len(phantom_manifest.select(split="A"))
    assert (table.loc[table["subset"] == "A", "n"] == n_a).all()
    # Outlier review: the section, and exactly the subjects the rule picks from the tables.
    suspects = pd.read_csv(
        tmp_path / "out" / "tables" / "probable_reference_errors.csv", dtype={"subject_id": str}
    ).set_index("subject_id")
    assert len(suspects) >= 1 and "Outlier review" in report.read_text(encoding="utf-8")
    values = pd.DataFrame(
        {
            name: PredictionsTable.read(tmp_path / "out" / "predictions" / f"{name}.csv").values(
                name, "liver_pdff_pct"
            )
            for name in ("baseline", "bmi_only")
        }
    ).assign(reference=phantom_manifest.target("liver_pdff_pct"))
    expected = probable_reference_errors(
        values.loc[phantom_manifest.select(split="A").subject_ids],
        "baseline",
        "bmi_only",
        "reference",
    )
    assert suspects.index.tolist() == expected.index.tolist()
    for _, row in suspects.iterrows():
        assert abs(row["baseline"] - row["bmi_only"]) <= 2
        assert min(abs(row["error_a"]), abs(row["error_b"])) >= 4
    # The baseline's table: out-of-fold on A, fitted predictions on B (and so C).
    preds = pd.read_csv(
        tmp_path / "out" / "predictions" / "baseline.csv", dtype={"subject_id": str}
    )
    assert set(preds["subject_id"]) == set(phantom_manifest.subject_ids)
    # A rerun reuses every stage and gives identical tables.
    stage = tmp_path / "out" / "predictions" / "baseline.cv.csv"
    before = stage.stat().st_mtime_ns
    messages: list[str] = []
    run_study(Study.load(_write_study(tmp_path, phantom_dir)), log=messages.append)
    assert stage.stat().st_mtime_ns == before
    assert sum("finished earlier" in m for m in messages) == 3
    pd.testing.assert_frame_equal(
        table, pd.read_csv(tmp_path / "out" / "tables" / "comparison.csv")
    )
    # Changed liverfat code (within one release) reruns the stages.
    monkeypatch.setattr("liverfat.study.code_digest", lambda: "changed-code")
    messages.clear()
    run_study(Study.load(_write_study(tmp_path, phantom_dir)), log=messages.append)
    assert stage.stat().st_mtime_ns != before
    assert sum("finished earlier" in m for m in messages) == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"engines": {"x": {"engine": "nope", "cross_validate": True}}, "comparison": {}},
            "unknown engine 'nope'",
        ),
        (
            {
                "engines": {
                    "x": {
                        "engine": "linear_baseline",
                        "settings": {"depth": 3},
                        "cross_validate": True,
                    }
                },
                "comparison": {},
            },
            "no setting",
        ),
        ({"comparison": {"pairs": ["reference:ghost@A"]}}, "unknown method ghost"),
        ({"comparison": {"pairs": ["reference-baseline"]}}, "A:B@SUBSET"),
        ({"target": "nope"}, "target nope is not in the manifest"),
        ({"colour": "red"}, "unknown key"),
        ({"grading": {"models": ["forest"]}}, "unknown grading model(s) forest"),
        ({"grading": {"scheme": "severe"}}, "unknown grading scheme 'severe'"),
        ({"grading": {"folds": -1}}, "study key grading.folds"),
        ({"grading": {"colour": "red"}}, "study key grading.colour"),
        ({"qc": {"policy": {"blur": "mark"}}}, "study key qc.policy.blur: unknown check"),
        ({"qc": {"policy": {"swap": "drop"}}}, "study key qc.policy.swap: must be exclude or mark"),
        ({"qc": {"slab_mm": 0}}, "study key qc.slab_mm"),
        ({"qc": {"colour": "red"}}, "study key qc.colour"),
        (
            {"engines": {"x": {"engine": "linear_baseline"}}, "comparison": {}},
            "engine 'x' has nothing to do",
        ),
    ],
)
def test_bad_study_files_one_line(
    tmp_path: Path, phantom_dir: Path, changes: dict, message: str, capsys
) -> None:
    path = _write_study(tmp_path, phantom_dir, **changes)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_study_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="study file not found"):
        Study.load(tmp_path / "nope.yaml")


def test_engines_of_a_study_see_one_partition(tmp_path: Path, phantom_dir: Path) -> None:
    engines = {
        "baseline": {"engine": "linear_baseline", "cross_validate": True, "folds": 3},
        "bmi_only": {
            "engine": "linear_baseline",
            "settings": {"covariates": ["bmi"]},
            "cross_validate": True,
            "folds": 3,
        },
    }
    path = _write_study(tmp_path, phantom_dir, engines=engines, comparison={})
    run_study(Study.load(path), log=lambda m: None)
    out = tmp_path / "out"
    partition = json.loads((out / "folds.json").read_text(encoding="utf-8"))["3"]
    used = [
        PredictionsTable.read(out / "predictions" / f"{name}.cv.csv").run["folds"]
        for name in engines
    ]
    assert used[0] == used[1] == partition
    referenced = Manifest.load(phantom_dir).select(split="A").target("liver_pdff_pct").dropna()
    assert sorted(sum(partition, [])) == sorted(referenced.index)
    # The other engine's fit differs, but each subject is predicted by the fold that tests it.
    values = {n: PredictionsTable.read(out / "predictions" / f"{n}.cv.csv") for n in engines}
    assert set(values["baseline"].frame["subject_id"]) == set(referenced.index)


def test_study_refuses_a_callable_that_is_not_an_engine(tmp_path: Path, phantom_dir: Path) -> None:
    engines = {
        "x": {
            "engine": "os:system",
            "settings": {"command": "touch hacked"},
            "cross_validate": True,
        }
    }
    path = _write_study(tmp_path, phantom_dir, engines=engines, comparison={})
    with pytest.raises(StudyError, match="not an engine class"):
        run_study(Study.load(path), log=lambda m: None)
    assert not (Path.cwd() / "hacked").exists() and not (tmp_path / "hacked").exists()


@pytest.mark.parametrize(
    "body, key",
    [
        ({"engines": ["a", "b"]}, "engines"),
        ({"engines": {"n": {"engine": "deep", "folds": "abc", "cross_validate": True}}}, "folds"),
        ({"seed": "abc"}, "seed"),
        ({"engines": {"n": {"engine": "deep", "settings": [1], "predict_on": "B"}}}, "settings"),
        ({"splits": "A"}, "splits"),
        ({"executor": "processes"}, "executor"),
        ({"comparison": {"pairs": 3}}, "comparison.pairs"),
        ({"engines": {"n": {"engine": "deep", "cross_validate": "yes please"}}}, "cross_validate"),
    ],
)
def test_a_study_key_of_the_wrong_type_is_one_line(tmp_path, body, key):
    study = {
        "manifest": "m.yaml",
        "engines": {"n": {"engine": "deep", "cross_validate": True}},
        **body,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    with pytest.raises(StudyError, match=f"study key [a-z.]*{key}") as caught:
        Study.load(path)
    assert "\n" not in str(caught.value)


def test_a_study_with_grading_gets_its_section(tmp_path: Path, phantom_dir: Path) -> None:
    """``grading:`` runs the grading protocol on the training split and reports its table."""
    grading = {
        "models": ["gbdt", "densenet"],
        "scheme": [2.0],
        "folds": 2,
        "bootstrap": 20,
        "rois": {"size": 4},
        "trees": {"augment_copies": 1, "n_estimators": 10},
        "networks": {"iterations": 20},
    }
    path = _write_study(tmp_path, phantom_dir, grading=grading)
    report = run_study(Study.load(path), log=lambda line: None)
    html = report.read_text(encoding="utf-8")
    assert "Steatosis grading" in html and "DeLong" in html
    metrics = pd.read_csv(tmp_path / "out" / "grading" / "grading_metrics.csv")
    assert set(metrics["model"]) == {"gbdt", "densenet"}
    info = json.loads((tmp_path / "out" / "grading" / "grading.json").read_text())
    split_a = Manifest.load(phantom_dir / "manifest.yaml").select(split="A").subject_ids
    assert sorted(info["train"] + info["test"]) == sorted(split_a)
