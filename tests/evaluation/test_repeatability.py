"""Test-retest repeatability against a designed within-subject SD, pingouin and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats

from liverfat.evaluation.agreement import AgreementError
from liverfat.evaluation.repeatability import (
    RC_FACTOR,
    TEST_RETEST_ICC,
    repeatability,
    repeatability_table,
    visit_pairs,
    within_subject_sd,
)

DESIGN_WSD = 0.8  # pp: each visit's measurement error SD


def _cohort(seed: int, n: int = 200, wsd: float = DESIGN_WSD, shift: float = 0.0):
    """True liver fat of ``n`` participants (log-normal, %) measured at two visits with
    independent N(0, wsd) errors; ``shift`` (pp) added at the second visit."""
    rng = np.random.default_rng(seed)
    truth = 2.0 * np.exp(1.1 * rng.standard_normal(n))
    return truth + rng.normal(0, wsd, n), truth + shift + rng.normal(0, wsd, n)


def _long(first, second) -> tuple[pd.DataFrame, dict, pd.Series]:
    """Values, participants and visits of paired scans as a study holds them (one row a scan)."""
    n = len(first)
    ids = [f"P{i:04d}" for i in range(n)] + [f"P{i:04d}_v3" for i in range(n)]
    values = pd.DataFrame({"method": np.concatenate([first, second])}, index=ids)
    participants = {sid: sid.removesuffix("_v3") for sid in ids}
    visits = pd.Series([2] * n + [3] * n, index=ids, dtype=float)
    return values, participants, visits


def test_designed_within_subject_sd_is_recovered_inside_its_interval():
    first, second = _cohort(seed=11)
    result = repeatability(first, second)
    assert result["n_pairs"] == 200
    assert result["wsd_lower"] < DESIGN_WSD < result["wsd_upper"]
    assert result["wsd"] == pytest.approx(DESIGN_WSD, abs=0.1)
    # wSD^2 is the one-way ANOVA within-participant mean square: the mean per-participant
    # variance of the two visits (ddof 1), computed independently here.
    per_participant = np.var(np.column_stack([first, second]), axis=1, ddof=1)
    assert result["wsd"] ** 2 == pytest.approx(per_participant.mean(), rel=1e-12)
    # The interval: n wSD^2 / sigma^2 ~ chi2(n).
    n, wsd = 200, result["wsd"]
    assert result["wsd_upper"] == pytest.approx(wsd * math.sqrt(n / stats.chi2.ppf(0.025, n)))
    assert result["rc"] == pytest.approx(2.7719 * wsd, rel=1e-4)
    assert result["rc_upper"] == pytest.approx(RC_FACTOR * result["wsd_upper"])


def test_interval_covers_the_design_in_about_95_percent_of_cohorts():
    covered = []
    for seed in range(200):
        first, second = _cohort(seed, n=50)
        _, lower, upper = within_subject_sd(first, second)
        covered.append(lower < DESIGN_WSD < upper)
    coverage = float(np.mean(covered))
    # Binomial SD of a 95 % coverage over 200 cohorts is 1.5 %: 0.92-0.98 is within 2 SD.
    assert 0.92 <= coverage <= 0.98, coverage


def test_icc_and_bias_match_pingouin_and_a_visit_shift_shows():
    first, second = _cohort(seed=5, n=80, shift=0.6)
    result = repeatability(first, second)
    n = len(first)
    long = pd.DataFrame(
        {
            "participant": np.tile(np.arange(n), 2),
            "visit": np.repeat([2, 3], n),
            "value": np.concatenate([first, second]),
        }
    )
    reference = pg.intraclass_corr(long, "participant", "visit", "value").set_index("Type")
    assert TEST_RETEST_ICC == "ICC(2,1)"
    # pingouin 0.7 names ICC(2,1) by McGraw & Wong: ICC(A,1), absolute agreement.
    assert result["icc"] == pytest.approx(reference.loc["ICC(A,1)", "ICC"], rel=1e-10)
    lower, upper = reference.loc["ICC(A,1)", "CI95"]  # rounded to 2 decimals
    assert result["icc_lower"] == pytest.approx(lower, abs=0.0051)
    assert result["icc_upper"] == pytest.approx(upper, abs=0.0051)
    # Absolute agreement: the visit shift lowers ICC(2,1) below consistency's ICC(3,1).
    assert result["icc"] < reference.loc["ICC(C,1)", "ICC"] - 0.005
    # Bland-Altman of visit 3 - visit 2: the designed shift inside the bias interval.
    assert result["bias"] == pytest.approx(np.mean(second - first))
    assert result["bias_lower"] < 0.6 < result["bias_upper"]
    sd = np.std(second - first, ddof=1)
    assert result["loa_upper"] == pytest.approx(result["bias"] + 1.96 * sd)


def test_table_pairs_visits_of_one_participant_only():
    first, second = _cohort(seed=2, n=30)
    values, participants, visits = _long(first, second)
    values.loc["P0000_v3", "method"] = np.nan  # one participant loses its repeat
    values["sparse"] = np.nan
    values.loc[["P0001", "P0001_v3"], "sparse"] = [1.0, 1.5]
    table = repeatability_table(values, participants, visits).set_index("method")
    assert table.loc["method", "n_pairs"] == 29
    expected = repeatability(first[1:], second[1:])
    assert table.loc["method", "wsd"] == pytest.approx(expected["wsd"])
    assert table.loc["method", "icc_form"] == "ICC(2,1)"
    assert table.loc["sparse", "n_pairs"] == 1
    assert np.isnan(table.loc["sparse", "wsd"]) and "fewer than 3" in table.loc["sparse", "note"]
    pairs = visit_pairs(values["method"], participants, visits)
    assert pairs.loc["P0002"].tolist() == ["P0002", "P0002_v3", first[2], second[2]]
    # Another pair of visits finds none; two scans at one visit are refused.
    assert visit_pairs(values["method"], participants, visits, pair=(2, 4)).empty
    visits["P0003_v3"] = 2
    with pytest.raises(AgreementError, match="P0003 has two scans at one visit"):
        visit_pairs(values["method"], participants, visits)
