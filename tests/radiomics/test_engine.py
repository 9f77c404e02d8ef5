"""The engine: conformance, no leakage, grading schemes, protocol metrics, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from liverfat.cli import main as cli_main
from liverfat.errors import LiverfatError
from liverfat.evaluation import grader
from liverfat.evaluation.agreement import agreement
from liverfat.grading import covariate_spearman
from liverfat.radiomics import models
from liverfat.radiomics.engine import RadiomicsEngine
from liverfat.testing import check_engine

#: Fast settings for the quarter-scale phantom (8.9 mm pixels: 4-pixel ROIs fit its livers).
FAST = dict(roi_size=4, n_estimators=15, augment_copies=1, executor="serial", max_depth=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One feature cache for the module: each phantom subject's ROIs are extracted once."""
    return str(tmp_path_factory.mktemp("radiomics_cache"))


def test_conformance(phantom_manifest, tmp_path, cache):
    check_engine(
        lambda: RadiomicsEngine(**FAST, work_dir=cache),
        phantom_manifest,
        tmp_path,
        targets=["liver_pdff_pct"],
    )


def test_constructor_validates_early():
    with pytest.raises(LiverfatError, match="model"):
        RadiomicsEngine(model="forest")
    with pytest.raises(LiverfatError, match="grading"):
        RadiomicsEngine(grading="severe")
    with pytest.raises(LiverfatError, match="channels"):
        RadiomicsEngine(channels=("water",))


def test_no_leakage_in_cross_validation(phantom_manifest, cache):
    """Augmentation, feature filter, scaler and model of each fold see only its training
    subjects: the fold's out-of-fold predictions equal those of an engine fitted from scratch on
    the training subjects alone, and the recorded subjects never include a test subject."""
    settings = dict(FAST, task="classification", grading="binary", model="gbdt", work_dir=cache)
    train = phantom_manifest.select(split="A")
    oof = RadiomicsEngine(**settings).cross_validate(train, folds=3, seed=1)
    for fold in oof.run["fold_log"]:
        test = set(fold["test"])
        for seen in ("augmented_subjects", "filter_fitted_on", "model_trained_on"):
            assert not test & set(fold[seen]), seen
            assert set(fold[seen]) == set(fold["train"]), seen
    fold = oof.run["fold_log"][0]
    alone = RadiomicsEngine(**settings).fit(train.select(subject_ids=fold["train"]))
    scores, _ = alone.predict_scores(train.select(subject_ids=fold["test"]))
    rows = oof.frame.set_index("subject_id").loc[fold["test"]]
    assert rows["value"].tolist() == scores.loc[fold["test"], "grade"].tolist()
    probabilities = [dict(kv.split("=") for kv in m.split(";")) for m in rows["message"]]
    expected = scores.loc[fold["test"], "p_grade1"].to_numpy()
    assert [float(p["p_grade1"]) for p in probabilities] == pytest.approx(expected, abs=1e-4)


def test_regression_learns_fat_fraction(phantom_manifest, cache):
    """Fat-fraction ROIs carry the answer: out-of-fold MAE well below the spread of the target."""
    engine = RadiomicsEngine(**dict(FAST, n_estimators=60, model="xgboost"), work_dir=cache)
    train = phantom_manifest.select(split="A")
    oof = engine.cross_validate(train, folds=3, seed=0)
    predicted = oof.values("radiomics", "liver_pdff_pct")
    reference = train.target("liver_pdff_pct")
    mae = agreement(reference, predicted)["mae"]
    spread = (reference - reference.median()).abs().mean()
    assert mae < 0.6 * spread, (mae, spread)


def test_grading_schemes_are_the_evaluations():
    """One definition of the schemes (tested in tests/evaluation/test_grader.py)."""
    assert models.grading_scheme is grader.grading_scheme
    assert models.GRADING_SCHEMES is grader.GRADING_SCHEMES
    engine = RadiomicsEngine(grading="mri_pdff", task="classification")
    assert engine.scheme.cuts_pct == (6.4, 17.4, 22.1)
    assert RadiomicsEngine(grading=[10, 20]).scheme.grade([5, 15, 25]).tolist() == [0, 1, 2]


