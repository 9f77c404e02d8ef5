"""Test-retest repeatability: the same participants scanned at two visits.

Pure: values in, numbers out. Each scan is a subject (a row of the predictions table); a
manifest's ``participant_id`` and ``visit`` columns say which scans are one participant's two
visits (UK Biobank instances 2 and 3). :func:`visit_pairs` pairs them; :func:`repeatability`
gives, for the differences ``d = second - first`` (unit of the data, percentage points for PDFF):

* the within-subject SD ``wSD = sqrt(sum(d^2) / (2 n))`` with its chi-square interval on ``n``
  degrees of freedom (``n wSD^2 / sigma^2 ~ chi2(n)`` for normal errors without a visit effect);
* the repeatability coefficient ``RC = 1.96 sqrt(2) wSD = 2.77 wSD`` (and interval): the
  difference two visits of one participant stay within for 95 % of participants;
* the test-retest ICC, form ICC(2,1) (two-way random effects, absolute agreement, single
  measurement; McGraw & Wong's ICC(A,1)): the visits are a random sample of occasions, and a
  systematic shift between them counts against repeatability, as it does in wSD (computed from
  ``d^2``, not from the SD of ``d``), so ICC and wSD read the same disagreement;
* Bland-Altman of ``second - first``: bias (its interval) and 95 % limits of agreement.

References
----------
Bland JM, Altman DG (1999). Measuring agreement in method comparison studies. Stat Methods Med
Res 8(2):135-160. Raunig DL et al. (2015). Quantitative imaging biomarkers: a review of
statistical methods for technical performance assessment. Stat Methods Med Res 24(1):27-67.
McGraw KO, Wong SP (1996). Psychol Methods 1(1):30-46. Koo TK, Li MY (2016). J Chiropr Med
15(2):155-163.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from liverfat.evaluation.agreement import AgreementError, bland_altman, icc, paired

#: The ICC form of a test-retest analysis (see the module docstring for why).
TEST_RETEST_ICC = "ICC(2,1)"
#: RC = this factor x wSD: 1.96 sqrt(2), the 95 % bound of the difference of two measurements.
RC_FACTOR = 1.96 * math.sqrt(2.0)
#: Pairs needed for a row of statistics (Bland-Altman needs 3).
MIN_PAIRS = 3
COLUMNS = (
    "method",
    "n_pairs",
    "mean",
    "wsd",
    "wsd_lower",
    "wsd_upper",
    "rc",
    "rc_lower",
    "rc_upper",
    "icc",
    "icc_lower",
    "icc_upper",
    "icc_form",
    "bias",
    "bias_lower",
    "bias_upper",
    "loa_lower",
    "loa_upper",
    "note",
)


def visit_pairs(
    values: pd.Series,
    participants: Mapping[str, str],
    visits: Mapping[str, float] | pd.Series,
    *,
    pair: Sequence[int] = (2, 3),
) -> pd.DataFrame:
    """The participants with a finite value at both visits of ``pair``.

    Parameters
    ----------
    values:
        One method's values indexed by subject_id (a scan), in the target unit; NaN = none.
    participants, visits:
        Each subject's participant id and visit number (a manifest's ``participant_id`` and
        ``visit`` columns). A participant with two scans at one visit is an error.
    pair:
        The two visits, first then second (UK Biobank: 2 and 3).

    Returns
    -------
    pandas.DataFrame
        Indexed by participant (sorted): ``first_id``, ``second_id`` (subject ids), ``first``,
        ``second`` (values).
    """
    first, second = (int(v) for v in pair)
    visit = pd.Series(visits, dtype=float)
    frame = pd.DataFrame({"value": pd.Series(values, dtype=float)}).dropna()
    frame["participant"] = [str(participants.get(s, s)) for s in frame.index]
    frame["visit"] = visit.reindex(frame.index).to_numpy()
    frame = frame[frame["visit"].isin([first, second])]
    twice = frame.duplicated(["participant", "visit"])
    if twice.any():
        who = frame.loc[twice, "participant"].iloc[0]
        raise AgreementError(f"participant {who} has two scans at one visit")
    sides = {}
    for number, name in ((first, "first"), (second, "second")):
        side = frame[frame["visit"] == number]
        sides[f"{name}_id"] = pd.Series(side.index, index=side["participant"].to_numpy())
        sides[name] = pd.Series(side["value"].to_numpy(), index=side["participant"].to_numpy())
    out = pd.DataFrame(sides).dropna().sort_index()
    out.index.name = "participant_id"
    return out[["first_id", "second_id", "first", "second"]]


def within_subject_sd(
    first: ArrayLike, second: ArrayLike, *, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(wSD, lower, upper)`` of paired repeat measurements (unit of the data).

    ``wSD = sqrt(sum(d^2) / (2 n))``; the interval is ``wSD sqrt(n / chi2_{1-a/2}(n))`` to
    ``wSD sqrt(n / chi2_{a/2}(n))`` (chi-square on ``n`` degrees of freedom, normal errors).
    """
    a, b = paired(first, second)
    n = a.size
    if n < 1:
        raise AgreementError("a within-subject SD needs at least 1 complete pair")
    d = b - a
    wsd = math.sqrt(float(np.sum(d * d)) / (2 * n))
    alpha = 1.0 - confidence
    lower = wsd * math.sqrt(n / stats.chi2.ppf(1 - alpha / 2, n))
    upper = wsd * math.sqrt(n / stats.chi2.ppf(alpha / 2, n))
    return wsd, lower, upper


