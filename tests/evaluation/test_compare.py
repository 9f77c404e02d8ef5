"""Comparison tables computed from predictions tables alone, checked against direct computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score

from liverfat.evaluation.compare import (
    PUBLISHED_COLUMNS,
    ComparisonError,
    comparison_table,
    covariate_correlations,
    coverage,
    default_pairs,
    error_correlation,
    parse_pair,
    published_layout,
    run_comparison,
    to_latex,
    to_markdown,
    top_outliers,
    value_table,
)
from tests.evaluation.conftest import TARGET


def test_value_table_drops_failed_and_flagged(tables):
    values = value_table(tables, TARGET)
    assert list(values.columns) == ["atlas", "network", "reference"]
    assert np.isnan(values.loc["sub005", "network"]) and np.isnan(values.loc["sub007", "network"])
    assert np.isnan(values.loc["sub119", "atlas"])
    with_flagged = value_table(tables, TARGET, include_flagged=True)
    assert np.isfinite(with_flagged.loc["sub007", "network"])
    with pytest.raises(ComparisonError, match="no predictions for target"):
        value_table(tables, "spleen_volume_ml")


def test_coverage_counts_every_status(tables):
    cov = coverage(tables, TARGET)
    assert cov.loc["network"].to_dict() == {
        "n_subjects": 120,
        "n_ok": 118,
        "n_flagged": 1,
        "n_failed": 1,
        "n_missing": 0,
    }
    assert cov.loc["atlas", "n_missing"] == 3


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


def test_published_layout_and_text_outputs(tables):
    values = value_table(tables, TARGET)
    table = comparison_table(values, default_pairs(list(values.columns), "reference"), n_boot=0)
    layout = published_layout(table)
    assert tuple(layout.columns) == PUBLISHED_COLUMNS
    assert list(layout["Pair"]) == [
        "reference vs atlas",
        "reference vs network",
        "atlas vs network",
    ]
    assert "±" in layout.loc[0, "LoA"]
    md = to_markdown(layout)
    assert md.splitlines()[0].startswith("| Subset | Pair | N | MAE | R² | LoA |")
    assert len(md.splitlines()) == 2 + 3
    tex = to_latex(layout, caption="PDFF (%)")
    assert r"$\pm$" in tex and r"R$^2$" in tex and r"PDFF (\%)" in tex
    assert tex.count(r"\\") == 4


def test_pairs_are_checked():
    assert parse_pair(" reference : atlas ") == ("reference", "atlas")
    for bad in ("reference", "a:a", "a:b:c", ":b"):
        with pytest.raises(ComparisonError):
            parse_pair(bad)
    values = pd.DataFrame({"reference": [1.0], "network": [1.0]})
    with pytest.raises(ComparisonError, match="unknown method"):
        comparison_table(values, [("reference", "cnn")])


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


def test_top_outliers_show_every_method(tables):
    values = value_table(tables, TARGET)
    top = top_outliers(values, ("reference", "atlas"), n=5)
    assert list(top.columns) == [
        "rank",
        "subject_id",
        "difference",
        "atlas",
        "network",
        "reference",
    ]
    diff = (values["atlas"] - values["reference"]).dropna()
    assert top["difference"].abs().tolist() == pytest.approx(sorted(diff.abs(), reverse=True)[:5])


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


def test_run_comparison_bundles_everything(synthetic, tables, tmp_path):
    subsets = {"A": synthetic["ids"][:80], "C": synthetic["ids"][80:]}
    result = run_comparison(
        tables, TARGET, subsets=subsets, covariates=synthetic["covariates"], n_boot=50, top_n=3
    )
    assert result.settings["reference"] == "reference"
    assert len(result.table) == 6 and len(result.grading) == 6
    assert len(result.error_correlations) == 2  # atlas vs network errors, subsets A and C
    assert set(result.outliers) == {"reference:atlas", "reference:network", "atlas:network"}
    assert len(result.failures) == 2
    written = result.write_tables(tmp_path)
    names = {p.name for p in written}
    assert {"comparison.csv", "comparison.md", "comparison.tex", "covariates.csv"} <= names
    again = pd.read_csv(tmp_path / "comparison.csv")
    assert again["mae"].to_numpy() == pytest.approx(result.table["mae"].to_numpy(), rel=1e-5)


def test_probable_reference_errors_are_agreeing_methods_against_reference() -> None:
    from liverfat.evaluation.compare import probable_reference_errors

    values = pd.DataFrame(
        {
            "reference": [2.0, 10.0, 3.0, 20.0, 5.0, 1.0],
            "network": [2.5, 3.0, 3.2, 12.0, 12.0, 9.0],
            "atlas": [2.2, 3.5, 2.9, 11.0, 6.0, 6.5],
        },
        index=pd.Index(["s1", "s2", "s3", "s4", "s5", "s6"], name="subject_id"),
    )
    found = probable_reference_errors(values, "network", "atlas", "reference")
    # s2 and s4: both methods agree and both miss the reference low by >= 4 %;
    # s5: methods disagree (12 vs 6); s6: agree within 2.5 %, not 2 %.
    assert found.index.tolist() == ["s4", "s2"]
    assert found.loc["s2", "error_a"] == pytest.approx(-7.0)
    assert found.loc["s4", "a_minus_b"] == pytest.approx(1.0)
    assert probable_reference_errors(
        values, "network", "atlas", "reference", agree_pct=3
    ).index.tolist() == ["s4", "s2", "s6"]