def test_covariate_spearman_overall_and_by_sex():
    rng = np.random.default_rng(1)
    n = 120
    covariates = pd.DataFrame(
        {"age": rng.uniform(30, 80, n), "sex": rng.integers(0, 2, n), "bmi": rng.normal(27, 4, n)},
        index=[f"S{i}" for i in range(n)],
    )
    grades = pd.Series(
        np.digitize(covariates["bmi"] + rng.normal(0, 2, n), [25, 28, 31]), index=covariates.index
    )
    table = covariate_spearman(grades, covariates).set_index(["group", "covariate"])
    rho, p = stats.spearmanr(grades, covariates["bmi"])
    assert table.loc[("all", "bmi"), "rho"] == pytest.approx(rho)
    male = covariates["sex"] == 1
    rho_m, _ = stats.spearmanr(grades[male], covariates.loc[male, "age"])
    assert table.loc[("male", "age"), "rho"] == pytest.approx(rho_m)
    assert ("male", "sex") not in table.index
    assert table.loc[("all", "bmi"), "rho"] > 0.5
    assert table.loc[("all", "bmi"), "p"] == pytest.approx(p)
    female = covariates["sex"] == 0
    rho_f, p_f = stats.spearmanr(grades[female], covariates.loc[female, "bmi"])
    assert table.loc[("female", "bmi"), ["rho", "p"]].tolist() == pytest.approx([rho_f, p_f])
    assert table.loc[("female", "bmi"), "n"] == female.sum()
    assert list(table.index) == [
        ("all", "age"), ("all", "sex"), ("all", "bmi"),
        ("female", "age"), ("female", "bmi"), ("male", "age"), ("male", "bmi"),
    ]  # fmt: skip


def test_covariate_spearman_missing_values_and_empty_groups():
    """A subject without sex counts in "all" only; a group without subjects is n = 0, NaN."""
    rng = np.random.default_rng(2)
    n = 40
    covariates = pd.DataFrame(
        {"age": rng.uniform(30, 80, n), "sex": np.ones(n), "bmi": rng.normal(27, 4, n)},
        index=[f"S{i}" for i in range(n)],
    )
    covariates.loc["S0", "sex"] = np.nan
    covariates.loc["S1", "bmi"] = np.nan
    grades = pd.Series(np.digitize(covariates["age"], [45, 60]), index=covariates.index)
    table = covariate_spearman(grades, covariates).set_index(["group", "covariate"])
    assert table.loc[("all", "age"), "n"] == n
    assert table.loc[("all", "bmi"), "n"] == n - 1
    assert table.loc[("male", "age"), "n"] == n - 1
    rho, _ = stats.spearmanr(grades.drop("S0"), covariates["age"].drop("S0"))
    assert table.loc[("male", "age"), "rho"] == pytest.approx(rho)
    assert table.loc[("female", "age"), "n"] == 0
    assert np.isnan(table.loc[("female", "age"), "rho"])
    assert np.isnan(table.loc[("all", "sex"), "rho"])  # sex is constant among the known


