"""The patch grader: steatosis grades from a subject's liver ROIs with a small DenseNet.

The network arm of the published ROI study (the trees' arm is the radiomics engine): the same
ROIs (the manifest's ``rois`` column, as ``liverfat radiomics rois`` writes them), the same four
augmentations with the trees' defaults, drawn on the fly from the training ROIs only
(:mod:`liverfat.deep.patch_training`), and the same output: per subject, the mean over its ROIs of
the softmax probabilities of each grade, and the most probable grade. Follows the engine
contract of docs/design.md ("Engines")::

    grader = PatchGrader(target="liver_pdff_pct", grading="histology", seed=0)
    grader.fit(manifest.select(split="A"))
    scores, failures = grader.predict_scores(manifest.select(split="B"))
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from liverfat.data.folds import Folds, resolve_folds, training_ids
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable, failed_row, prediction_row, run_info
from liverfat.deep.patch_data import PATCH_CHANNELS, read_windows
from liverfat.deep.patch_training import (
    SCHEDULE,
    PatchTrainSettings,
    predict_probabilities,
    train_patch_network,
)
from liverfat.engine import Engine
from liverfat.errors import LiverfatError
from liverfat.evaluation.grader import grading_scheme
from liverfat.nn.device import check_device, pick_device
from liverfat.nn.registry import build_model, model_names
from liverfat.nn.weights import load_network_state, read_engine_meta, save_network_engine
from liverfat.parallel import EXECUTORS

TASK = "classification"
CLASS_WEIGHTINGS = ("none", "balanced")
DEVICES = ("auto", "cpu", "cuda")
#: Fitted attributes (without the trailing underscore) that :meth:`PatchGrader.save` keeps.
_FITTED = (
    "classes",
    "in_channels",
    "window_side",
    "training_subjects",
    "sample_subjects",
    "drawn_subjects",
    "training_log",
    "failed_subjects",
)


class PatchGrader(Engine):
    """Steatosis grading of ROI patches with a classification network.

    Parameters
    ----------
    target:
        Manifest target holding the reference fat fraction (%); its grade is the class.
    grading:
        Grading scheme name (``histology`` 5/33/66 %, ``mri_pdff``, ``binary``) or increasing
        cut-offs (%), see :func:`liverfat.evaluation.grader.grading_scheme`.
    model:
        A ``classification`` network of :mod:`liverfat.nn.registry` (``patch_densenet``,
        ``small_cnn`` or a plug-in).
    channels:
        Images the patches come from: ``fat_fraction`` (divided by 100) and optionally ``water``
        and ``fat`` (divided by the subject's median of water + fat over its ROIs).
    max_shift_px:
        Largest random shift of a training crop (pixels); also the context margin read around
        every ROI.
    mirror, rotate, noise_fraction:
        Left-right mirroring (p = 1/2), rotation by multiples of 90 degrees, and Gaussian noise
        of ``noise_fraction`` x the patch's SD, per training batch.
    iterations, batch_size, learning_rate, weight_decay:
        Adam with a cosine learning-rate schedule (to 0 over ``iterations``).
    class_weighting:
        ``none`` or ``balanced`` (cross-entropy weights n / (k x count) per training class).
    device:
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``; mixed precision on CUDA.
    executor, n_workers:
        How subjects' windows are read (:func:`liverfat.parallel.map_subjects`).
    work_dir:
        Resumable state: each subject's windows cached in ``work_dir/patches`` (None: no cache).
    seed:
        Seeds the weights, the batches and the augmentation.
    """

    def __init__(
        self,
        *,
        target: str = "liver_pdff_pct",
        grading: str | Sequence[float] = "histology",
        model: str = "patch_densenet",
        channels: Sequence[str] = ("fat_fraction",),
        max_shift_px: int = 2,
        mirror: bool = True,
        rotate: bool = True,
        noise_fraction: float = 0.25,
        iterations: int = 1500,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        class_weighting: str = "none",
        device: str = "auto",
        executor: str = "serial",
        n_workers: int | None = None,
        work_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        self.target = target
        self.grading = grading
        self.model = model
        self.channels = channels
        self.max_shift_px = max_shift_px
        self.mirror = mirror
        self.rotate = rotate
        self.noise_fraction = noise_fraction
        self.iterations = iterations
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.class_weighting = class_weighting
        self.device = device
        self.executor = executor
        self.n_workers = n_workers
        self.work_dir = work_dir
        self.seed = seed
        self._validate()

    def _validate(self) -> None:
        self.scheme  # noqa: B018 - raises for an unknown scheme or bad cut-offs
        if self.model not in model_names(TASK):
            raise LiverfatError(
                f"unknown classification model {self.model!r}; "
                f"available: {', '.join(model_names(TASK))}"
            )
        channels = list(self.channels) if not isinstance(self.channels, str) else []
        if not channels or len(set(channels)) < len(channels) or set(channels) - {*PATCH_CHANNELS}:
            raise LiverfatError(
                f"channels must be distinct names among {', '.join(PATCH_CHANNELS)}; "
                f"got {self.channels!r}"
            )
        for name in ("iterations", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise LiverfatError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.max_shift_px) < 0 or float(self.noise_fraction) < 0:
            raise LiverfatError("max_shift_px and noise_fraction must be >= 0")
        if float(self.learning_rate) <= 0 or float(self.weight_decay) < 0:
            raise LiverfatError("learning_rate must be > 0 and weight_decay >= 0")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise LiverfatError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}")
        if self.executor not in EXECUTORS:
            raise LiverfatError(f"executor must be one of {', '.join(EXECUTORS)}")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in DEVICES:
            raise LiverfatError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    # Settings -----------------------------------------------------------------------------------
    @property
    def scheme(self):
        """The :class:`~liverfat.evaluation.grader.GradingScheme` of ``grading``."""
        grading = self.grading if isinstance(self.grading, str) else list(self.grading)
        return grading_scheme(grading)

    @property
    def method(self) -> str:
        return f"patch_{self.model}"

    @property
    def output_target(self) -> str:
        return f"{self.target}_grade"

    def _device(self) -> torch.device:
        check_device(self.device)
        return pick_device(self.device)

    def _settings(self, class_weights: tuple[float, ...] | None) -> PatchTrainSettings:
        return PatchTrainSettings(
            iterations=int(self.iterations),
            batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate),
            weight_decay=float(self.weight_decay),
            max_shift_px=int(self.max_shift_px),
            mirror=bool(self.mirror),
            rotate=bool(self.rotate),
            noise_fraction=float(self.noise_fraction),
            seed=int(self.seed),
            class_weights=class_weights,
        )

    def windows(
        self, manifest: Manifest, subject_ids: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Normalised ROI windows per subject (:func:`liverfat.deep.patch_data.read_windows`)
        and a one-line message per subject that failed."""
        ids = list(manifest.subject_ids if subject_ids is None else subject_ids)
        return read_windows(
            manifest,
            ids,
            tuple(self.channels),
            int(self.max_shift_px),
            cache_dir=self.work_path("patches"),
            executor=self.executor,
            n_workers=self.n_workers,
        )

    # Fitting ------------------------------------------------------------------------------------
    def fit(self, manifest: Manifest) -> PatchGrader:
        """Train on the ROIs of every subject of ``manifest`` with a reference ``target``."""
        reference = manifest.target(self.target).dropna()
        if reference.empty:
            raise LiverfatError(f"{manifest.path}: no subject has a reference {self.target}")
        windows, failures = self.windows(manifest, list(reference.index))
        self._fit_windows(windows, reference)
        self.failed_subjects_ = failures
        return self

    def _fit_windows(self, windows: dict[str, np.ndarray], reference: pd.Series) -> None:
        ids = sorted(s for s in windows if s in reference.index)
        if not ids:
            raise LiverfatError("no training subject gave ROI windows (see the failures)")
        sides = sorted({windows[s].shape[-1] for s in ids})
        if len(sides) > 1:
            raise LiverfatError(f"training ROIs differ in size: windows of {sides} px")
        x = np.concatenate([windows[s] for s in ids])
        subjects = [s for s in ids for _ in range(len(windows[s]))]
        grades = self.scheme.grade(reference.loc[subjects].to_numpy(float))
        classes = np.unique(grades)
        if classes.size < 2:
            raise LiverfatError(
                f"all training subjects have grade {classes[0]}; grading needs at least two grades"
            )
        y = np.searchsorted(classes, grades)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            network = build_model(self.model, x.shape[1], classes.size, task=TASK)
        log = train_patch_network(
            network, x, y, int(self.max_shift_px), self._settings(self._weights(y)), self._device()
        )
        self.network_ = network.cpu()
        self.classes_ = classes.astype(int).tolist()
        self.in_channels_ = int(x.shape[1])
        self.window_side_ = int(sides[0])
        self.training_subjects_ = ids
        self.sample_subjects_ = subjects
        self.drawn_subjects_ = sorted({subjects[i] for i in np.flatnonzero(log.drawn)})
        self.training_log_ = {
            "losses": log.losses,
            "seconds": log.seconds,
            "precision": log.precision,
            "schedule": SCHEDULE,
            "n_samples": len(subjects),
        }

    def _weights(self, y: np.ndarray) -> tuple[float, ...] | None:
        if self.class_weighting == "none":
            return None
        counts = np.bincount(y)
        return tuple(float(len(y) / (len(counts) * c)) for c in counts)

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise LiverfatError("the patch grader is not fitted: call fit() or load() first")

    # Prediction ---------------------------------------------------------------------------------
    def predict_scores(self, manifest: Manifest) -> tuple[pd.DataFrame, dict[str, str]]:
        """Per subject (index: subject_id): ``p_grade<k>``, the mean over its ROIs of the softmax
        probability of grade k (0 for grades absent from training), and ``grade``, the most
        probable one; and ``{subject_id: one-line message}`` for subjects that failed."""
        self._check_fitted()
        windows, failures = self.windows(manifest)
        scores, more = self._scores(windows)
        failures.update(more)
        return scores, failures

    def _scores(self, windows: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict[str, str]]:
        failures, ids = {}, []
        for sid, w in windows.items():
            if w.shape[1:] != (self.in_channels_, self.window_side_, self.window_side_):
                failures[sid] = (
                    f"subject {sid}: ROI windows of {w.shape[-1]} px and {w.shape[1]} channel(s) "
                    f"differ from the {self.window_side_} px, {self.in_channels_} the grader "
                    "was trained on"
                )
            else:
                ids.append(sid)
        columns = [f"p_grade{k}" for k in range(self.scheme.n_grades)]
        if not ids:
            return pd.DataFrame(columns=[*columns, "grade"]), failures
        x = np.concatenate([windows[s] for s in ids])
        roi = predict_probabilities(self.network_, x, int(self.max_shift_px), self._device())
        probabilities = np.zeros((len(roi), self.scheme.n_grades))
        probabilities[:, self.classes_] = roi
        owner = np.repeat(np.arange(len(ids)), [len(windows[s]) for s in ids])
        mean = np.stack([probabilities[owner == i].mean(axis=0) for i in range(len(ids))])
        scores = pd.DataFrame(mean, index=pd.Index(ids, dtype=str), columns=columns)
        scores["grade"] = mean.argmax(axis=1)
        return scores, failures

    def predict(self, manifest: Manifest) -> PredictionsTable:
        """A predictions table: each subject's grade (target ``<target>_grade``) with its grade
        probabilities in ``message``; a failed row for each subject that failed."""
        start = time.perf_counter()
        scores, failures = self.predict_scores(manifest)
        timings = {"predict": round(time.perf_counter() - start, 3)}
        return self._table(manifest.subject_ids, scores, failures, timings)

    def _table(
        self,
        subject_ids: Sequence[str],
        scores: pd.DataFrame,
        failures: dict[str, str],
        timings: dict[str, float],
        **extra: Any,
    ) -> PredictionsTable:
        return PredictionsTable.from_rows(
            self._rows(subject_ids, scores, failures), self._run_info(timings, **extra)
        )

    def _rows(
        self, subject_ids: Sequence[str], scores: pd.DataFrame, failures: dict[str, str]
    ) -> list[dict]:
        rows = []
        for sid in subject_ids:
            if sid in failures or sid not in scores.index:
                message = failures.get(sid, f"subject {sid}: no ROI windows")
                rows.append(failed_row(sid, self.method, self.output_target, message))
                continue
            p = scores.loc[sid, [c for c in scores.columns if c.startswith("p_grade")]]
            rows.append(
                prediction_row(
                    sid,
                    self.method,
                    self.output_target,
                    scores.at[sid, "grade"],
                    message=";".join(f"{k}={v:.4f}" for k, v in p.items()),
                )
            )
        return rows

    def _run_info(self, timings: dict[str, float], **extra: Any) -> dict[str, Any]:
        config = self.params_json()
        config.update(grading_cuts_pct=list(self.scheme.cuts_pct), schedule=SCHEDULE)
        return run_info(
            self.method, configuration=config, seed=self.seed, timings_s=timings, **extra
        )

    # Cross-validation ---------------------------------------------------------------------------
    def cross_validate(
        self, manifest: Manifest, *, folds: Folds = 5, seed: int = 0
    ) -> PredictionsTable:
        """Out-of-fold predictions for every subject with a reference, subject-level folds.

        ``folds``: a number (stratified on the reference's grade) or a study's partition
        (:func:`liverfat.data.folds.resolve_folds`). Windows are read once; each fold trains a
        fresh network on its training subjects' ROIs only (recorded per fold in
        ``run['fold_log']``, the test folds in ``run['folds']``).
        """
        start = time.perf_counter()
        reference = manifest.target(self.target).dropna()
        if reference.empty:
            raise LiverfatError(f"{manifest.path}: no subject has a reference {self.target}")
        windows, failures = self.windows(manifest, list(reference.index))
        grades = dict(zip(reference.index, self.scheme.grade(reference.to_numpy()), strict=True))
        parts = resolve_folds(
            folds, list(reference.index), seed, strata=grades, groups=manifest.participants()
        )
        rows, fold_log = [], []
        for test_ids in parts:
            train = set(training_ids(reference.index, test_ids))
            fold = self.clone()
            fold._fit_windows({s: w for s, w in windows.items() if s in train}, reference)
            scores, more = fold._scores({s: windows[s] for s in test_ids if s in windows})
            rows += fold._rows(test_ids, scores, {**failures, **more})
            fold_log.append(
                {
                    "train": sorted(train),
                    "test": list(test_ids),
                    "model_trained_on": fold.training_subjects_,
                    "batches_drew_from": fold.drawn_subjects_,
                    "train_seconds": fold.training_log_["seconds"],
                }
            )
        timings = {"cross_validate": round(time.perf_counter() - start, 3)}
        info = self._run_info(timings, folds=parts, fold_log=fold_log, fold_seed=seed)
        return PredictionsTable.from_rows(rows, info)

    # Persistence --------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``engine.json`` (parameters and fitted state) and ``network.safetensors``."""
        self._check_fitted()
        fitted = {name: getattr(self, f"{name}_") for name in _FITTED}
        meta = {"engine": "PatchGrader", "params": self.params_json(), "fitted": fitted}
        save_network_engine(directory, self.network_, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PatchGrader:
        """Rebuild a saved grader (JSON and safetensors only, no pickle)."""
        meta = read_engine_meta(directory, "PatchGrader", "patch grader")
        grader = cls(**meta["params"])
        for name in _FITTED:
            setattr(grader, f"{name}_", meta["fitted"][name])
        network = build_model(
            grader.model, int(grader.in_channels_), len(grader.classes_), task=TASK
        )
        grader.network_ = load_network_state(directory, network)
        return grader
