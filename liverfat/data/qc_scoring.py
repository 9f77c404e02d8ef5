"""Scan QC against the phantom's truth: sensitivity and specificity per artefact class.

:func:`score_qc` reads the long ``qc.csv`` table (:mod:`liverfat.data.qc_run`) against a truth
table's ``artefact`` column (``none``, ``swap``, ``metal``, ``noise``, ``positioning``; an older
truth table without it has ``water_fat_swap`` 0/1, read as ``swap`` or ``none``). Each class is
scored with its own check (:data:`CLASS_CHECKS`): positives are the subjects with that artefact,
negatives every other subject with a result for the check. Each check also gets an ``any``
row: its specificity on the clean subjects (artefact ``none``). Proportions carry Wilson 95 %
confidence intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The check that answers for each artefact class.
CLASS_CHECKS = {"swap": "swap", "metal": "metal", "noise": "noise", "positioning": "position"}
SCORE_COLUMNS = (
    "class",
    "check",
    "n_positive",
    "n_negative",
    "true_pos",
    "false_pos",
    "sensitivity",
    "sensitivity_low",
    "sensitivity_high",
    "specificity",
    "specificity_low",
    "specificity_high",
)


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion (``successes`` of ``n``); NaNs when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def truth_artefacts(truth: pd.DataFrame) -> pd.Series:
    """Each subject's artefact class (index ``subject_id``), from ``artefact`` or
    ``water_fat_swap``."""
    ids = truth["subject_id"].astype(str)
    if "artefact" in truth.columns:
        values = truth["artefact"].fillna("none").astype(str).str.strip().replace("", "none")
    elif "water_fat_swap" in truth.columns:
        values = np.where(truth["water_fat_swap"].fillna(0).astype(int) == 1, "swap", "none")
    else:
        raise ValueError("truth table has neither an 'artefact' nor a 'water_fat_swap' column")
    return pd.Series(np.asarray(values), index=ids.to_numpy(), name="artefact")


def _row(cls: str, check: str, flags: pd.Series, positive: pd.Series) -> dict:
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    tp = int((flags & positive).sum())
    fp = int((flags & ~positive).sum())
    sens = tp / n_pos if n_pos else float("nan")
    spec = (n_neg - fp) / n_neg if n_neg else float("nan")
    s_low, s_high = wilson_interval(tp, n_pos)
    p_low, p_high = wilson_interval(n_neg - fp, n_neg)
    return dict(
        zip(
            SCORE_COLUMNS,
            (cls, check, n_pos, n_neg, tp, fp, sens, s_low, s_high, spec, p_low, p_high),
            strict=True,
        )
    )


def score_qc(qc_table: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Sensitivity and specificity of each check for its artefact class (module docstring).

    Parameters
    ----------
    qc_table:
        The long QC table: ``subject_id, check, value, threshold, flag, message`` with flag
        ``yes``, ``no`` or ``failed`` (failed rows and subjects not in ``truth`` are left out).
    truth:
        The phantom's truth table with ``subject_id`` and ``artefact`` (or ``water_fat_swap``).

    Returns
    -------
    pandas.DataFrame
        :data:`SCORE_COLUMNS`; one row per class in :data:`CLASS_CHECKS` (negatives: all other
        subjects), then one ``any`` row per check (negatives: the clean subjects; sensitivity NaN).
        Proportions are fractions (0-1) with Wilson 95 % bounds.
    """
    artefact = truth_artefacts(truth)
    table = qc_table[qc_table["flag"].isin(("yes", "no"))].copy()
    table["subject_id"] = table["subject_id"].astype(str)
    table = table[table["subject_id"].isin(artefact.index)]
    rows = []
    for cls, check in CLASS_CHECKS.items():
        results = table[table["check"] == check].drop_duplicates("subject_id")
        flags = (results["flag"] == "yes").reset_index(drop=True)
        positive = (artefact.loc[results["subject_id"]] == cls).reset_index(drop=True)
        rows.append(_row(cls, check, flags, positive))
    for check in dict.fromkeys(table["check"]):
        results = table[table["check"] == check].drop_duplicates("subject_id")
        clean = (artefact.loc[results["subject_id"]] == "none").to_numpy()
        flags = (results["flag"] == "yes").to_numpy()[clean]
        rows.append(_row("any", check, pd.Series(flags), pd.Series(np.zeros(flags.size, bool))))
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def score_lines(scores: pd.DataFrame) -> list[str]:
    """One line per artefact class of a :func:`score_qc` table."""
    lines = []
    for row in scores[scores["class"] != "any"].itertuples(index=False):
        lines.append(
            f"{row[0]} ({row.check}): sensitivity {row.sensitivity:.3f} "
            f"({row.true_pos}/{row.n_positive}), specificity {row.specificity:.3f} "
            f"({row.n_negative - row.false_pos}/{row.n_negative})"
        )
    return lines
