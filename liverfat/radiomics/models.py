"""Boosted-tree models on ROI features: grading schemes, the training-only feature filter, and
the AdaBoost / gradient boosting (scikit-learn) / XGBoost estimators for grades and fat fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from liverfat.errors import LiverfatError

MODELS = ("adaboost", "gbdt", "xgboost")
TASKS = ("regression", "classification")


@dataclass(frozen=True)
class GradingScheme:
    """Steatosis grades from PDFF (%): grade = how many increasing ``cuts_pct`` are reached."""

    name: str
    cuts_pct: tuple[float, ...]
    meaning: str

    def grade(self, pdff_pct: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
        values = np.asarray(pdff_pct, dtype=float)
        if not np.all(np.isfinite(values)):
            raise LiverfatError("cannot grade missing fat fractions")
        return np.searchsorted(np.asarray(self.cuts_pct), values, side="right").astype(int)

    @property
    def n_grades(self) -> int:
        return len(self.cuts_pct) + 1


#: The configurable grading schemes (PDFF cut-offs in %).
GRADING_SCHEMES = {
    "histology": GradingScheme(
        "histology", (5.0, 33.0, 66.0), "histology-style steatosis grades S0-S3 (5 / 33 / 66 %)"
    ),
    "mri_pdff": GradingScheme(
        "mri_pdff", (6.4, 17.4, 22.1), "MRI-PDFF grades 0-3 (Tang et al. 2013: 6.4 / 17.4 / 22.1 %)"
    ),
    "binary": GradingScheme("binary", (5.5,), "steatosis yes/no at 5.5 % PDFF"),
}


def grading_scheme(name_or_cuts: str | Sequence[float]) -> GradingScheme:
    """A named scheme, or a custom one from increasing cut-offs (%)."""
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


#: pyradiomics feature classes that exist only in 3D (dropped from 2D ROI tables).
THREE_D_ONLY_CLASSES = ("shape_",)


@dataclass
class FeatureFilter:
    """Drops constant, 3D-only and near-duplicate features; fitted on training rows only.

    A feature is constant when its standard deviation over the training rows is below
    ``min_std``; of two features with absolute Pearson correlation above ``max_abs_corr`` the
    later one is dropped. Records which subjects it was fitted on (``fitted_subjects_``).
    """

    max_abs_corr: float = 0.98
    min_std: float = 1e-8

    def fit(self, features: pd.DataFrame, subject_ids: Sequence[str]) -> FeatureFilter:
        names = [c for c in features.columns if not any(f"_{p}" in c for p in THREE_D_ONLY_CLASSES)]
        values = features[names].to_numpy(float)
        finite = np.isfinite(values).all(axis=0)
        std = np.where(finite, np.nanstd(values, axis=0), 0.0)
        keep = [n for n, s in zip(names, std, strict=True) if s > self.min_std]
        if keep:
            corr = np.abs(np.corrcoef(features[keep].to_numpy(float), rowvar=False))
            corr = np.atleast_2d(corr)
            chosen: list[int] = []
            for i in range(len(keep)):
                if all(corr[i, j] <= self.max_abs_corr for j in chosen):
                    chosen.append(i)
            keep = [keep[i] for i in chosen]
        if not keep:
            raise LiverfatError("no informative feature left after filtering (all constant?)")
        self.columns_ = keep
        self.fitted_subjects_ = sorted(set(map(str, subject_ids)))
        return self

    def transform(self, features: pd.DataFrame) -> np.ndarray:
        return features[self.columns_].to_numpy(float)


def make_model(
    model: str,
    task: str,
    *,
    n_estimators: int,
    learning_rate: float,
    max_depth: int,
    seed: int,
    n_jobs: int = 1,
):
    """An unfitted scikit-learn-style estimator."""
    if model not in MODELS:
        raise LiverfatError(f"unknown model {model!r}; choose {', '.join(MODELS)}")
    if task not in TASKS:
        raise LiverfatError(f"unknown task {task!r}; choose {', '.join(TASKS)}")
    classify = task == "classification"
    if model == "adaboost":
        from sklearn.ensemble import AdaBoostClassifier, AdaBoostRegressor
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        tree = (DecisionTreeClassifier if classify else DecisionTreeRegressor)(
            max_depth=max_depth, random_state=seed
        )
        cls = AdaBoostClassifier if classify else AdaBoostRegressor
        return cls(
            estimator=tree,
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            random_state=seed,
        )
    if model == "gbdt":
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

        cls = GradientBoostingClassifier if classify else GradientBoostingRegressor
        return cls(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            max_depth=max_depth,
            subsample=0.8,
            random_state=seed,
        )
    import xgboost

    cls = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
    return cls(
        n_estimators=n_estimators,
        learning_rate=learning_rate,
        max_depth=max_depth,
        subsample=0.8,
        random_state=seed,
        n_jobs=n_jobs,
        tree_method="hist",
    )
