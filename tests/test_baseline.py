"""The linear baseline (covariates only): against statsmodels, the contract, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from liverfat.baseline import LinearBaseline
from liverfat.testing import check_engine


def _without_age(manifest, folder):
    broken = manifest.select()
    broken.subjects.loc[0, "age"] = np.nan
    return broken


def test_conformance(phantom_manifest, tmp_path):
    check_engine(
        LinearBaseline,
        phantom_manifest,
        tmp_path,
        targets=["liver_pdff_pct"],
        break_subject=_without_age,
    )


def test_baseline_matches_statsmodels(phantom_manifest):
    train = phantom_manifest.select(split="A")
    model = LinearBaseline(targets=["liver_pdff_pct", "vat_volume_ml"]).fit(train)
    table = model.predict(phantom_manifest)
    for target in ("liver_pdff_pct", "vat_volume_ml"):
        x = sm.add_constant(train.subjects[["age", "sex", "height", "weight"]].astype(float))
        ols = sm.OLS(train.subjects[target].astype(float).to_numpy(), x).fit()
        x_all = sm.add_constant(
            phantom_manifest.subjects[["age", "sex", "height", "weight"]].astype(float)
        )
        expected = ols.get_prediction(x_all).summary_frame(alpha=0.05)
        rows = table.frame[table.frame["target"] == target]
        assert np.allclose(rows["value"], expected["mean"])
        assert np.allclose(rows["lower"], expected["obs_ci_lower"])
        assert np.allclose(rows["upper"], expected["obs_ci_upper"])


def test_baseline_cv_save_load_and_missing_covariate(phantom_manifest, tmp_path):
    train = phantom_manifest.select(split="A")
    oof = LinearBaseline().cross_validate(train, folds=3)
    assert set(oof.frame["subject_id"]) == set(train.subject_ids)
    model = LinearBaseline().fit(train)
    model.save(tmp_path)
    again = LinearBaseline.load(tmp_path).predict(phantom_manifest)
    pd.testing.assert_frame_equal(model.predict(phantom_manifest).frame, again.frame)
    broken = phantom_manifest.select()
    broken.subjects.loc[0, "age"] = np.nan
    rows = model.predict(broken).frame
    assert rows.loc[0, "status"] == "failed" and "age" in rows.loc[0, "message"]


def test_cli_cv_scores_deep_cv_folds_and_fit_predict(phantom_dir, tmp_path):
    from liverfat.cli import main
    from liverfat.data.folds import subject_folds
    from liverfat.data.manifest import Manifest
    from liverfat.data.predictions import PredictionsTable

    out = tmp_path / "cv"
    args = ["baseline", "cv", str(phantom_dir), "--split", "A", "--folds", "3"]
    assert main([*args, "--fold-seed", "4", "--out", str(out)]) == 0
    oof = PredictionsTable.read(out / "oof.csv")
    reference = Manifest.load(phantom_dir).select(split="A").target("liver_pdff_pct").dropna()
    assert oof.run["folds"] == subject_folds(list(reference.index), 3, 4)  # as `deep cv` draws
    metrics = pd.read_csv(out / "metrics.csv")
    errors = oof.values("linear_baseline", "liver_pdff_pct") - reference
    assert metrics.loc[0, "mae"] == pytest.approx(errors.abs().mean(), rel=1e-3)
    model = tmp_path / "model"
    assert main(["baseline", "fit", str(phantom_dir), "--split", "A", "--out", str(model)]) == 0
    assert main(["baseline", "predict", str(phantom_dir), "--model", str(model), "--out",
                 str(tmp_path / "p.csv")]) == 0  # fmt: skip
    predicted = PredictionsTable.read(tmp_path / "p.csv")
    expected = LinearBaseline().fit(Manifest.load(phantom_dir).select(split="A"))
    pd.testing.assert_frame_equal(
        predicted.frame, expected.predict(Manifest.load(phantom_dir)).frame
    )
