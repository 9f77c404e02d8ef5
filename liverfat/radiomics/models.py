"""Boosted-tree models on ROI features: the training-only feature filter and the AdaBoost /
gradient boosting (scikit-learn) / XGBoost estimators for grades and fat fraction.

The grading schemes are :mod:`liverfat.evaluation.grader`'s (re-exported here for the engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from liverfat.errors import LiverfatError
from liverfat.evaluation.grader import GRADING_SCHEMES, GradingScheme, grading_scheme

__all__ = [
    "GRADING_SCHEMES",
    "MODELS",
    "TASKS",
    "FeatureFilter",
    "GradingScheme",
    "grading_scheme",
    "make_model",
]

MODELS = ("adaboost", "gbdt", "xgboost")
TASKS = ("regression", "classification")


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
) -> Any:
    """An unfitted scikit-learn-style estimator (``n_jobs``: XGBoost threads)."""
    if model not in MODELS:
        raise LiverfatError(f"unknown model {model!r}; choose {', '.join(MODELS)}")
    if task not in TASKS:
        raise LiverfatError(f"unknown task {task!r}; choose {', '.join(TASKS)}")
    classify = task == "classification"
    boosting = {"n_estimators": n_estimators, "learning_rate": learning_rate, "random_state": seed}
    if model == "adaboost":
        from sklearn.ensemble import AdaBoostClassifier, AdaBoostRegressor
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        tree = (DecisionTreeClassifier if classify else DecisionTreeRegressor)(
            max_depth=max_depth, random_state=seed
        )
        cls = AdaBoostClassifier if classify else AdaBoostRegressor
        return cls(estimator=tree, **boosting)
    boosting.update(max_depth=max_depth, subsample=0.8)  # stochastic gradient boosting
    if model == "gbdt":
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

        cls = GradientBoostingClassifier if classify else GradientBoostingRegressor
        return cls(**boosting)
    import xgboost

    cls = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
    return cls(**boosting, n_jobs=n_jobs, tree_method="hist")
