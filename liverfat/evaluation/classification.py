"""Steatosis detection and grading from a continuous fat fraction (PDFF in %).

The first method of a pair (``a``) is the truth: a subject is *positive* (steatosis) when its
value is at or above a threshold (5.5 % PDFF by default, the NAFLD cut-off used in the UK Biobank
liver-fat studies); the second method's (``b``) continuous value is the score for ROC analysis
and its thresholded value the call for sensitivity, specificity, accuracy and precision.

Grades count the grade thresholds at or below the value; the
default thresholds 6.4, 17.4 and 22.1 % are the MRI-PDFF cut-offs of Tang et al. (2013) for
histological grades 0-3. Confidence intervals come from a seeded subject-level bootstrap.

References
----------
Tang A, et al. (2013). Nonalcoholic fatty liver disease: MR imaging of liver proton density fat
fraction to assess hepatic steatosis. Radiology 267(2):422-431.
DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more correlated
receiver operating characteristic curves: a nonparametric approach. Biometrics 44(3):837-845.
Wilson EB (1927). Probable inference, the law of succession, and statistical inference. JASA
22(158):209-212.
Cohen J (1968). Weighted kappa. Psychol Bull 70(4):213-220.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from liverfat.evaluation.agreement import AgreementError, paired

#: PDFF (%) at or above which a liver counts as steatotic.
STEATOSIS_THRESHOLD_PCT = 5.5
#: MRI-PDFF (%) cut-offs between steatosis grades 0|1, 1|2 and 2|3 (Tang et al. 2013).
STEATOSIS_GRADE_THRESHOLDS_PCT = (6.4, 17.4, 22.1)


def wilson_interval(successes: int, total: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / total`` (NaN, NaN when total is 0)."""
    if total <= 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / total
    denominator = 1.0 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * np.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def cohen_kappa(
    a: ArrayLike,
    b: ArrayLike,
    *,
    weights: str | None = None,
    labels: Sequence[int] | None = None,
) -> float:
    """Cohen's kappa of two categorical ratings (dimensionless).

    Parameters
    ----------
    a, b:
        Category labels (integers, e.g. steatosis grades), same length.
    weights:
        ``None`` (unweighted), ``"linear"`` or ``"quadratic"`` disagreement weights (Cohen 1968),
        for ordered categories.
    labels:
        The ordered categories; default the sorted union of both ratings.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        raise AgreementError("kappa needs two non-empty ratings of equal length")
    cats = np.asarray(sorted(set(a.tolist()) | set(b.tolist())) if labels is None else labels)
    k = cats.size
    table = confusion_counts(a, b, cats)
    observed = table / table.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    elif weights == "quadratic":
        w = ((i - j) ** 2).astype(float)
    else:
        raise AgreementError(f"unknown kappa weights {weights!r} (None, 'linear', 'quadratic')")
    denominator = (w * expected).sum()
    if denominator == 0:
        return float("nan")
    return float(1.0 - (w * observed).sum() / denominator)


def confusion_counts(reference: ArrayLike, predicted: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Counts, rows = reference category, columns = predicted category, in ``labels`` order."""
    labels = np.asarray(labels)
    index = {value: i for i, value in enumerate(labels.tolist())}
    table = np.zeros((labels.size, labels.size), dtype=int)
    for r, p in zip(np.asarray(reference).tolist(), np.asarray(predicted).tolist(), strict=True):
        if r in index and p in index:
            table[index[r], index[p]] += 1
    return table


