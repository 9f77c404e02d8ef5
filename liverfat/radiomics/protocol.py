"""The published protocol: a stratified, seeded train/test split; per model, AUC and accuracy with
95% CIs on the training and test sets; regression MAE / R^2; Spearman correlation of grade with
covariates, overall and by sex.

AUC: binary schemes use the probability of the higher grade; multi-grade schemes the macro mean
of one-vs-rest AUCs over grades present with both classes. Its 95% CI is a seeded percentile
bootstrap over subjects; accuracy's is the Wilson score interval.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.evaluation.classification import wilson_interval
from liverfat.radiomics.engine import RadiomicsEngine
from liverfat.radiomics.models import MODELS


def grade_auc(grades: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary AUC (two grades) or macro one-vs-rest AUC over grades with both classes present."""
    from sklearn.metrics import roc_auc_score

    grades = np.asarray(grades, int)
    if probabilities.shape[1] == 2:
        if np.unique(grades).size < 2:
            return float("nan")
        return float(roc_auc_score(grades, probabilities[:, 1]))
    aucs = [
        roc_auc_score(grades == g, probabilities[:, g])
        for g in range(probabilities.shape[1])
        if 0 < (grades == g).sum() < grades.size
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def bootstrap_interval(
    metric, *arrays: np.ndarray, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*arrays)`` resampling subjects (rows)."""
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


def classification_metrics(
    grades: np.ndarray, probabilities: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """``n, auc, auc_lower, auc_upper, accuracy, accuracy_lower, accuracy_upper``."""
    grades = np.asarray(grades, int)
    predicted = probabilities.argmax(axis=1)
    correct = int((predicted == grades).sum())
    auc = grade_auc(grades, probabilities)
    low, high = bootstrap_interval(grade_auc, grades, probabilities, n_boot=n_boot, seed=seed)
    acc_low, acc_high = wilson_interval(correct, grades.size)
    return {
        "n": int(grades.size),
        "auc": auc,
        "auc_lower": low,
        "auc_upper": high,
        "accuracy": correct / grades.size if grades.size else float("nan"),
        "accuracy_lower": acc_low,
        "accuracy_upper": acc_high,
    }


def regression_metrics(reference: pd.Series, predicted: pd.Series) -> dict[str, float]:
    """``n``, mean absolute error (values' unit) and R^2 of ``predicted`` vs ``reference``."""
    from sklearn.metrics import mean_absolute_error, r2_score

    both = pd.concat([reference.rename("r"), predicted.rename("p")], axis=1).dropna()
    if len(both) < 2:
        return {"n": len(both), "mae": float("nan"), "r2": float("nan")}
    return {
        "n": len(both),
        "mae": float(mean_absolute_error(both["r"], both["p"])),
        "r2": float(r2_score(both["r"], both["p"])),
    }


def train_test_subjects(
    reference: pd.Series, grades: np.ndarray, test_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A seeded split of subject ids, stratified on grade where every grade has 2+ subjects."""
    from sklearn.model_selection import train_test_split

    ids = np.asarray(reference.index, dtype=str)
    counts = np.bincount(grades)
    stratify = grades if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(
        ids, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return sorted(train.tolist()), sorted(test.tolist())


def covariate_spearman(
    grades: pd.Series,
    covariates: pd.DataFrame,
    columns: Sequence[str] = ("age", "sex", "bmi"),
) -> pd.DataFrame:
    """Spearman rho (and p) of grade with each covariate, over all subjects and by sex.

    Sex is coded 0 female, 1 male; within a sex group the sex column itself is skipped.
    """
    data = covariates.join(grades.rename("grade"), how="inner")
    groups = [("all", data)]
    if "sex" in data.columns:
        groups += [("female", data[data["sex"] == 0]), ("male", data[data["sex"] == 1])]
    rows = []
    for group, frame in groups:
        for column in columns:
            if column not in frame.columns or (group != "all" and column == "sex"):
                continue
            pair = frame[["grade", column]].dropna()
            if len(pair) < 3 or pair.nunique().min() < 2:
                rho, p = float("nan"), float("nan")
            else:
                rho, p = stats.spearmanr(pair["grade"], pair[column])
            rows.append(
                {
                    "group": group,
                    "covariate": column,
                    "n": len(pair),
                    "rho": float(rho),
                    "p": float(p),
                }
            )
    return pd.DataFrame(rows)


@dataclass
class ProtocolResult:
    """Tables of one protocol run (see :func:`run_protocol`)."""

    classification: pd.DataFrame
    regression: pd.DataFrame
    spearman: pd.DataFrame
    train_subjects: list[str]
    test_subjects: list[str]


def run_protocol(
    manifest: Manifest,
    *,
    models: Sequence[str] = MODELS,
    test_fraction: float = 0.3,
    seed: int = 0,
    truth: pd.Series | None = None,
    n_boot: int = 1000,
    **engine_settings,
) -> ProtocolResult:
    """Train/test evaluation of every model as grader and as fat-fraction regressor.

    Parameters
    ----------
    manifest:
        Subjects with a reference ``target`` (others are ignored).
    truth:
        Optional true fat fraction (%) by subject id, e.g. the phantom's, for MAE/R^2 vs truth.
    engine_settings:
        Passed to :class:`RadiomicsEngine` (``target``, ``grading``, ROI, augmentation, boosting).
    """
    if not engine_settings.get("work_dir"):  # features are shared by the six fits via a cache
        with tempfile.TemporaryDirectory(prefix="liverfat-radiomics-") as cache:
            return run_protocol(
                manifest,
                models=models,
                test_fraction=test_fraction,
                seed=seed,
                truth=truth,
                n_boot=n_boot,
                **{**engine_settings, "work_dir": cache},
            )
    probe = RadiomicsEngine(**engine_settings)
    reference = manifest.target(probe.target).dropna()
    if len(reference) < 10:
        raise LiverfatError(
            f"the protocol needs 10+ subjects with {probe.target}, got {len(reference)}"
        )
    scheme = probe.scheme
    grades = pd.Series(scheme.grade(reference.to_numpy()), index=reference.index)
    train, test = train_test_subjects(reference, grades.to_numpy(), test_fraction, seed)
    train_m, test_m = manifest.select(subject_ids=train), manifest.select(subject_ids=test)
    class_rows, reg_rows = [], []
    for model in models:
        for task in ("classification", "regression"):
            engine = RadiomicsEngine(
                **{**engine_settings, "model": model, "task": task, "seed": seed}
            )
            engine.fit(train_m)
            for split, part in (("train", train_m), ("test", test_m)):
                scores, _ = engine.predict_scores(part)
                if task == "classification":
                    p = scores[[f"p_grade{k}" for k in range(scheme.n_grades)]].to_numpy()
                    g = grades.loc[scores.index].to_numpy()
                    class_rows.append(
                        {
                            "model": model,
                            "set": split,
                            **classification_metrics(g, p, n_boot=n_boot, seed=seed),
                        }
                    )
                else:
                    row = {"model": model, "set": split}
                    for name, ref in (("reference", reference), ("truth", truth)):
                        if ref is not None:
                            m = regression_metrics(ref, scores["value"])
                            row.update(
                                {
                                    f"n_{name}": m["n"],
                                    f"mae_vs_{name}": m["mae"],
                                    f"r2_vs_{name}": m["r2"],
                                }
                            )
                    reg_rows.append(row)
    covariates = manifest.subjects.set_index("subject_id")
    spearman = covariate_spearman(
        grades, covariates[[c for c in ("age", "sex", "bmi") if c in covariates.columns]]
    )
    return ProtocolResult(pd.DataFrame(class_rows), pd.DataFrame(reg_rows), spearman, train, test)