def repeatability(
    first: ArrayLike, second: ArrayLike, *, confidence: float = 0.95
) -> dict[str, float | int | str]:
    """wSD, RC, test-retest ICC(2,1) and Bland-Altman of ``second - first`` (module docstring).

    Values in the unit of the data (PDFF: %, differences in percentage points); the ICC is
    dimensionless. Needs :data:`MIN_PAIRS` complete pairs.
    """
    a, b = paired(first, second)
    if a.size < MIN_PAIRS:
        raise AgreementError(f"repeatability needs at least {MIN_PAIRS} pairs, got {a.size}")
    wsd, wsd_lower, wsd_upper = within_subject_sd(a, b, confidence=confidence)
    value, icc_lower, icc_upper = icc(a, b, form=TEST_RETEST_ICC, confidence=confidence)
    ba = bland_altman(b, a, confidence=confidence)
    return {
        "n_pairs": int(a.size),
        "mean": float(np.mean(np.concatenate([a, b]))),
        "wsd": wsd,
        "wsd_lower": wsd_lower,
        "wsd_upper": wsd_upper,
        "rc": RC_FACTOR * wsd,
        "rc_lower": RC_FACTOR * wsd_lower,
        "rc_upper": RC_FACTOR * wsd_upper,
        "icc": value,
        "icc_lower": icc_lower,
        "icc_upper": icc_upper,
        "icc_form": TEST_RETEST_ICC,
        "bias": ba.bias,
        "bias_lower": ba.bias_lower,
        "bias_upper": ba.bias_upper,
        "loa_lower": ba.loa_lower,
        "loa_upper": ba.loa_upper,
    }


def repeatability_table(
    values: pd.DataFrame,
    participants: Mapping[str, str],
    visits: Mapping[str, float] | pd.Series,
    *,
    pair: Sequence[int] = (2, 3),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row of :func:`repeatability` per column of ``values`` (subjects x methods, e.g. a
    :func:`~liverfat.evaluation.values.value_table` with the reference and the truth).

    A method with fewer than :data:`MIN_PAIRS` participants measured at both visits gets a row
    with its ``n_pairs``, no statistics and a ``note`` saying why.
    """
    pairs = {m: visit_pairs(values[m], participants, visits, pair=pair) for m in values.columns}
    return table_of_pairs(pairs, confidence=confidence)


def table_of_pairs(
    pairs_by_method: Mapping[str, pd.DataFrame], *, confidence: float = 0.95
) -> pd.DataFrame:
    """:func:`repeatability_table` from each method's :func:`visit_pairs`."""
    rows = []
    for method, pairs in pairs_by_method.items():
        row: dict[str, object] = {"method": str(method), "n_pairs": len(pairs), "note": ""}
        if len(pairs) >= MIN_PAIRS:
            row.update(repeatability(pairs["first"], pairs["second"], confidence=confidence))
        else:
            row["note"] = f"{len(pairs)} participant(s) with both visits, fewer than {MIN_PAIRS}"
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(COLUMNS))
