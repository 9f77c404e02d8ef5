"""Correlations of methods' values and grades with covariates, checked against scipy."""

from __future__ import annotations

import pytest
from scipy import stats

from liverfat.evaluation.covariates import covariate_correlations
from liverfat.evaluation.values import ComparisonError, value_table
from tests.evaluation.conftest import TARGET


def test_covariate_correlations_match_scipy(synthetic, tables):
    values = value_table(tables, TARGET)
    cov = synthetic["covariates"]
    out = covariate_correlations(values, cov, methods=["reference"], by="sex")
    assert set(out["stratum"]) == {"all", "sex=F", "sex=M"}
    assert set(out["covariate"]) == {"age", "bmi"}
    row = out[(out["covariate"] == "bmi") & (out["stratum"] == "sex=F")].iloc[0]
    female = cov.index[cov["sex"] == "F"]
    sr = stats.spearmanr(values.loc[female, "reference"], cov.loc[female, "bmi"])
    assert row["rho"] == pytest.approx(sr.statistic, abs=1e-9)
    assert row["p"] == pytest.approx(sr.pvalue, abs=1e-9)
    graded = covariate_correlations(values, cov, quantity="grade")
    sex = graded[(graded["covariate"] == "sex") & (graded["method"] == "network")].iloc[0]
    assert sex["note"] == "F=0, M=1"
    with pytest.raises(ComparisonError, match="stratify"):
        covariate_correlations(values, cov, by="smoker")


def test_stratum_leaves_out_subjects_without_the_level(synthetic, tables):
    values = value_table(tables, TARGET)
    cov = synthetic["covariates"].copy()
    cov.iloc[:3, cov.columns.get_loc("sex")] = None  # sex not recorded for three subjects
    out = covariate_correlations(values, cov, methods=["reference"], by="sex")
    row = out[(out["covariate"] == "bmi") & (out["stratum"] == "sex=F")].iloc[0]
    female = cov.index[cov["sex"] == "F"]
    sr = stats.spearmanr(values.loc[female, "reference"], cov.loc[female, "bmi"])
    assert row["n"] == len(female) and row["rho"] == pytest.approx(sr.statistic, abs=1e-9)
