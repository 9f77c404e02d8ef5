"""The radiomics engine: liver ROIs -> pyradiomics features -> boosted trees.

Follows the engine contract of docs/design.md ("Engines").

Training rows are ROIs (original plus augmented copies of the training subjects only); a subject's
prediction aggregates its ROIs (mean value for regression, mean class probabilities for grading).
The feature filter and the scaler are fitted on training rows only, and every fitted object
records the subjects whose rows it saw, so leakage is checkable.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverfat.data.folds import Folds, resolve_folds, training_ids
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import (
    PredictionsTable,
    failed_row,
    one_line,
    prediction_row,
    run_info,
)
from liverfat.engine import Engine
from liverfat.errors import LiverfatError, subject_message
from liverfat.parallel import EXECUTORS, map_subjects
from liverfat.radiomics.features import (
    KEY_COLUMNS,
    AugmentSettings,
    ExtractionJob,
    load_parameters,
    subject_features,
)
from liverfat.radiomics.models import TASKS, FeatureFilter, grading_scheme, make_model
from liverfat.radiomics.rois import RoiSettings

METHOD = "radiomics"


def _extract_original(job: ExtractionJob) -> pd.DataFrame:
    return subject_features(job, augmented=False)


def _extract_augmented(job: ExtractionJob) -> pd.DataFrame:
    return subject_features(job, augmented=True)


class RadiomicsEngine(Engine):
    """ROI radiomics with AdaBoost, gradient boosting or XGBoost.

    Parameters
    ----------
    target:
        Manifest target holding the reference fat fraction (%).
    task:
        ``regression`` (predicts the target in %) or ``classification`` (predicts the steatosis
        grade of ``grading``; the predictions table's target is ``<target>_grade``).
    model:
        ``adaboost``, ``gbdt`` or ``xgboost``.
    grading:
        Grading scheme name (``histology`` 5/33/66 %, ``mri_pdff`` 6.4/17.4/22.1 %, ``binary``
        5.5 %) or a list of increasing cut-offs (%).
    channels:
        Images the features come from: ``fat_fraction`` and optionally ``water`` and ``fat``.
    n_rois, n_right, roi_size, border_margin_mm, outlier_mads:
        ROI placement (see :mod:`liverfat.radiomics.rois`); ``roi_size`` in pixels.
    augment_copies, max_shift_px, noise_fraction:
        Augmented copies per training ROI and their settings (see
        :class:`~liverfat.radiomics.features.AugmentSettings`); 0 copies disables augmentation.
    n_estimators, learning_rate, max_depth:
        Boosting settings.
    max_abs_corr:
        Near-duplicate threshold of the feature filter.
    params_file:
        A radiomics parameter file; None uses the shipped ``liver_roi_v1.yaml``.
    work_dir:
        Resumable state: features are cached per subject in ``work_dir/features`` (None: no
        cache), so a rerun, the folds and the final fit extract each subject once.
    roi_dir:
        Where each subject's ROIs are saved for review (None: not saved).
    executor, n_workers:
        How subjects are processed (see :func:`liverfat.parallel.map_subjects`).
    seed:
        Seeds augmentation and the models (the folds come from ``cross_validate``'s seed).
    """

    def __init__(
        self,
        *,
        target: str = "liver_pdff_pct",
        task: str = "regression",
        model: str = "xgboost",
        grading: str | list[float] = "mri_pdff",
        channels: tuple[str, ...] | list[str] = ("fat_fraction",),
        n_rois: int = 6,
        n_right: int = 4,
        roi_size: int = 16,
        border_margin_mm: float = 5.0,
        outlier_mads: float = 3.0,
        augment_copies: int = 8,
        max_shift_px: int = 2,
        noise_fraction: float = 0.25,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        max_abs_corr: float = 0.98,
        params_file: str | None = None,
        work_dir: str | None = None,
        roi_dir: str | None = None,
        executor: str = "processes",
        n_workers: int | None = 2,
        seed: int = 0,
    ) -> None:
        self.target = target
        self.task = task
        self.model = model
        self.grading = grading
        self.channels = channels
        self.n_rois = n_rois
        self.n_right = n_right
        self.roi_size = roi_size
        self.border_margin_mm = border_margin_mm
        self.outlier_mads = outlier_mads
        self.augment_copies = augment_copies
        self.max_shift_px = max_shift_px
        self.noise_fraction = noise_fraction
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.max_abs_corr = max_abs_corr
        self.params_file = params_file
        self.work_dir = work_dir
        self.roi_dir = roi_dir
        self.executor = executor
        self.n_workers = n_workers
        self.seed = seed
        self._validate()

    # Parameters --------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.task not in TASKS:
            raise LiverfatError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        make_model(self.model, self.task, n_estimators=1, learning_rate=0.1, max_depth=1, seed=0)
        grading_scheme(self.grading if isinstance(self.grading, str) else list(self.grading))
        unknown = set(self.channels) - {"fat_fraction", "water", "fat"}
        if unknown or "fat_fraction" not in self.channels:
            raise LiverfatError(
                "channels must include fat_fraction and be among fat_fraction, water, fat; "
                f"got {list(self.channels)}"
            )
        if self.executor not in EXECUTORS:
            raise LiverfatError(f"executor must be one of {', '.join(EXECUTORS)}")
        self._roi_settings()
        self._augment_settings()

    def _roi_settings(self) -> RoiSettings:
        return RoiSettings(
            n_rois=self.n_rois,
            n_right=self.n_right,
            size=self.roi_size,
            border_margin_mm=self.border_margin_mm,
            outlier_mads=self.outlier_mads,
        )

    def _augment_settings(self) -> AugmentSettings:
        return AugmentSettings(
            n_copies=self.augment_copies,
            max_shift_px=self.max_shift_px,
            noise_fraction=self.noise_fraction,
        )

    @property
    def scheme(self):
        return grading_scheme(self.grading if isinstance(self.grading, str) else list(self.grading))

    @property
    def output_target(self) -> str:
        return self.target if self.task == "regression" else f"{self.target}_grade"

    # Features ----------------------------------------------------------------------------------
    def _jobs(self, manifest: Manifest) -> list[ExtractionJob]:
        params = load_parameters(self.params_file)
        return [
            ExtractionJob(
                subject=manifest.select(subject_ids=[sid]),
                channels=tuple(self.channels),
                params=params,
                rois=self._roi_settings(),
                augment=self._augment_settings(),
                seed=self.seed,
                cache_dir=self.work_path("features"),
                roi_dir=self.roi_dir,
            )
            for sid in manifest.subject_ids
        ]

    def features(
        self, manifest: Manifest, *, augmented: bool = False
    ) -> tuple[pd.DataFrame, dict[str, str]]:
        """ROI feature rows of every subject, and ``{subject_id: error}`` for those that failed."""
        fn = _extract_augmented if augmented else _extract_original
        frames, failures = [], {}
        label = "radiomics: augmented ROIs" if augmented else "radiomics: ROI features"
        for outcome in map_subjects(
            fn,
            self._jobs(manifest),
            executor=self.executor,
            n_workers=self.n_workers,
            progress=label if len(manifest) > 4 else None,
        ):
            sid = outcome.item.subject_id
            if outcome.ok:
                frames.append(outcome.value)
            else:
                failures[sid] = subject_message(sid, outcome.error)
        frame = (
            pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=KEY_COLUMNS)
        )
        if len(frame):
            frame["subject_id"] = frame["subject_id"].astype(str)
            # Workers finish in any order: sort so every executor trains on the same matrix.
            order = ["subject_id", "roi", "augmentation"]
            frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
        return frame, failures

    # Fitting -----------------------------------------------------------------------------------
    def fit(self, manifest: Manifest) -> RadiomicsEngine:
        """Learn from every subject of ``manifest`` that has a reference ``target``."""
        start = time.perf_counter()
        reference = manifest.target(self.target).dropna()
        if reference.empty:
            raise LiverfatError(f"{manifest.path}: no subject has a reference {self.target}")
        labelled = manifest.select(subject_ids=reference.index)
        base, failures = self.features(labelled)
        augmented = pd.DataFrame(columns=KEY_COLUMNS)
        if self.augment_copies:
            ok = labelled.select(subject_ids=sorted(set(base["subject_id"])))
            augmented, more = self.features(ok, augmented=True)
            failures.update(more)
        self._fit_rows(base, augmented, reference)
        self.failed_subjects_ = failures
        self.timings_s_ = {"fit": round(time.perf_counter() - start, 3)}
        return self

    def _fit_rows(self, base: pd.DataFrame, augmented: pd.DataFrame, reference: pd.Series) -> None:
        rows = pd.concat([base, augmented], ignore_index=True) if len(augmented) else base
        rows = rows[rows["subject_id"].isin(reference.index)].reset_index(drop=True)
        if rows.empty:
            raise LiverfatError("no training subject gave ROI features (see the failures)")
        self.feature_columns_ = [c for c in rows.columns if c not in KEY_COLUMNS]
        y = reference.loc[rows["subject_id"]].to_numpy(float)
        self.training_subjects_ = sorted(set(rows["subject_id"]))
        self.augmented_subjects_ = sorted(set(rows.loc[rows["augmentation"] > 0, "subject_id"]))
        self.filter_ = FeatureFilter(max_abs_corr=self.max_abs_corr).fit(
            rows[self.feature_columns_], rows["subject_id"]
        )
        self._train_x = self.filter_.transform(rows)
        self._train_y = y if self.task == "regression" else self.scheme.grade(y).astype(float)
        self._fit_estimator()

    def _fit_estimator(self) -> None:
        from sklearn.preprocessing import StandardScaler

        self.scaler_ = StandardScaler().fit(self._train_x)
        x = self.scaler_.transform(self._train_x)
        y = self._train_y
        if self.task == "classification":
            self.classes_ = np.unique(y).astype(int)
            if self.classes_.size < 2:
                raise LiverfatError(
                    f"all training subjects have grade {self.classes_[0]}; "
                    "grading needs at least two grades"
                )
            y = np.searchsorted(self.classes_, y.astype(int))
        self.estimator_ = make_model(
            self.model,
            self.task,
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            seed=self.seed,
        ).fit(x, y)

    # Prediction --------------------------------------------------------------------------------
    def _roi_scores(self, rows: pd.DataFrame) -> np.ndarray:
        x = self.scaler_.transform(self.filter_.transform(rows))
        if self.task == "regression":
            return self.estimator_.predict(x)[:, None]
        probabilities = np.zeros((len(rows), self.scheme.n_grades))
        probabilities[:, self.classes_] = self.estimator_.predict_proba(x)
        return probabilities

    def predict_scores(self, manifest: Manifest) -> tuple[pd.DataFrame, dict[str, str]]:
        """Per subject: the mean and SD over its ROIs of the ROI-level predictions.

        Regression: columns ``value`` and ``roi_sd`` (%); classification: ``p_grade<k>``, the
        mean probability of each grade, and ``grade``, the most probable one.
        """
        rows, failures = self.features(manifest)
        return self._aggregate(rows), failures

    def _aggregate(self, rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            return pd.DataFrame()
        scores = self._roi_scores(rows)
        by_subject = pd.DataFrame(scores, index=rows["subject_id"].to_numpy()).groupby(level=0)
        if self.task == "regression":
            return pd.DataFrame(
                {"value": by_subject.mean()[0], "roi_sd": by_subject.std(ddof=0)[0]}
            )
        mean = by_subject.mean()
        out = mean.rename(columns=lambda k: f"p_grade{k}")
        out["grade"] = mean.to_numpy().argmax(axis=1)
        return out

    def predict(self, manifest: Manifest) -> PredictionsTable:
        """A predictions table with one row per subject (failed rows for unreadable subjects)."""
        start = time.perf_counter()
        scores, failures = self.predict_scores(manifest)
        return self._table(
            manifest.subject_ids,
            scores,
            failures,
            {"predict": round(time.perf_counter() - start, 3)},
        )

    def _table(
        self, subject_ids, scores: pd.DataFrame, failures: dict[str, str], timings
    ) -> PredictionsTable:
        rows = []
        for sid in subject_ids:
            if sid in failures or sid not in scores.index:
                rows.append(
                    failed_row(
                        sid,
                        METHOD,
                        self.output_target,
                        failures.get(sid, f"subject {sid}: no ROI features"),
                    )
                )
            elif self.task == "regression":
                rows.append(
                    prediction_row(
                        sid,
                        METHOD,
                        self.output_target,
                        scores.at[sid, "value"],
                        std=scores.at[sid, "roi_sd"],
                    )
                )
            else:
                p = scores.loc[sid, [c for c in scores.columns if c.startswith("p_grade")]]
                rows.append(
                    prediction_row(
                        sid,
                        METHOD,
                        self.output_target,
                        scores.at[sid, "grade"],
                        message=";".join(f"{k}={v:.4f}" for k, v in p.items()),
                    )
                )
        return PredictionsTable.from_rows(rows, self._run_info(timings))

    def _run_info(self, timings: dict[str, float], **extra: Any) -> dict[str, Any]:
        config = self.params_json()
        config["grading_cuts_pct"] = list(self.scheme.cuts_pct)
        config["parameter_file_version"] = load_parameters(self.params_file).get("version")
        return run_info(METHOD, configuration=config, seed=self.seed, timings_s=timings, **extra)

    # Cross-validation --------------------------------------------------------------------------
    def cross_validate(
        self, manifest: Manifest, *, folds: Folds = 5, seed: int = 0
    ) -> PredictionsTable:
        """Out-of-fold predictions with subject-level folds.

        ``folds`` is a number (folds stratified on the reference's grade, see
        :func:`liverfat.data.folds.subject_folds`) or a study's partition. Features are extracted
        once; in each fold the filter, scaler, augmented rows and model come from that fold's
        training subjects only (recorded per fold in ``run['fold_log']``; the test folds in
        ``run['folds']``).
        """
        start = time.perf_counter()
        reference = manifest.target(self.target).dropna()
        labelled = manifest.select(subject_ids=reference.index)
        base, failures = self.features(labelled)
        augmented = pd.DataFrame(columns=KEY_COLUMNS)
        if self.augment_copies:
            augmented, more = self.features(
                labelled.select(subject_ids=sorted(set(base["subject_id"]))), augmented=True
            )
            failures.update(more)
        grades = dict(zip(reference.index, self.scheme.grade(reference.to_numpy()), strict=True))
        parts = resolve_folds(
            folds, list(reference.index), seed, strata=grades, groups=manifest.participants()
        )
        rows, fold_log = [], []
        for test_ids in parts:
            train_ids = training_ids(reference.index, test_ids)
            fold = self.clone()
            fold._fit_rows(
                base[base["subject_id"].isin(train_ids)],
                augmented[augmented["subject_id"].isin(train_ids)] if len(augmented) else augmented,
                reference.loc[train_ids],
            )
            scores = fold._aggregate(base[base["subject_id"].isin(test_ids)])
            rows.append(fold._table(test_ids, scores, failures, {}).frame)
            fold_log.append(
                {
                    "train": list(train_ids),
                    "test": list(test_ids),
                    "augmented_subjects": fold.augmented_subjects_,
                    "filter_fitted_on": fold.filter_.fitted_subjects_,
                    "model_trained_on": fold.training_subjects_,
                }
            )
        frame = pd.concat(rows, ignore_index=True)
        info = self._run_info(
            {"cross_validate": round(time.perf_counter() - start, 3)},
            folds=parts,
            fold_log=fold_log,
            fold_seed=seed,
        )
        return PredictionsTable(frame, info)

    # Persistence -------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """``config.json`` + ``state.json`` + ``training.safetensors`` (no pickle).

        The boosted trees are rebuilt on :meth:`load` from the stored filtered training matrix
        and the recorded seed; all three estimators are deterministic given both.
        """
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.params_json()
        state = {
            "feature_columns": self.feature_columns_,
            "filter_columns": self.filter_.columns_,
            "filter_fitted_on": self.filter_.fitted_subjects_,
            "training_subjects": self.training_subjects_,
            "augmented_subjects": self.augmented_subjects_,
            "failed_subjects": getattr(self, "failed_subjects_", {}),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        (directory / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        save_file(
            {"x": np.ascontiguousarray(self._train_x), "y": np.ascontiguousarray(self._train_y)},
            str(directory / "training.safetensors"),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RadiomicsEngine:
        from safetensors.numpy import load_file

        directory = Path(directory)
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
            arrays = load_file(str(directory / "training.safetensors"))
        except (OSError, ValueError) as exc:
            raise LiverfatError(
                f"{directory}: not a saved radiomics engine ({one_line(exc)})"
            ) from exc
        config["channels"] = tuple(config["channels"])
        engine = cls(**config)
        engine.feature_columns_ = state["feature_columns"]
        engine.filter_ = FeatureFilter(max_abs_corr=engine.max_abs_corr)
        engine.filter_.columns_ = state["filter_columns"]
        engine.filter_.fitted_subjects_ = state["filter_fitted_on"]
        engine.training_subjects_ = state["training_subjects"]
        engine.augmented_subjects_ = state["augmented_subjects"]
        engine.failed_subjects_ = state["failed_subjects"]
        engine._train_x, engine._train_y = arrays["x"], arrays["y"]
        engine._fit_estimator()
        return engine
