"""Agreement statistics against published worked examples and independent implementations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import statsmodels.api as sm
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from liverfat.evaluation.agreement import (
    AgreementError,
    agreement,
    bland_altman,
    concordance_correlation,
    icc,
    intraclass_correlations,
    paired,
    pearson_interval,
)

# Bland & Altman (1986), Lancet 1:307-310, Table 1: first PEFR reading (l/min), 17 subjects.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI_WRIGHT = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]

# Shrout & Fleiss (1979), Psychol Bull 86:420-428, Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float
)


def test_bland_altman_1986_pefr_example():
    ba = bland_altman(WRIGHT, MINI_WRIGHT, multiplier=2.0)  # the paper used mean +/- 2 SD
    assert ba.n == 17
    assert round(ba.bias, 1) == -2.1
    assert round(ba.sd, 1) == 38.8
    # The paper computes the limits from the rounded mean and SD: -2.1 -/+ 2 x 38.8.
    assert round(round(ba.bias, 1) - 2 * round(ba.sd, 1), 1) == -79.7
    assert round(round(ba.bias, 1) + 2 * round(ba.sd, 1), 1) == 75.5
    assert ba.loa_lower == pytest.approx(-79.7, abs=0.1)
    assert ba.loa_upper == pytest.approx(75.5, abs=0.1)
    # Confidence intervals printed in the paper (t = 2.12, SE of a limit sqrt(3 s^2 / n) = 16.3);
    # the paper rounds s and the SE before multiplying, hence 0.25 tolerance on the limits.
    assert (round(ba.bias_lower, 1), round(ba.bias_upper, 1)) == (-22.0, 17.8)
    assert ba.loa_lower_ci == pytest.approx((-114.3, -45.1), abs=0.25)
    assert ba.loa_upper_ci == pytest.approx((40.9, 110.1), abs=0.25)


def test_bland_altman_matches_pingouin_and_statsmodels():
    rng = np.random.default_rng(3)
    x = rng.normal(10, 4, 80)
    y = x + rng.normal(0.5, 1.2, 80) + 0.05 * x
    ba = bland_altman(x, y)
    diff, mean = x - y, (x + y) / 2
    assert ba.bias == pytest.approx(diff.mean(), abs=1e-9)
    assert ba.sd == pytest.approx(np.std(diff, ddof=1), abs=1e-9)
    ci = stats.t.interval(0.95, 79, loc=diff.mean(), scale=stats.sem(diff))
    assert (ba.bias_lower, ba.bias_upper) == pytest.approx(ci, abs=1e-9)
    # pingouin's Bland-Altman plot draws the same limits (1.96 SD by default).
    import matplotlib.pyplot as plt

    ax = pg.plot_blandaltman(x, y)
    drawn = [float(line.get_ydata()[0]) for line in ax.get_lines()]
    plt.close(ax.figure)
    for ours in (ba.loa_lower, ba.bias, ba.loa_upper):
        assert min(abs(ours - d) for d in drawn) < 1e-6
    fit = sm.OLS(diff, sm.add_constant(mean)).fit()
    assert ba.proportional_slope == pytest.approx(fit.params[1], abs=1e-9)
    assert ba.proportional_intercept == pytest.approx(fit.params[0], abs=1e-9)
    assert ba.proportional_p == pytest.approx(fit.pvalues[1], abs=1e-9)


def test_bland_altman_needs_three_pairs():
    with pytest.raises(AgreementError, match="at least 3"):
        bland_altman([1.0, 2.0], [1.0, np.nan])


def test_shrout_fleiss_1979_table_2():
    table = intraclass_correlations(SHROUT_FLEISS)
    published = {
        "ICC(1,1)": 0.17,
        "ICC(2,1)": 0.29,
        "ICC(3,1)": 0.71,
        "ICC(1,k)": 0.44,
        "ICC(2,k)": 0.62,
        "ICC(3,k)": 0.91,
    }
    for form, value in published.items():
        assert round(table.loc[form, "icc"], 2) == value, form


def _long(matrix: np.ndarray) -> pd.DataFrame:
    n, k = matrix.shape
    return pd.DataFrame(
        {
            "target": np.repeat(np.arange(n), k),
            "rater": np.tile(np.arange(k), n),
            "rating": matrix.ravel(),
        }
    )


@pytest.mark.parametrize("seed,n,k", [(0, 30, 2), (1, 12, 4), (2, 50, 3)])
def test_icc_matches_pingouin(seed, n, k):
    rng = np.random.default_rng(seed)
    truth = rng.normal(8, 5, n)
    matrix = truth[:, None] + rng.normal(0, 2, (n, k)) + rng.normal(0, 1, k)
    ours = intraclass_correlations(matrix)
    ref = pg.intraclass_corr(_long(matrix), "target", "rater", "rating").set_index("Type")
    names = {
        "ICC(1,1)": "ICC(1,1)",
        "ICC(2,1)": "ICC(A,1)",
        "ICC(3,1)": "ICC(C,1)",
        "ICC(1,k)": "ICC(1,k)",
        "ICC(2,k)": "ICC(A,k)",
        "ICC(3,k)": "ICC(C,k)",
    }
    for form, theirs in names.items():
        assert ours.loc[form, "icc"] == pytest.approx(ref.loc[theirs, "ICC"], abs=1e-6), form
        assert ours.loc[form, "F"] == pytest.approx(ref.loc[theirs, "F"], abs=1e-6), form
        assert ours.loc[form, "p"] == pytest.approx(ref.loc[theirs, "pval"], abs=1e-6), form
        # pingouin rounds its CI to 2 decimals.
        low, high = ref.loc[theirs, "CI95"]
        assert ours.loc[form, "lower"] == pytest.approx(low, abs=0.0051), form
        assert ours.loc[form, "upper"] == pytest.approx(high, abs=0.0051), form


def test_icc_pair_aliases_and_errors():
    rng = np.random.default_rng(5)
    a = rng.normal(5, 3, 40)
    b = a + rng.normal(1, 1, 40)
    assert icc(a, b, form="ICC(A,1)") == icc(a, b, form="ICC(2,1)")
    assert icc(a, b, form="ICC(C,1)")[0] > icc(a, b)[0]  # a shift costs absolute agreement only
    with pytest.raises(AgreementError, match="unknown ICC form"):
        icc(a, b, form="ICC(9,9)")
    with pytest.raises(AgreementError, match="at least 2"):
        intraclass_correlations(np.ones((1, 3)))


def test_agreement_matches_independent_implementations():
    rng = np.random.default_rng(11)
    a = rng.gamma(2.0, 3.0, 120) + 0.2
    b = 0.95 * a + rng.normal(0.3, 1.0, 120)
    out = agreement(a, b, mape_floor=1.0)
    assert out["n"] == 120
    assert out["bias"] == pytest.approx(np.mean(b - a), abs=1e-9)
    assert out["mae"] == pytest.approx(mean_absolute_error(a, b), abs=1e-9)
    assert out["rmse"] == pytest.approx(np.sqrt(mean_squared_error(a, b)), abs=1e-9)
    assert out["r2"] == pytest.approx(r2_score(a, b), abs=1e-9)  # b predicting a
    pr = stats.pearsonr(a, b)
    assert out["r"] == pytest.approx(pr.statistic, abs=1e-9)
    assert out["r_p"] == pytest.approx(pr.pvalue, abs=1e-9)
    ci = pr.confidence_interval(0.95)
    assert (out["r_lower"], out["r_upper"]) == pytest.approx((ci.low, ci.high), abs=1e-6)
    assert out["rho"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)
    pgc = pg.corr(a, b)
    assert out["r"] == pytest.approx(pgc["r"].iloc[0], abs=1e-6)
    ref = pg.intraclass_corr(_long(np.column_stack([a, b])), "target", "rater", "rating")
    assert out["icc"] == pytest.approx(ref.set_index("Type").loc["ICC(A,1)", "ICC"], abs=1e-6)
    keep = np.abs(a) >= 1.0
    expected_mape = 100 * np.mean(np.abs(b[keep] - a[keep]) / np.abs(a[keep]))
    assert out["mape"] == pytest.approx(expected_mape, abs=1e-9)
    assert out["mape_excluded"] == int((~keep).sum()) > 0
    assert "MAPE skips" in out["note"]


def test_mape_matches_sklearn_when_nothing_is_skipped():
    from sklearn.metrics import mean_absolute_percentage_error

    rng = np.random.default_rng(2)
    a = rng.uniform(2, 30, 50)
    b = a + rng.normal(0, 1, 50)
    out = agreement(a, b)
    assert out["mape_excluded"] == 0 and out["note"] == ""
    assert out["mape"] == pytest.approx(100 * mean_absolute_percentage_error(a, b), abs=1e-9)


def test_agreement_edge_cases_give_nan_with_reason():
    few = agreement([1.0, 2.0], [1.5, 2.5])
    assert few["n"] == 2 and np.isnan(few["mae"]) and "N = 2 < 3" in few["note"]
    flat = agreement([3.0, 3.0, 3.0, 3.0], [2.0, 4.0, 3.0, 5.0])
    assert np.isnan(flat["r"]) and np.isnan(flat["r2"])
    assert "constant" in flat["note"]
    assert flat["bias"] == pytest.approx(0.5)


def test_concordance_correlation_matches_lin_formula():
    rng = np.random.default_rng(4)
    x = rng.normal(10, 2, 60)
    y = 1.1 * x + rng.normal(0.5, 1, 60)
    sxy = np.cov(x, y, ddof=0)[0, 1]
    expected = 2 * sxy / (np.var(x) + np.var(y) + (x.mean() - y.mean()) ** 2)
    assert concordance_correlation(x, y) == pytest.approx(expected, abs=1e-12)


def test_paired_aligns_series_on_subject_id():
    a = pd.Series([1.0, 2.0, np.nan, 4.0], index=["s1", "s2", "s3", "s4"])
    b = pd.Series([40.0, 10.0, 30.0], index=["s4", "s1", "s3"])
    x, y = paired(a, b)
    assert x.tolist() == [1.0, 4.0] and y.tolist() == [10.0, 40.0]
    with pytest.raises(AgreementError, match="unequal"):
        paired([1, 2], [1, 2, 3])


def test_pearson_interval_small_n_is_nan():
    assert np.isnan(pearson_interval(0.5, 3)[0])


def test_identical_methods_do_not_crash() -> None:
    values = np.array([1.0, 2.5, 4.0, 8.0, 12.0])
    from liverfat.evaluation.agreement import intraclass_correlations

    table = intraclass_correlations(np.column_stack([values, values]))
    assert table.loc["ICC(2,1)", "icc"] == pytest.approx(1.0)
    assert table.loc["ICC(1,1)", "icc"] == pytest.approx(1.0)
