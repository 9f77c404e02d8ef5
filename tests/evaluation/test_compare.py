"""Comparison tables computed from predictions tables alone, checked against direct computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score

from liverfat.evaluation.compare import (
    ComparisonSettings,
    comparison_table,
    error_correlation,
    run_comparison,
)
from liverfat.evaluation.layouts import published_layout
from liverfat.evaluation.values import ComparisonError, value_table
from tests.evaluation.conftest import TARGET


def test_comparison_table_matches_direct_computation(synthetic, tables):
    values = value_table(tables, TARGET)
    subsets = {"A": synthetic["ids"][:80], "C": synthetic["ids"][80:]}
    table = comparison_table(
        values, [("reference", "network"), ("atlas", "network")], subsets=subsets, n_boot=100
    )
    assert list(table["subset"]) == ["A", "A", "C", "C"]
    row = table[(table["subset"] == "A") & (table["pair"] == "reference:network")].iloc[0]
    ids = [i for i in synthetic["ids"][:80] if i not in ("sub005", "sub007")]
    a = values.loc[ids, "reference"].to_numpy()
    b = values.loc[ids, "network"].to_numpy()
    assert row["n"] == len(ids) == 78
    assert row["mae"] == pytest.approx(mean_absolute_error(a, b), abs=1e-9)
    assert row["r2"] == pytest.approx(r2_score(a, b), abs=1e-9)
    assert row["r"] == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-9)
    assert row["bias"] == pytest.approx(np.mean(b - a), abs=1e-9)
    sd = np.std(b - a, ddof=1)
    assert row["loa_upper"] == pytest.approx(np.mean(b - a) + 1.96 * sd, abs=1e-9)
    assert row["auc"] == pytest.approx(roc_auc_score(a >= 5.5, b), abs=1e-12)
    sens = np.mean(b[a >= 5.5] >= 5.5)
    assert row["sensitivity"] == pytest.approx(sens, abs=1e-12)


def test_tiny_subset_gives_nan_with_reason(tables):
    values = value_table(tables, TARGET)
    table = comparison_table(
        values, [("reference", "network")], subsets={"tiny": ["sub000", "sub001"]}, n_boot=10
    )
    row = table.iloc[0]
    assert row["n"] == 2 and np.isnan(row["mae"]) and "N = 2 < 3" in row["note"]
    assert published_layout(table).loc[0, "MAE"] == "n/a"


def test_error_correlation_matches_scipy(tables):
    values = value_table(tables, TARGET)
    out = error_correlation(values, "reference", "network", "atlas").iloc[0]
    sub = values[["reference", "network", "atlas"]].dropna()
    e1 = sub["network"] - sub["reference"]
    e2 = sub["atlas"] - sub["reference"]
    pr = stats.pearsonr(e1, e2)
    assert out["n"] == len(sub)
    assert out["r"] == pytest.approx(pr.statistic, abs=1e-9)
    ci = pr.confidence_interval()
    assert (out["r_lower"], out["r_upper"]) == pytest.approx((ci.low, ci.high), abs=1e-6)
    assert out["bias"] == pytest.approx(np.mean(e2 - e1), abs=1e-9)


def test_run_comparison_bundles_everything(synthetic, tables, tmp_path):
    subsets = {"A": synthetic["ids"][:80], "C": synthetic["ids"][80:]}
    result = run_comparison(
        tables, TARGET, subsets=subsets, covariates=synthetic["covariates"], n_boot=50, top_n=3
    )
    assert result.reference == "reference"
    assert result.settings == ComparisonSettings(n_boot=50, top_n=3)
    assert len(result.table) == 6 and len(result.grading) == 6
    assert len(result.error_correlations) == 2  # atlas vs network errors, subsets A and C
    assert set(result.outliers) == {"reference:atlas", "reference:network", "atlas:network"}
    assert len(result.failures) == 2
    written = result.write_tables(tmp_path)
    names = {p.name for p in written}
    assert {"comparison.csv", "comparison.md", "comparison.tex", "covariates.csv"} <= names
    again = pd.read_csv(tmp_path / "comparison.csv")
    assert again["mae"].to_numpy() == pytest.approx(result.table["mae"].to_numpy(), rel=1e-5)


def test_settings_object_and_keywords_are_one_set_of_options(synthetic, tables):
    subsets = {"A": synthetic["ids"][:80]}
    settings = ComparisonSettings(n_boot=30, seed=4, threshold=10.0, grade_thresholds=[5, 15])
    by_object = run_comparison(tables, TARGET, subsets=subsets, settings=settings)
    by_keywords = run_comparison(
        tables, TARGET, subsets=subsets, n_boot=30, seed=4, threshold=10.0, grade_thresholds=[5, 15]
    )
    pd.testing.assert_frame_equal(by_object.table, by_keywords.table)
    pd.testing.assert_frame_equal(by_object.grading, by_keywords.grading)
    assert by_object.settings == by_keywords.settings == settings
    assert settings.grade_thresholds == (5.0, 15.0)
    # A keyword overrides the object's field; the rest of the object stands.
    again = run_comparison(tables, TARGET, subsets=subsets, settings=settings, seed=5)
    assert again.settings.seed == 5 and again.settings.threshold == 10.0
    assert not again.table.equals(by_object.table)  # other bootstrap draws


def test_settings_are_validated_early():
    for bad, message in (
        ({"icc_form": "ICC(4,1)"}, "unknown ICC form"),
        ({"grade_thresholds": [17.4, 6.4]}, "increase strictly"),
        ({"n_boot": -1}, "counts"),
        ({"confidence": 1.5}, "confidence"),
    ):
        with pytest.raises(ComparisonError, match=message):
            ComparisonSettings(**bad)
    assert ComparisonSettings(icc_form="ICC(A,1)").icc_form == "ICC(A,1)"
    with pytest.raises(TypeError, match="no comparison setting"):
        ComparisonSettings.of(None, bootstrap=10)
