"""Steatosis grading schemes, and the metrics of a grader: a classifier that gives each subject
class probabilities over the grades of a scheme (e.g. the radiomics engine's boosted trees).

A scheme's grade of a PDFF (%) is how many of its increasing cut-offs the value reaches (see
:func:`~liverfat.evaluation.classification.steatosis_grade`); the MRI-PDFF and binary schemes use
the thresholds of :mod:`liverfat.evaluation.classification`, defined there once.

The AUC of a grader (:func:`grade_auc`): a binary scheme uses the probability of the higher grade;
a multi-grade scheme the macro mean of one-vs-rest AUCs over the grades present with both classes
(each AUC the Mann-Whitney statistic via mid-ranks, ties counting half). Its interval is a seeded
percentile bootstrap over subjects (:func:`bootstrap_interval`); accuracy's is the Wilson score
interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from liverfat.errors import LiverfatError
from liverfat.evaluation.classification import (
    STEATOSIS_GRADE_THRESHOLDS_PCT,
    STEATOSIS_THRESHOLD_PCT,
    delong_placements,
    steatosis_grade,
    wilson_interval,
)

#: Histology-style cut-offs (%) between steatosis grades S0|S1, S1|S2 and S2|S3.
HISTOLOGY_GRADE_THRESHOLDS_PCT = (5.0, 33.0, 66.0)


@dataclass(frozen=True)
class GradingScheme:
    """Steatosis grades from PDFF (%): grade = how many increasing ``cuts_pct`` are reached."""

    name: str
    cuts_pct: tuple[float, ...]
    meaning: str

    def grade(self, pdff_pct: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
        """Integer grade (0 to ``n_grades - 1``) of each fat fraction (%); all must be finite."""
        values = np.asarray(pdff_pct, dtype=float)
        if not np.all(np.isfinite(values)):
            raise LiverfatError("cannot grade missing fat fractions")
        return steatosis_grade(values, self.cuts_pct)

    @property
    def n_grades(self) -> int:
        return len(self.cuts_pct) + 1


#: The configurable grading schemes (PDFF cut-offs in %).
GRADING_SCHEMES = {
    "histology": GradingScheme(
        "histology",
        HISTOLOGY_GRADE_THRESHOLDS_PCT,
        "histology-style steatosis grades S0-S3 (5 / 33 / 66 %)",
    ),
    "mri_pdff": GradingScheme(
        "mri_pdff",
        STEATOSIS_GRADE_THRESHOLDS_PCT,
        "MRI-PDFF grades 0-3 (Tang et al. 2013: 6.4 / 17.4 / 22.1 %)",
    ),
    "binary": GradingScheme("binary", (STEATOSIS_THRESHOLD_PCT,), "steatosis yes/no at 5.5 % PDFF"),
}


def grading_scheme(name_or_cuts: str | Sequence[float]) -> GradingScheme:
    """A named scheme (:data:`GRADING_SCHEMES`), or a custom one from increasing cut-offs (%)."""
    if isinstance(name_or_cuts, str):
        if name_or_cuts not in GRADING_SCHEMES:
            raise LiverfatError(
                f"unknown grading scheme {name_or_cuts!r}; choose {', '.join(GRADING_SCHEMES)} "
                "or give cut-offs"
            )
        return GRADING_SCHEMES[name_or_cuts]
    cuts = tuple(float(c) for c in name_or_cuts)
    if not cuts or any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise LiverfatError(f"grade cut-offs must increase strictly, got {list(cuts)}")
    return GradingScheme("custom", cuts, f"custom cut-offs {cuts} %")


def grade_auc(grades: ArrayLike, probabilities: np.ndarray) -> float:
    """AUC of class probabilities (n, n_grades) for the true ``grades`` (dimensionless).

    Two grades: the AUC of the higher grade's probability (NaN when one grade only). More: the
    macro mean of one-vs-rest AUCs over the grades with both classes present (NaN if none).
    """
    grades = np.asarray(grades, int)
    if probabilities.shape[1] == 2:
        if np.unique(grades).size < 2:
            return float("nan")
        return delong_placements(probabilities[grades == 1, 1], probabilities[grades != 1, 1])[0]
    aucs = [
        delong_placements(probabilities[grades == g, g], probabilities[grades != g, g])[0]
        for g in range(probabilities.shape[1])
        if 0 < (grades == g).sum() < grades.size
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def bootstrap_interval(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*arrays)``, resampling subjects (rows).

    Each of ``n_boot`` replicates draws the same row indices (with replacement, from a generator
    seeded by ``seed``) for every array; replicates where the metric is not finite are left out.
    NaN, NaN when none is finite.
    """
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(n_boot):
        index = rng.integers(0, n, n)
        value = metric(*(a[index] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def grade_probability_metrics(
    grades: ArrayLike,
    probabilities: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """AUC and accuracy of a grader with their intervals.

    Parameters
    ----------
    grades:
        True grade (integer, 0 to n_grades - 1) of each subject.
    probabilities:
        Class probabilities, shape (subjects, n_grades); the predicted grade is the most probable.
    n_boot, seed:
        Bootstrap replicates and seed of the AUC interval (:func:`bootstrap_interval`).
    confidence:
        Level of both intervals.

    Returns
    -------
    dict
        ``n, auc, auc_lower, auc_upper, accuracy, accuracy_lower, accuracy_upper`` (proportions,
        0-1; accuracy's interval is Wilson's).
    """
    grades = np.asarray(grades, int)
    predicted = probabilities.argmax(axis=1)
    correct = int((predicted == grades).sum())
    low, high = bootstrap_interval(
        grade_auc, grades, probabilities, n_boot=n_boot, seed=seed, confidence=confidence
    )
    acc_low, acc_high = wilson_interval(correct, grades.size, confidence=confidence)
    return {
        "n": int(grades.size),
        "auc": grade_auc(grades, probabilities),
        "auc_lower": low,
        "auc_upper": high,
        "accuracy": correct / grades.size if grades.size else float("nan"),
        "accuracy_lower": acc_low,
        "accuracy_upper": acc_high,
    }


def delong_test(positive: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> dict[str, float]:
    """DeLong's paired test of two correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988).

    Both scores belong to the same subjects; ``positive`` says which subjects are positive.
    The covariance of the two AUCs comes from the placement values of each score
    (:func:`~liverfat.evaluation.classification.delong_placements`); the test is two-sided on
    ``z = (auc_a - auc_b) / se``. Identical scores give ``difference = se = 0`` and ``p = 1``.

    Returns
    -------
    dict
        ``n_positive, n_negative, auc_a, auc_b, difference, se, z, p`` (AUCs dimensionless).
    """
    from scipy import stats

    positive = np.asarray(positive, bool)
    a, b = np.asarray(score_a, float), np.asarray(score_b, float)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise LiverfatError(
            f"DeLong's test needs 2+ positive and 2+ negative subjects, got {m} and {n}"
        )
    placements = [delong_placements(s[positive], s[~positive]) for s in (a, b)]
    aucs = np.array([p[0] for p in placements])
    s10 = np.cov(np.vstack([p[1] for p in placements]))
    s01 = np.cov(np.vstack([p[2] for p in placements]))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    difference = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0:
        z, p = (0.0, 1.0) if difference == 0.0 else (float("inf"), 0.0)
    else:
        z = difference / se
        p = float(2 * stats.norm.sf(abs(z)))
    return {
        "n_positive": m,
        "n_negative": n,
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": difference,
        "se": se,
        "z": float(z),
        "p": p,
    }