def binary_metrics(
    reference: ArrayLike | pd.Series,
    predicted: ArrayLike | pd.Series,
    *,
    threshold: float = STEATOSIS_THRESHOLD_PCT,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Detection of steatosis (value >= ``threshold``) by a method against the reference.

    Parameters
    ----------
    reference, predicted:
        Paired continuous values (PDFF in %); Series are aligned on subject_id.
    threshold:
        Cut-off in the data unit (%); a value equal to it counts as positive.
    confidence:
        Level of the Wilson intervals of sensitivity and specificity.

    Returns
    -------
    dict
        Counts ``n, tp, fp, tn, fn``; proportions ``sensitivity`` (with ``sensitivity_lower``/
        ``_upper``), ``specificity`` (with interval), ``ppv``, ``npv``, ``accuracy``,
        ``balanced_accuracy``, ``f1`` and Cohen's ``kappa``. NaN where undefined.
    """
    r, p = paired(reference, predicted)
    pos_p = p >= threshold
    pos_r = r >= threshold
    tp = int(np.sum(pos_p & pos_r))
    fp = int(np.sum(pos_p & ~pos_r))
    tn = int(np.sum(~pos_p & ~pos_r))
    fn = int(np.sum(~pos_p & pos_r))
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    sens_ci = wilson_interval(tp, tp + fn, confidence=confidence)
    spec_ci = wilson_interval(tn, tn + fp, confidence=confidence)
    return {
        "threshold": float(threshold),
        "n": int(p.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sens,
        "sensitivity_lower": sens_ci[0],
        "sensitivity_upper": sens_ci[1],
        "specificity": spec,
        "specificity_lower": spec_ci[0],
        "specificity_upper": spec_ci[1],
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, p.size),
        "balanced_accuracy": (sens + spec) / 2.0,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "kappa": cohen_kappa(pos_r, pos_p, labels=[False, True]) if p.size else float("nan"),
    }


@dataclass(frozen=True)
class Roc:
    """A receiver operating characteristic curve and its area.

    Attributes
    ----------
    auc, se, lower, upper:
        Area under the curve, its DeLong standard error and normal-theory confidence interval
        (clipped to [0, 1]); dimensionless.
    n_positive, n_negative:
        Subjects with and without the condition.
    fpr, tpr, thresholds:
        The curve's points, from the highest score down (thresholds in the score's unit).
    """

    auc: float
    se: float
    lower: float
    upper: float
    n_positive: int
    n_negative: int
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)


def delong_placements(
    positives: ArrayLike, negatives: ArrayLike
) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's placement values ``(auc, v10, v01)`` via mid-ranks (O(N log N)).

    ``v10[i]`` is the fraction of negatives scored below positive ``i`` (ties count half) and
    ``v01[j]`` the fraction of positives scored above negative ``j``.
    """
    x = np.asarray(positives, dtype=float)
    y = np.asarray(negatives, dtype=float)
    m, n = x.size, y.size
    combined = stats.rankdata(np.concatenate([x, y]))
    rank_x = stats.rankdata(x)
    rank_y = stats.rankdata(y)
    v10 = (combined[:m] - rank_x) / n
    v01 = 1.0 - (combined[m:] - rank_y) / m
    return float(v10.mean()), v10, v01


