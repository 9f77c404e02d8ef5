"""Correlations of each method's values (or steatosis grades) with subject covariates.

Covariates are a frame indexed by subject_id, one column per covariate in its own unit (age in
years, BMI in kg/m², ...); two-level text columns such as ``sex`` are coded 0/1
(:func:`encode_covariates`). :func:`covariate_correlations` gives Spearman's rho per method,
covariate and (optionally) stratum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from liverfat.evaluation.agreement import paired
from liverfat.evaluation.classification import STEATOSIS_GRADE_THRESHOLDS_PCT, steatosis_grade
from liverfat.evaluation.values import ComparisonError


def encode_covariates(covariates: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Numeric covariate columns, two-level text columns (e.g. sex) coded 0/1.

    Returns the numeric frame (index subject_id as text) and per column a note on its coding
    (``""`` for numeric columns). Text columns with more than two levels are dropped.
    """
    numeric = {}
    coding: dict[str, str] = {}
    for column in covariates.columns:
        series = covariates[column]
        as_number = pd.to_numeric(series, errors="coerce")
        text = series.astype("string").str.strip().replace("", pd.NA)
        if as_number.notna().sum() == text.notna().sum() and as_number.notna().any():
            numeric[column] = as_number.astype(float)
            coding[column] = ""
            continue
        levels = sorted(text.dropna().unique())
        if len(levels) == 2:
            numeric[column] = text.map({levels[0]: 0.0, levels[1]: 1.0}).astype(float)
            coding[column] = f"{levels[0]}=0, {levels[1]}=1"
    frame = pd.DataFrame(numeric, index=covariates.index)
    frame.index = frame.index.astype(str)
    return frame, coding


def covariate_correlations(
    values: pd.DataFrame,
    covariates: pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    quantity: str = "value",
    grade_thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT,
    by: str | None = None,
) -> pd.DataFrame:
    """Spearman correlation of each method's values (or grades) with each covariate.

    Parameters
    ----------
    values:
        :func:`~liverfat.evaluation.values.value_table`.
    covariates:
        Index subject_id, one column per covariate in its own unit (age in years, BMI in
        kg/m², ...); two-level text columns are coded 0/1 (:func:`encode_covariates`).
    methods:
        Methods to correlate (default: every column of ``values``).
    quantity:
        ``"value"`` (the target, e.g. PDFF in %) or ``"grade"`` (steatosis grade from
        ``grade_thresholds``).
    by:
        A covariate column to stratify by (e.g. ``"sex"``): one row per stratum besides the
        pooled one; the column itself is then not correlated.

    Returns
    -------
    pandas.DataFrame
        ``method``, ``covariate``, ``stratum`` (``"all"`` or ``"<by>=<level>"``), ``n``,
        ``rho``, ``p`` and ``note`` (why rho is NaN, or the covariate's coding).
    """
    if quantity not in ("value", "grade"):
        raise ComparisonError(f"quantity must be 'value' or 'grade', got {quantity!r}")
    chosen = list(values.columns) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in values.columns]
    if unknown or not chosen:
        raise ComparisonError(f"unknown or no method(s) to correlate: {', '.join(unknown)}")
    cov = covariates.copy()
    cov.index = cov.index.astype(str)
    strata = _strata(cov, by)
    encoded, coding = encode_covariates(cov.drop(columns=[by]) if by is not None else cov)
    rows = []
    for method in chosen:
        series = values[method]
        if quantity == "grade":
            finite = series.dropna()
            series = pd.Series(
                steatosis_grade(finite.to_numpy(), grade_thresholds).astype(float),
                index=finite.index,
            )
        for column in encoded.columns:
            for stratum, ids in strata:
                x, y = paired(series, encoded[column].reindex(ids))
                row = {"method": method, "covariate": column, "stratum": stratum}
                rows.append({**row, **_spearman(x, y, coding[column])})
    return pd.DataFrame(rows, columns=["method", "covariate", "stratum", "n", "rho", "p", "note"])


def _strata(covariates: pd.DataFrame, by: str | None) -> list[tuple[str, pd.Index]]:
    """``("all", every subject)``, then ``("<by>=<level>", its subjects)`` per level of ``by``."""
    strata: list[tuple[str, pd.Index]] = [("all", covariates.index)]
    if by is None:
        return strata
    if by not in covariates.columns:
        raise ComparisonError(f"no covariate {by!r} to stratify by (have {', '.join(covariates)})")
    levels = covariates[by].astype("string").str.strip().replace("", pd.NA)
    for level in sorted(levels.dropna().unique()):
        members = (levels == level).fillna(False).to_numpy(bool)  # a missing level is no member
        strata.append((f"{by}={level}", covariates.index[members]))
    return strata


def _spearman(x: np.ndarray, y: np.ndarray, coding: str) -> dict[str, object]:
    """``n``, ``rho``, ``p`` and ``note``: why rho is NaN, else the covariate's ``coding``."""
    out: dict[str, object] = {"n": int(x.size), "rho": np.nan, "p": np.nan}
    if x.size < 3:
        out["note"] = f"N = {x.size} < 3"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = "constant values: rho undefined"
    else:
        sr = stats.spearmanr(x, y)
        out.update(rho=float(sr.statistic), p=float(sr.pvalue), note=coding)
    return out
