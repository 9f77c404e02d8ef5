"""Subjects to look at: where two methods differ most, and probable reference errors.

Both work on :func:`~liverfat.evaluation.values.value_table` (subjects x methods, in the
target's unit).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from liverfat.evaluation.values import ComparisonError, check_pairs


def top_outliers(
    values: pd.DataFrame,
    pair: tuple[str, str],
    *,
    n: int = 10,
    subset: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The ``n`` subjects where ``b`` differs most from ``a``, with every method's value.

    Returns
    -------
    pandas.DataFrame
        ``rank``, ``subject_id``, ``difference`` (b - a, target unit), then one column per
        method (NaN where a method has no usable value), largest ``|difference|`` first.
    """
    a, b = pair
    check_pairs(values, [pair])
    sub = values if subset is None else values.reindex(pd.Index([str(s) for s in subset]))
    diff = (sub[b] - sub[a]).dropna()
    order = diff.abs().sort_values(ascending=False, kind="mergesort").index[:n]
    out = sub.loc[order].copy()
    out.insert(0, "difference", diff.loc[order])
    out = out.reset_index().rename(columns={"index": "subject_id"})
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def probable_reference_errors(
    values: pd.DataFrame,
    a: str,
    b: str,
    reference: str,
    *,
    agree_pct: float = 2.0,
    disagree_pct: float = 4.0,
) -> pd.DataFrame:
    """Subjects where methods ``a`` and ``b`` agree but both disagree with ``reference``.

    Two independent methods that agree with each other (``|a - b| <= agree_pct``) while both
    miss the reference by at least ``disagree_pct`` on the same side point at the reference
    measurement, not the methods (the UK Biobank liver-fat study found ten such subjects).

    Parameters
    ----------
    values:
        :func:`~liverfat.evaluation.values.value_table` (subjects x methods), in the target's unit.

    Returns
    -------
    pandas.DataFrame
        Indexed by subject_id: the three values, ``error_a``, ``error_b`` (method minus
        reference) and ``a_minus_b``, sorted by the smaller absolute error, largest first.
    """
    for method in (a, b, reference):
        if method not in values.columns:
            raise ComparisonError(f"unknown method {method!r} (have {', '.join(values.columns)})")
    frame = values[[reference, a, b]].dropna()
    error_a = frame[a] - frame[reference]
    error_b = frame[b] - frame[reference]
    flagged = (
        ((frame[a] - frame[b]).abs() <= agree_pct)
        & (np.minimum(error_a.abs(), error_b.abs()) >= disagree_pct)
        & (np.sign(error_a) == np.sign(error_b))
    )
    out = frame[flagged].assign(
        error_a=error_a[flagged], error_b=error_b[flagged], a_minus_b=(frame[a] - frame[b])[flagged]
    )
    order = np.minimum(out["error_a"].abs(), out["error_b"].abs()).sort_values(ascending=False)
    return out.loc[order.index]
