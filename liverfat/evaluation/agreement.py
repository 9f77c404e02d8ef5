"""Agreement between two measurements of the same quantity (method vs reference).

Everything here is pure: arrays in, numbers out. Values are in the unit of the target (liver
fat fraction in percent, 0-100); differences are ``x - y`` in that unit (percentage points for
PDFF). Pairs with a missing value on either side are dropped (see :func:`paired`).

References
----------
Bland JM, Altman DG (1986). Statistical methods for assessing agreement between two methods of
clinical measurement. Lancet 327(8476):307-310.
Shrout PE, Fleiss JL (1979). Intraclass correlations: uses in assessing rater reliability.
Psychol Bull 86(2):420-428.
McGraw KO, Wong SP (1996). Forming inferences about some intraclass correlation coefficients.
Psychol Methods 1(1):30-46.
Lin LI (1989). A concordance correlation coefficient to evaluate reproducibility. Biometrics
45(1):255-268.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from liverfat.errors import LiverfatError

#: ICC forms, named as in Shrout & Fleiss (1979) with McGraw & Wong's (1996) names beside them.
ICC_FORMS = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")
ICC_ALIASES = {
    "ICC(A,1)": "ICC(2,1)",
    "ICC(C,1)": "ICC(3,1)",
    "ICC(A,k)": "ICC(2,k)",
    "ICC(C,k)": "ICC(3,k)",
}
ICC_DESCRIPTIONS = {
    "ICC(1,1)": "one-way random effects, single rating",
    "ICC(2,1)": "two-way random effects, absolute agreement, single rating (ICC(A,1))",
    "ICC(3,1)": "two-way mixed effects, consistency, single rating (ICC(C,1))",
    "ICC(1,k)": "one-way random effects, mean of k ratings",
    "ICC(2,k)": "two-way random effects, absolute agreement, mean of k ratings (ICC(A,k))",
    "ICC(3,k)": "two-way mixed effects, consistency, mean of k ratings (ICC(C,k))",
}


class AgreementError(LiverfatError):
    """Inputs that cannot give an agreement statistic (too few pairs, unequal lengths)."""


def paired(x: ArrayLike | pd.Series, y: ArrayLike | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Two float arrays holding only the pairs where both values are finite.

    Two :class:`pandas.Series` are aligned on their index first (an inner join on subject_id),
    so subjects present on one side only are dropped; anything else must have equal length.
    """
    if isinstance(x, pd.Series) and isinstance(y, pd.Series):
        if x.index.has_duplicates or y.index.has_duplicates:
            raise AgreementError("duplicate subject ids; cannot pair values")
        x, y = x.align(y, join="inner")
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise AgreementError(f"unequal lengths {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _need(n: int, minimum: int, what: str) -> None:
    if n < minimum:
        raise AgreementError(f"{what} needs at least {minimum} complete pairs, got {n}")


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman agreement of ``x`` with ``y`` (differences ``x - y``, unit of the data).

    Attributes
    ----------
    n:
        Number of complete pairs.
    bias, bias_lower, bias_upper:
        Mean difference and its confidence interval (t distribution, n - 1 df).
    sd:
        Standard deviation of the differences (n - 1 denominator).
    loa_lower, loa_upper:
        Limits of agreement, ``bias -/+ multiplier * sd``.
    loa_lower_ci, loa_upper_ci:
        Confidence intervals (low, high) of each limit with the approximate standard error
        ``sqrt(3 sd^2 / n)`` of Bland & Altman (1986).
    multiplier:
        The number of SDs spanned by each limit (1.96 by default; the 1986 paper used 2).
    confidence:
        Confidence level of the intervals (0.95).
    proportional_slope, proportional_intercept, proportional_p:
        Ordinary least-squares regression of the differences on the pair means; a slope far from
        0 (small p) means the disagreement grows with the level (proportional bias).
    """

    n: int
    bias: float
    bias_lower: float
    bias_upper: float
    sd: float
    loa_lower: float
    loa_upper: float
    loa_lower_ci: tuple[float, float]
    loa_upper_ci: tuple[float, float]
    multiplier: float
    confidence: float
    proportional_slope: float
    proportional_intercept: float
    proportional_p: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bland_altman(
    x: ArrayLike | pd.Series,
    y: ArrayLike | pd.Series,
    *,
    multiplier: float = 1.96,
    confidence: float = 0.95,
) -> BlandAltman:
    """Bias and limits of agreement of ``x`` against ``y`` (Bland & Altman 1986).

    Parameters
    ----------
    x, y:
        Paired measurements in the same unit (e.g. PDFF in %); ``x`` is usually the method and
        ``y`` the reference, so a positive bias means the method reads high.
    multiplier:
        Half-width of the limits in SDs of the differences (1.96; use 2 to match the 1986 paper).
    confidence:
        Level of the confidence intervals of the bias and of each limit.

    Returns
    -------
    BlandAltman
        All quantities in the unit of the data.
    """
    a, b = paired(x, y)
    n = a.size
    _need(n, 3, "Bland-Altman analysis")
    diff = a - b
    mean = (a + b) / 2.0
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))
    t = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1))
    se_bias = sd / float(np.sqrt(n))
    se_loa = float(np.sqrt(3.0 * sd**2 / n))
    lo, hi = bias - multiplier * sd, bias + multiplier * sd
    if np.ptp(mean) > 0:
        reg = stats.linregress(mean, diff)
        slope, intercept, p = float(reg.slope), float(reg.intercept), float(reg.pvalue)
    else:
        slope, intercept, p = float("nan"), float("nan"), float("nan")
    return BlandAltman(
        n=n,
        bias=bias,
        bias_lower=bias - t * se_bias,
        bias_upper=bias + t * se_bias,
        sd=sd,
        loa_lower=lo,
        loa_upper=hi,
        loa_lower_ci=(lo - t * se_loa, lo + t * se_loa),
        loa_upper_ci=(hi - t * se_loa, hi + t * se_loa),
        multiplier=multiplier,
        confidence=confidence,
        proportional_slope=slope,
        proportional_intercept=intercept,
        proportional_p=p,
    )


def _as_matrix(ratings: ArrayLike | pd.DataFrame) -> np.ndarray:
    matrix = np.asarray(ratings, dtype=float)
    if matrix.ndim != 2:
        raise AgreementError(
            f"ratings must be a 2-D table (subjects x raters), got {matrix.ndim}-D"
        )
    matrix = matrix[np.all(np.isfinite(matrix), axis=1)]
    n, k = matrix.shape
    if k < 2:
        raise AgreementError(f"an ICC needs at least 2 raters/methods, got {k}")
    _need(n, 2, "an ICC")
    return matrix


def _mean_squares(y: np.ndarray) -> tuple[np.float64, ...]:
    """Two-way ANOVA mean squares of a complete subjects x raters table: rows (subjects),
    columns (raters), error, and within subjects (one-way)."""
    n, k = y.shape
    grand = y.mean()
    ss_total = float(((y - grand) ** 2).sum())
    ss_rows = float(k * ((y.mean(axis=1) - grand) ** 2).sum())
    ss_cols = float(n * ((y.mean(axis=0) - grand) ** 2).sum())
    ss_err = ss_total - ss_rows - ss_cols
    # numpy scalars, so identical raters (zero error) give inf/NaN under errstate, not an exception.
    msr = np.float64(ss_rows) / (n - 1)
    msc = np.float64(ss_cols) / (k - 1)
    mse = np.float64(ss_err) / ((n - 1) * (k - 1))
    msw = np.float64(ss_total - ss_rows) / (n * (k - 1))
    return msr, msc, mse, msw


def intraclass_correlations(
    ratings: ArrayLike | pd.DataFrame, *, confidence: float = 0.95
) -> pd.DataFrame:
    """All six ICC forms of Shrout & Fleiss (1979) from a subjects x raters table.

    (Long on purpose: the six forms and their intervals stand together in the papers' notation,
    so each line can be checked against McGraw & Wong's table.)

    Parameters
    ----------
    ratings:
        2-D array or frame, one row per subject (target), one column per rater or method, in
        the unit of the measurement. Rows with any missing value are dropped (the ANOVA needs a
        complete, balanced design).
    confidence:
        Level of the confidence intervals (McGraw & Wong 1996, as in R's ``psych::ICC``).

    Returns
    -------
    pandas.DataFrame
        Indexed by form (:data:`ICC_FORMS`), columns ``icc`` (dimensionless), ``F``, ``df1``,
        ``df2``, ``p`` (test of ICC = 0), ``lower``, ``upper`` and ``description``.
    """
    y = _as_matrix(ratings)
    n, k = y.shape
    msr, msc, mse, msw = _mean_squares(y)
    alpha = 1.0 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):
        icc1 = (msr - msw) / (msr + (k - 1) * msw)
        icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        icc3 = (msr - mse) / (msr + (k - 1) * mse)
        icc1k = (msr - msw) / msr
        icc2k = (msr - mse) / (msr + (msc - mse) / n)
        icc3k = (msr - mse) / msr

        # One-way model.
        df1, df2w, df2e = n - 1, n * (k - 1), (n - 1) * (k - 1)
        f1 = msr / msw
        fl1 = f1 / stats.f.ppf(1 - alpha / 2, df1, df2w)
        fu1 = f1 * stats.f.ppf(1 - alpha / 2, df2w, df1)
        # Two-way models share the F of subjects against the residual.
        f3 = msr / mse
        fl3 = f3 / stats.f.ppf(1 - alpha / 2, df1, df2e)
        fu3 = f3 * stats.f.ppf(1 - alpha / 2, df2e, df1)
        # Absolute agreement: Satterthwaite degrees of freedom (McGraw & Wong 1996, case 2A).
        a = k * icc2 / (n * (1 - icc2))
        b = 1 + k * icc2 * (n - 1) / (n * (1 - icc2))
        v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / df2e)
        fs = stats.f.ppf(1 - alpha / 2, df1, v)
        fs2 = stats.f.ppf(1 - alpha / 2, v, df1)
        lo2 = n * (msr - fs * mse) / (fs * (k * msc + (k * n - k - n) * mse) + n * msr)
        hi2 = n * (fs2 * msr - mse) / (k * msc + (k * n - k - n) * mse + n * fs2 * msr)

    p1 = float(stats.f.sf(f1, df1, df2w))
    p3 = float(stats.f.sf(f3, df1, df2e))
    rows = {
        "ICC(1,1)": (icc1, f1, df1, df2w, p1, (fl1 - 1) / (fl1 + k - 1), (fu1 - 1) / (fu1 + k - 1)),
        "ICC(2,1)": (icc2, f3, df1, df2e, p3, lo2, hi2),
        "ICC(3,1)": (icc3, f3, df1, df2e, p3, (fl3 - 1) / (fl3 + k - 1), (fu3 - 1) / (fu3 + k - 1)),
        "ICC(1,k)": (icc1k, f1, df1, df2w, p1, 1 - 1 / fl1, 1 - 1 / fu1),
        "ICC(2,k)": (
            icc2k,
            f3,
            df1,
            df2e,
            p3,
            lo2 * k / (1 + lo2 * (k - 1)),
            hi2 * k / (1 + hi2 * (k - 1)),
        ),
        "ICC(3,k)": (icc3k, f3, df1, df2e, p3, 1 - 1 / fl3, 1 - 1 / fu3),
    }
    frame = pd.DataFrame.from_dict(
        rows, orient="index", columns=["icc", "F", "df1", "df2", "p", "lower", "upper"]
    ).astype(float)
    frame["df1"] = frame["df1"].astype(int)
    frame["df2"] = frame["df2"].astype(int)
    frame["description"] = [ICC_DESCRIPTIONS[f] for f in frame.index]
    frame.index.name = "form"
    return frame


def icc(
    x: ArrayLike | pd.Series,
    y: ArrayLike | pd.Series,
    *,
    form: str = "ICC(2,1)",
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """One ICC of two paired measurements, with its confidence interval.

    Parameters
    ----------
    x, y:
        Paired measurements in the same unit (method and reference).
    form:
        One of :data:`ICC_FORMS` or McGraw & Wong's names (``ICC(A,1)`` = ``ICC(2,1)``,
        absolute agreement, the default; ``ICC(C,1)`` = ``ICC(3,1)``, consistency).
    confidence:
        Level of the interval.

    Returns
    -------
    tuple of float
        ``(icc, lower, upper)``, dimensionless.
    """
    form = ICC_ALIASES.get(form, form)
    if form not in ICC_FORMS:
        raise AgreementError(f"unknown ICC form {form!r} (choose from {', '.join(ICC_FORMS)})")
    a, b = paired(x, y)
    table = intraclass_correlations(np.column_stack([a, b]), confidence=confidence)
    row = table.loc[form]
    return float(row["icc"]), float(row["lower"]), float(row["upper"])


def concordance_correlation(x: ArrayLike | pd.Series, y: ArrayLike | pd.Series) -> float:
    """Lin's concordance correlation coefficient (dimensionless, -1 to 1).

    ``2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` with population (1/n) moments, as in
    Lin (1989): the Pearson correlation penalised for any shift in location or scale.
    """
    a, b = paired(x, y)
    _need(a.size, 2, "a concordance correlation")
    sxy = np.mean((a - a.mean()) * (b - b.mean()))
    denominator = a.var() + b.var() + (a.mean() - b.mean()) ** 2
    return float(2 * sxy / denominator) if denominator > 0 else float("nan")


def pearson_interval(r: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Pearson correlation by Fisher's z transform (NaN if n < 4)."""
    if n < 4 or not np.isfinite(r):
        return float("nan"), float("nan")
    if abs(r) >= 1.0:
        return float(r), float(r)
    z = np.arctanh(r)
    half = float(stats.norm.ppf(0.5 + confidence / 2.0)) / np.sqrt(n - 3)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


#: Keys of :func:`correlations`' result, in order.
CORRELATION_KEYS = ("r", "r_lower", "r_upper", "r_p", "rho", "rho_p")
#: Columns of :func:`agreement`'s result, in order.
AGREEMENT_KEYS = (
    "n",
    "bias",
    "bias_lower",
    "bias_upper",
    "sd_diff",
    "loa_lower",
    "loa_upper",
    "loa_lower_ci_low",
    "loa_lower_ci_high",
    "loa_upper_ci_low",
    "loa_upper_ci_high",
    "mae",
    "rmse",
    "r2",
    *CORRELATION_KEYS,
    "icc",
    "icc_lower",
    "icc_upper",
    "ccc",
    "mape",
    "mape_n",
    "mape_excluded",
    "note",
)


def correlations(x: np.ndarray, y: np.ndarray, *, confidence: float = 0.95) -> dict[str, float]:
    """Pearson r with its Fisher-z interval and p, and Spearman rho with its p (non-constant
    inputs of at least 3 pairs)."""
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    lo, hi = pearson_interval(float(pr.statistic), len(x), confidence=confidence)
    return {
        "r": float(pr.statistic),
        "r_lower": lo,
        "r_upper": hi,
        "r_p": float(pr.pvalue),
        "rho": float(sr.statistic),
        "rho_p": float(sr.pvalue),
    }


def agreement(
    a: ArrayLike | pd.Series,
    b: ArrayLike | pd.Series,
    *,
    icc_form: str = "ICC(2,1)",
    mape_floor: float = 1.0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Agreement of method ``b`` against method ``a`` (the first is the reference).

    Parameters
    ----------
    a, b:
        Paired values in the same unit (PDFF in %); Series are aligned on subject_id and pairs
        with a missing value are dropped.
    icc_form:
        The ICC reported (default ICC(2,1): two-way random, absolute agreement, single measures,
        the definition used by MIMIR).
    mape_floor:
        References with ``|a| < mape_floor`` (data unit, default 1 percentage point) are left out
        of the MAPE, whose relative errors would explode there; how many is said in
        ``mape_excluded`` and ``note``.
    confidence:
        Level of every interval.

    Returns
    -------
    dict
        Keys :data:`AGREEMENT_KEYS`: ``n``; ``bias`` = mean(b - a) with its interval; ``sd_diff``;
        limits of agreement (bias -/+ 1.96 SD) with the intervals of each limit (Bland & Altman
        1986); ``mae`` and ``rmse`` (data unit); ``r2`` = 1 - SS_res / SS_tot of b predicting
        a, SS_res = sum (a - b)^2, SS_tot = sum (a - mean a)^2 (can be negative); Pearson ``r``
        with Fisher-z interval and p; Spearman ``rho`` and p; ``icc`` of ``icc_form`` with its
        interval; Lin's ``ccc``; ``mape`` (%) over ``mape_n`` pairs; ``note``: why any value is
        NaN or what was skipped ("" when nothing).
    """
    x, y = paired(a, b)
    n = int(x.size)
    out: dict[str, Any] = dict.fromkeys(AGREEMENT_KEYS, float("nan"))
    out["n"] = n
    notes: list[str] = []
    if n < 3:
        out["mape_n"], out["mape_excluded"] = 0, 0
        out["note"] = f"N = {n} < 3 pairs: no agreement statistics"
        return out
    diff = y - x
    out.update(_limits(bland_altman(y, x, confidence=confidence)))
    out.update(mae=float(np.abs(diff).mean()), rmse=float(np.sqrt((diff**2).mean())))
    ss_tot = float(((x - x.mean()) ** 2).sum())
    if ss_tot > 0:
        out["r2"] = float(1.0 - (diff**2).sum() / ss_tot)
    else:
        notes.append("constant reference: R2 undefined")
    if np.ptp(x) > 0 and np.ptp(y) > 0:
        out.update(correlations(x, y, confidence=confidence))
    else:
        notes.append("constant values: r, rho undefined")
    value, lo, hi = icc(x, y, form=icc_form, confidence=confidence)
    if not np.isfinite(value):
        notes.append("no between-subject variance: ICC undefined")
    out.update(icc=value, icc_lower=lo, icc_upper=hi, ccc=concordance_correlation(x, y))
    out.update(_mape(x, diff, mape_floor))
    if out["mape_excluded"]:
        notes.append(
            f"MAPE skips {out['mape_excluded']} reference value(s) with |value| < {mape_floor:g}"
        )
    out["note"] = "; ".join(notes)
    return out


def _limits(ba: BlandAltman) -> dict[str, float]:
    """The Bland-Altman keys of :data:`AGREEMENT_KEYS` (bias, SD, limits, their intervals)."""
    return {
        "bias": ba.bias,
        "bias_lower": ba.bias_lower,
        "bias_upper": ba.bias_upper,
        "sd_diff": ba.sd,
        "loa_lower": ba.loa_lower,
        "loa_upper": ba.loa_upper,
        "loa_lower_ci_low": ba.loa_lower_ci[0],
        "loa_lower_ci_high": ba.loa_lower_ci[1],
        "loa_upper_ci_low": ba.loa_upper_ci[0],
        "loa_upper_ci_high": ba.loa_upper_ci[1],
    }


def _mape(x: np.ndarray, diff: np.ndarray, floor: float) -> dict[str, float | int]:
    """``mape`` (%) of ``diff`` relative to references ``|x| >= floor``, ``mape_n`` and
    ``mape_excluded`` (how many references fell below the floor)."""
    keep = np.abs(x) >= floor
    out: dict[str, float | int] = {"mape_n": int(keep.sum()), "mape_excluded": int((~keep).sum())}
    out["mape"] = (
        float(100.0 * np.mean(np.abs(diff[keep]) / np.abs(x[keep]))) if keep.any() else float("nan")
    )
    return out
