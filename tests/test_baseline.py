"""The linear baseline (covariates only): against statsmodels, the contract, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