def roc_analysis(
    reference: ArrayLike | pd.Series,
    score: ArrayLike | pd.Series,
    *,
    threshold: float = STEATOSIS_THRESHOLD_PCT,
    confidence: float = 0.95,
) -> Roc:
    """ROC of a method's continuous value as a score for the reference status.

    Parameters
    ----------
    reference:
        The reference values; positive when >= ``threshold`` (%).
    score:
        The method's values (PDFF in %), higher meaning more likely steatotic.
    threshold:
        The reference cut-off in %.
    confidence:
        Level of the DeLong interval of the AUC.
    """
    r, s = paired(reference, score)
    positive = r >= threshold
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise AgreementError(
            f"ROC needs both classes; reference has {m} subject(s) >= {threshold:g} and {n} below"
        )
    auc, v10, v01 = delong_placements(s[positive], s[~positive])
    var = (v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n
    se = float(np.sqrt(var))
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    fpr, tpr, thresholds = roc_curve(s, positive)
    return Roc(
        auc=auc,
        se=se,
        lower=max(0.0, auc - z * se),
        upper=min(1.0, auc + z * se),
        n_positive=m,
        n_negative=n,
        fpr=fpr,
        tpr=tpr,
        thresholds=thresholds,
    )


def roc_curve(score: ArrayLike, positive: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct score, from (0, 0) to (1, 1).

    The first threshold is ``inf`` (nothing called positive).
    """
    s = np.asarray(score, dtype=float)
    y = np.asarray(positive, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last_of_run]]


def steatosis_grade(
    values: ArrayLike, thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT
) -> np.ndarray:
    """Grade of each value: how many ``thresholds`` (%, increasing) it reaches.

    With the default thresholds, PDFF < 6.4 % is grade 0, 6.4-17.4 % grade 1, 17.4-22.1 % grade
    2 and >= 22.1 % grade 3. Values must be finite.
    """
    cuts = np.asarray(thresholds, dtype=float)
    if cuts.size == 0 or np.any(np.diff(cuts) <= 0):
        raise AgreementError(f"grade thresholds must increase strictly, got {list(thresholds)}")
    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v)):
        raise AgreementError("cannot grade missing or infinite values")
    return np.searchsorted(cuts, v, side="right").astype(int)


def grading_metrics(
    reference: ArrayLike | pd.Series,
    predicted: ArrayLike | pd.Series,
    *,
    thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT,
) -> dict[str, object]:
    """Agreement of steatosis grades derived from a method and from the reference.

    Parameters
    ----------
    reference, predicted:
        Paired continuous values (PDFF in %); the reference gives the true grade.
    thresholds:
        Increasing cut-offs in % between consecutive grades.

    Returns
    -------
    dict
        ``n``; ``accuracy`` (exact grade), ``within_one`` (off by at most one grade);
        ``kappa``, ``kappa_linear`` and ``kappa_quadratic`` (Cohen, unweighted and weighted);
        ``confusion``, a DataFrame of counts (rows reference grade, columns predicted grade);
        ``ovr_auc``, per grade the one-vs-rest AUC of the predicted value (see
        :func:`one_vs_rest_auc`), and ``ovr_auc_macro``, their mean over grades with both classes.
    """
    r, p = paired(reference, predicted)
    labels = list(range(len(thresholds) + 1))
    gp = steatosis_grade(p, thresholds)
    gr = steatosis_grade(r, thresholds)
    counts = confusion_counts(gr, gp, labels)
    confusion = pd.DataFrame(
        counts,
        index=pd.Index(labels, name="reference grade"),
        columns=pd.Index(labels, name="predicted grade"),
    )
    n = int(p.size)
    return {
        "n": n,
        "accuracy": _ratio(int(np.sum(gp == gr)), n),
        "within_one": _ratio(int(np.sum(np.abs(gp - gr) <= 1)), n),
        "kappa": cohen_kappa(gr, gp, labels=labels) if n else float("nan"),
        "kappa_linear": cohen_kappa(gr, gp, weights="linear", labels=labels) if n else float("nan"),
        "kappa_quadratic": (
            cohen_kappa(gr, gp, weights="quadratic", labels=labels) if n else float("nan")
        ),
        "confusion": confusion,
        **_ovr(r, p, thresholds),
    }


def _ovr(r: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> dict[str, object]:
    aucs = one_vs_rest_auc(r, p, thresholds=thresholds) if r.size else {}
    finite = [v for v in aucs.values() if np.isfinite(v)]
    return {"ovr_auc": aucs, "ovr_auc_macro": float(np.mean(finite)) if finite else float("nan")}


def grade_scores(values: ArrayLike, thresholds: Sequence[float]) -> np.ndarray:
    """Per-grade scores of continuous values, shape (n, n_grades), for one-vs-rest ROC.

    The lowest grade scores ``-value``, the highest ``+value``, and each middle grade minus the
    distance (data unit) to the midpoint of its interval, so a value scores highest for the grade
    it is most typical of.
    """
    v = np.asarray(values, dtype=float)
    cuts = np.asarray(thresholds, dtype=float)
    columns = [-v]
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        columns.append(-np.abs(v - (lo + hi) / 2.0))
    columns.append(v)
    return np.column_stack(columns)


def one_vs_rest_auc(
    reference: ArrayLike | pd.Series,
    predicted: ArrayLike | pd.Series,
    *,
    thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT,
) -> dict[int, float]:
    """AUC of each grade against all others, truth from the reference's grade.

    The score of grade g is :func:`grade_scores` of the predicted value (for the lowest and
    highest grade that is the value itself, so those AUCs equal the plain threshold ROC). NaN
    for a grade that no reference subject (or every one) has.
    """
    r, p = paired(reference, predicted)
    truth = steatosis_grade(r, thresholds)
    scores = grade_scores(p, thresholds)
    out: dict[int, float] = {}
    for g in range(len(thresholds) + 1):
        positive = truth == g
        if positive.all() or not positive.any():
            out[g] = float("nan")
        else:
            out[g] = delong_placements(scores[positive, g], scores[~positive, g])[0]
    return out


#: Statistics bootstrapped by :func:`classification_metrics`.
BOOTSTRAP_KEYS = ("auc", "sensitivity", "specificity", "accuracy", "precision")


def _bootstrap_stats(
    counts: np.ndarray, positive: np.ndarray, called: np.ndarray, score: np.ndarray
) -> dict[str, np.ndarray]:
    """Statistics for each row of subject weights ``counts`` (replicates x subjects)."""
    w = counts.astype(float)
    tp = w @ (positive & called)
    fn = w @ (positive & ~called)
    tn = w @ (~positive & ~called)
    fp = w @ (~positive & called)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "accuracy": (tp + tn) / w.sum(axis=1),
            "precision": tp / (tp + fp),
        }
        # Weighted Mann-Whitney AUC: subjects sorted by score, ties grouped.
        order = np.argsort(score, kind="mergesort")
        s = score[order]
        starts = np.r_[0, np.flatnonzero(np.diff(s) != 0) + 1]
        group = np.cumsum(np.r_[0, np.diff(s) != 0])
        neg_w = np.add.reduceat(w[:, order] * (~positive[order]), starts, axis=1)
        below = np.cumsum(neg_w, axis=1) - neg_w
        credit = below[:, group] + 0.5 * neg_w[:, group]
        pos_w = w[:, order] * positive[order]
        w_pos, w_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
        out["auc"] = (pos_w * credit).sum(axis=1) / (w_pos * w_neg)
    return out


def classification_metrics(
    a: ArrayLike | pd.Series,
    b: ArrayLike | pd.Series,
    *,
    threshold: float = STEATOSIS_THRESHOLD_PCT,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Steatosis detection by method ``b`` with method ``a`` as truth, with bootstrap intervals.

    Parameters
    ----------
    a, b:
        Paired continuous values (PDFF in %); ``a`` >= ``threshold`` is the truth, ``b`` the
        score (ROC) and, thresholded at the same value, the call.
    threshold:
        Cut-off in the data unit (%); a value equal to it is positive.
    n_boot:
        Bootstrap replicates (subjects resampled with replacement); 0 for no intervals.
    seed:
        Seed of the bootstrap's random generator (results are reproducible).
    confidence:
        Level of the percentile intervals.

    Returns
    -------
    dict
        ``n``, ``n_positive``, ``n_negative``; for each of :data:`BOOTSTRAP_KEYS` the point
        estimate and ``<key>_lower``/``<key>_upper`` (proportions, 0-1); ``auc_se_delong``;
        ``note`` saying why a value is NaN (one class only, N < 3).
    """
    r, p = paired(a, b)
    n = int(r.size)
    out: dict[str, Any] = {"n": n, "threshold": float(threshold)}
    for key in BOOTSTRAP_KEYS:
        out.update({key: float("nan"), f"{key}_lower": float("nan"), f"{key}_upper": float("nan")})
    out["auc_se_delong"] = float("nan")
    positive = r >= threshold
    called = p >= threshold
    out["n_positive"], out["n_negative"] = int(positive.sum()), int((~positive).sum())
    notes = []
    if n < 3:
        out["note"] = f"N = {n} < 3 pairs: no classification statistics"
        return out
    point = {k: float(v[0]) for k, v in
             _bootstrap_stats(np.ones((1, n)), positive, called, p).items()}  # fmt: skip
    out.update(point)
    if positive.all() or not positive.any():
        notes.append(f"one class only ({out['n_positive']} of {n} >= {threshold:g}): AUC undefined")
        out["auc"] = float("nan")
    else:
        out["auc_se_delong"] = roc_analysis(r, p, threshold=threshold).se
    if not called.any():
        notes.append("no positive calls: precision undefined")
    if n_boot > 0:
        replicates = _bootstrap_replicates(positive, called, p, n_boot=n_boot, seed=seed)
        alpha = (1.0 - confidence) / 2.0
        for key in BOOTSTRAP_KEYS:
            values = replicates[key][np.isfinite(replicates[key])]
            if np.isfinite(out[key]) and values.size:
                low, high = np.quantile(values, [alpha, 1.0 - alpha])
                out[f"{key}_lower"], out[f"{key}_upper"] = float(low), float(high)
    out["note"] = "; ".join(notes)
    return out


def _bootstrap_replicates(
    positive: np.ndarray, called: np.ndarray, score: np.ndarray, *, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """:data:`BOOTSTRAP_KEYS` over ``n_boot`` subject resamples (seeded; drawn 200 at a time)."""
    n = positive.size
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n_boot, 200):
        size = min(200, n_boot - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size)
        chunks.append(_bootstrap_stats(counts, positive, called, score))
    return {key: np.concatenate([c[key] for c in chunks]) for key in BOOTSTRAP_KEYS}