def test_cli_fit_predict_rois_features(phantom_dir, tmp_path, cache):
    common = [
        "--roi-size",
        "4",
        "--estimators",
        "10",
        "--augment",
        "1",
        "--executor",
        "serial",
        "--cache",
        cache,
    ]
    assert (
        cli_main(
            [
                "radiomics",
                "fit",
                str(phantom_dir),
                "--split",
                "A",
                "--out",
                str(tmp_path / "model"),
                *common,
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "radiomics",
                "predict",
                str(phantom_dir),
                "--model",
                str(tmp_path / "model"),
                "--out",
                str(tmp_path / "pred.csv"),
                "--executor",
                "serial",
                "--cache",
                cache,
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "pred.csv")
    assert len(table) == 20 and (table["status"] == "ok").all()
    assert (
        cli_main(
            [
                "radiomics",
                "features",
                str(phantom_dir),
                "--out",
                str(tmp_path / "features.csv"),
                *common,
            ]
        )
        == 0
    )
    assert len(pd.read_csv(tmp_path / "features.csv")) == 20 * 6
    assert (
        cli_main(
            [
                "radiomics",
                "rois",
                str(phantom_dir),
                "--out",
                str(tmp_path / "rois"),
                "--roi-size",
                "4",
                "--executor",
                "serial",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "rois" / "P0001_rois.json").read_text(encoding="utf-8"))
    assert len(saved["rois"]) == 6
    # bad input: one clear line, exit 2
    assert cli_main(["radiomics", "fit", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2


def test_cli_cv_protocol_table(phantom_dir, tmp_path, cache):
    out = tmp_path / "cv"
    assert (
        cli_main(
            [
                "radiomics",
                "cv",
                str(phantom_dir),
                "--out",
                str(out),
                "--roi-size",
                "4",
                "--cache",
                cache,
                "--estimators",
                "10",
                "--augment",
                "1",
                "--executor",
                "serial",
                "--grading",
                "binary",
                "--folds",
                "3",
                "--test-fraction",
                "0.34",
                "--bootstrap",
                "100",
                "--truth",
                str(phantom_dir / "truth" / "truth_predictions.csv"),
            ]
        )
        == 0
    )
    classification = pd.read_csv(out / "classification.csv")
    assert set(classification["model"]) == {"adaboost", "gbdt", "xgboost"}
    assert set(classification["set"]) == {"train", "test"}
    assert {"auc", "auc_lower", "auc_upper", "accuracy_lower"} <= set(classification.columns)
    regression = pd.read_csv(out / "regression.csv")
    assert {"mae_vs_reference", "r2_vs_truth"} <= set(regression.columns)
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert not set(split["train"]) & set(split["test"])
    assert (out / "cv_predictions.csv").is_file()
    # the numbers, recomputed independently
    from statsmodels.stats.proportion import proportion_confint

    from liverfat.data.manifest import Manifest

    manifest = Manifest.load(phantom_dir / "manifest.yaml")
    reference = manifest.target("liver_pdff_pct").dropna()
    assert sorted(split["train"] + split["test"]) == sorted(reference.index)
    sizes = {"train": len(split["train"]), "test": len(split["test"])}
    assert (classification["n"] == classification["set"].map(sizes)).all()
    assert (regression["n_reference"] == regression["set"].map(sizes)).all()
    for row in classification.itertuples():
        correct = round(row.accuracy * row.n)
        low, high = proportion_confint(correct, row.n, method="wilson")
        assert (row.accuracy_lower, row.accuracy_upper) == pytest.approx((low, high), abs=1e-4)
    spearman = pd.read_csv(out / "spearman.csv").set_index(["grade_from", "group", "covariate"])
    assert set(spearman.index.get_level_values("grade_from")) == {"reference"}  # a regression
    grades = (reference >= 5.5).astype(int)  # the binary scheme
    bmi = manifest.subjects.set_index("subject_id").loc[grades.index, "bmi"]
    rho = stats.spearmanr(grades, bmi).statistic
    assert spearman.loc[("reference", "all", "bmi"), "rho"] == pytest.approx(rho, rel=1e-3)


def test_chaos_manifest_rois_cli(shared_data, tmp_path):
    """`liverfat radiomics rois` on the CHAOS T2-SPIR manifest (image intensity, liver label 1)."""
    from pathlib import Path

    card = (
        Path(__file__).resolve().parents[2] / "data_manifests" / "chaos_mr_t2spir" / "manifest.yaml"
    )
    if not card.is_file():
        pytest.skip("the CHAOS manifest card is not in data_manifests/")
    out = tmp_path / "rois"
    assert (
        cli_main(
            [
                "radiomics",
                "rois",
                str(card),
                "--data-root",
                str(shared_data / "chaos_mr_t2spir"),
                "--out",
                str(out),
                "--executor",
                "serial",
            ]
        )
        == 0
    )
    assert len(list(out.glob("*_rois.png"))) == 10
