"""The deep engine: 2D formats -> a regression network with optional mean-variance uncertainty.

Follows the engine contract of docs/design.md ("Engines")::

    engine = DeepEngine(targets=["liver_pdff_pct"], model="resnet50", profile="quick", work_dir="w")
    oof = engine.cross_validate(manifest.select(split="A"), folds=10)
    engine.fit(manifest.select(split="A")).set_calibration(oof.run["variance_scale"])
    table = engine.predict(manifest.select(split="B"))

Profiles (``paper``, ``cpu``, ``quick``: :mod:`liverfat.deep.profiles`) set the model and the
optimisation; an explicit constructor value overrides its profile's.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from liverfat.data.fingerprint import fingerprint
from liverfat.data.folds import Folds, resolve_folds
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import (
    PredictionsTable,
    failed_row,
    prediction_row,
    run_info,
)
from liverfat.deep.formats import get_format, load_formats
from liverfat.deep.profiles import (
    DEFAULT_PROFILE,
    PROFILE_KEYS,
    PROFILES,
    check_fat_scale,
    fat_scale,
    resolve_profile,
)
from liverfat.deep.training import (
    HEADS,
    TrainSettings,
    predict_network,
    train_network,
)
from liverfat.deep.uncertainty import (
    TRANSFORMS,
    clip_to_ranges,
    cross_fitted_calibration,
    interval,
    to_network_space,
    variance_scale_from,
)
from liverfat.engine import Engine
from liverfat.errors import LiverfatError
from liverfat.nn.device import pick_device
from liverfat.nn.registry import build_model, model_names
from liverfat.nn.weights import (
    load_network_state,
    load_pretrained,
    read_engine_meta,
    save_network_engine,
)
from liverfat.parallel import EXECUTORS


class DeepEngine(Engine):
    """Regression of image-derived targets from 2D formats with a convolutional network.

    Parameters
    ----------
    targets:
        Manifest target names predicted together (missing values are masked out of the loss).
    format:
        A registered format (:func:`liverfat.deep.formats.format_names`).
    model:
        A registered model (:func:`liverfat.nn.registry.model_names`), plug-ins included;
        None: the profile's.
    head:
        ``mean_variance`` (mean and log-variance, Gaussian NLL: gives std and 95 % intervals) or
        ``mse`` (means only).
    profile:
        ``cpu`` (the default, on every device), ``paper``, ``quick`` or ``auto`` (paper on CUDA,
        cpu otherwise); see :mod:`liverfat.deep.profiles`. ``model``, ``iterations``,
        ``batch_size``, ``input_scale``, ``learning_rate``, ``nll_beta``, ``balance_bins``,
        ``target_transform`` and ``fat_scale_range`` left at None come from it.
    iterations, batch_size, input_scale:
        Training iterations, batch size, and the factor formats are resized by before the
        network.
    learning_rate:
        Adam learning rate, reduced tenfold for the last sixth of the iterations.
    nll_beta:
        Weight of the mean-variance loss by the predicted variance to this power (beta-NLL;
        0 is the plain Gaussian NLL, 1 gives the mean the MSE's gradient): see
        :func:`liverfat.deep.training.masked_loss`.
    balance_bins:
        With N > 0, batches are drawn balanced over N equal-width bins of the first target
        (:func:`liverfat.deep.training.balanced_weights`); 0 draws epochs in random order.
    target_transform:
        ``none`` or ``log`` (learn log(y + 1): intervals widen with y, stay above -1).
    fat_scale_range:
        (low, high): each training image's fat fraction and its targets scaled by one factor,
        log-uniform in the range (:func:`liverfat.deep.training.scale_fat`); (1, 1): none.
        Used only where it is valid (:func:`liverfat.deep.profiles.fat_scale`): a profile's
        range is dropped elsewhere, an explicit one is an error.
    max_shift_px:
        Largest random translation (pixels of the full-size format), edges replicated.
    pretrained:
        A local weights file (safetensors or torch state dict); nothing is downloaded.
    seed:
        Seeds weight initialisation, batch order and augmentation.
    device:
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    work_dir:
        Resumable state: formats cached in ``work_dir/formats`` (keyed by the input files and the
        format version) and finished cross-validation folds in ``work_dir/cv``; None: neither.
    executor, n_workers:
        How formats are computed (see :func:`liverfat.parallel.map_subjects`).
    progress:
        Show progress bars.
    """

    def __init__(
        self,
        *,
        targets: Sequence[str] = ("liver_pdff_pct",),
        format: str = "liverfat",
        model: str | None = None,
        head: str = "mean_variance",
        profile: str = DEFAULT_PROFILE,
        iterations: int | None = None,
        batch_size: int | None = None,
        input_scale: float | None = None,
        learning_rate: float | None = None,
        nll_beta: float | None = None,
        balance_bins: int | None = None,
        target_transform: str | None = None,
        fat_scale_range: Sequence[float] | None = None,
        max_shift_px: int = 16,
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "auto",
        work_dir: str | None = None,
        executor: str = "serial",
        n_workers: int | None = None,
        progress: bool = False,
    ) -> None:
        self.targets = targets
        self.format = format
        self.model = model
        self.head = head
        self.profile = profile
        self.iterations = iterations
        self.batch_size = batch_size
        self.input_scale = input_scale
        self.learning_rate = learning_rate
        self.nll_beta = nll_beta
        self.balance_bins = balance_bins
        self.target_transform = target_transform
        self.fat_scale_range = fat_scale_range
        self.max_shift_px = max_shift_px
        self.pretrained = pretrained
        self.seed = seed
        self.device = device
        self.work_dir = work_dir
        self.executor = executor
        self.n_workers = n_workers
        self.progress = progress
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.targets, str) or not list(self.targets):
            raise LiverfatError("targets must be a non-empty list of target names")
        get_format(self.format)
        if self.model is not None and self.model not in model_names():
            raise LiverfatError(
                f"unknown model {self.model!r}; available: {', '.join(model_names())}"
            )
        if self.head not in HEADS:
            raise LiverfatError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.profile not in ("auto", *PROFILES):
            raise LiverfatError(
                f"unknown profile {self.profile!r}; choose auto, {', '.join(PROFILES)}"
            )
        if self.executor not in EXECUTORS:
            raise LiverfatError(f"unknown executor {self.executor!r}")
        if self.target_transform is not None and self.target_transform not in TRANSFORMS:
            choices = ", ".join(TRANSFORMS)
            raise LiverfatError(f"unknown target_transform {self.target_transform!r}; {choices}")
        for name in ("iterations", "batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise LiverfatError(f"{name} must be at least 1, got {value}")
        if self.input_scale is not None and not 0.05 <= float(self.input_scale) <= 4:
            raise LiverfatError(f"input_scale must be in [0.05, 4], got {self.input_scale}")
        if self.fat_scale_range is not None:
            check_fat_scale(self.fat_scale_range, self.targets, self.format, self.transform)
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise LiverfatError(f"pretrained weights file {self.pretrained} not found")

    # Settings ---------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return f"deep_{self.model_name}"

    @property
    def transform(self) -> str:
        """The target transform: ``target_transform``, else the profile's (the fitted one)."""
        return self.profile_settings().get("target_transform", "none")  # older saves: none

    @property
    def model_name(self) -> str:
        """The network: ``model``, else the profile's (the fitted one once fitted)."""
        return self.profile_settings()["model"]

    def profile_settings(self, device: torch.device | None = None) -> dict[str, Any]:
        """The profile's settings (:func:`liverfat.deep.profiles.resolve_profile`) on ``device``
        (default: the engine's), with every explicitly given constructor value kept.

        A fitted engine keeps the settings it was trained with (``profile_settings_``), so a
        network trained on a GPU with ``paper`` predicts at its own input scale on a CPU.
        """
        if hasattr(self, "profile_settings_"):
            return dict(self.profile_settings_)
        device = device or pick_device(self.device)
        explicit = {k: getattr(self, k) for k in PROFILE_KEYS}
        return resolve_profile(self.profile, device.type, explicit)

    def resolved(self) -> tuple[TrainSettings, float, torch.device]:
        """Training settings, input scale and device after applying the profile."""
        device = pick_device(self.device)
        base = self.profile_settings(device)
        scale = float(base["input_scale"])
        settings = TrainSettings(
            iterations=int(base["iterations"]),
            batch_size=int(base["batch_size"]),
            learning_rate=float(base["learning_rate"]),
            max_shift_px=int(round(self.max_shift_px * scale)),
            head=self.head,
            seed=int(self.seed),
            nll_beta=float(base["nll_beta"]),
            balance_bins=int(base["balance_bins"]),
            fat_scale_range=fat_scale(  # older saves have none
                base.get("fat_scale_range"), self.targets, self.format, self.transform
            ),
        )
        return settings, scale, device

    def configuration(self) -> dict[str, Any]:
        settings, scale, device = self.resolved()
        profile = self.profile_settings(device)
        return {
            **self.params_json(),
            "resolved": {
                **vars(settings),
                "model": profile["model"],
                "profile": profile["profile"],
                "input_scale": scale,
                "device": str(device),
            },
        }

    # Formats ------------------------------------------------------------------------------------
    def load_formats(
        self, manifest: Manifest, subject_ids: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Formats of the subjects (cached when ``work_dir`` is set) and one-line errors."""
        ids = list(subject_ids if subject_ids is not None else manifest.subject_ids)
        return load_formats(
            manifest,
            ids,
            self.format,
            self.work_path("formats"),
            executor=self.executor,
            n_workers=self.n_workers,
            progress=self.progress,
        )

    def _in_range(self, frame: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
        """Values and bounds kept inside each target's range on the manifest's card."""
        return clip_to_ranges(frame, {t: manifest.target_range(t) for t in self.targets})

    def _target_matrix(self, manifest: Manifest, subject_ids: Sequence[str]) -> np.ndarray:
        columns = [manifest.target(t).reindex(list(subject_ids)) for t in self.targets]
        return np.stack([c.to_numpy(float) for c in columns], axis=1)

    # Fitting ------------------------------------------------------------------------------------
    def fit(self, manifest: Manifest) -> DeepEngine:
        """Train on every subject with at least one target value; returns self."""
        matrix = self._target_matrix(manifest, manifest.subject_ids)
        with_reference = [
            s for s, row in zip(manifest.subject_ids, matrix, strict=True) if np.isfinite(row).any()
        ]
        if not with_reference:
            raise LiverfatError(f"{manifest.path}: no subject has a value for {self.targets}")
        arrays, errors = self.load_formats(manifest, with_reference)
        if not arrays:
            raise LiverfatError(f"no usable training subject: {next(iter(errors.values()))}")
        ids = sorted(arrays)
        self._fit_arrays(np.stack([arrays[s] for s in ids]), self._target_matrix(manifest, ids))
        self.training_subjects_ = ids
        self.training_failures_ = errors
        return self

    def _fit_arrays(self, formats: np.ndarray, targets: np.ndarray) -> None:
        settings, scale, device = self.resolved()
        targets = to_network_space(targets, self.transform)
        mean = np.nanmean(targets, axis=0)
        std = np.nanstd(targets, axis=0)
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        standardised = (targets - mean) / std
        n_out = len(self.targets) * (2 if self.head == "mean_variance" else 1)
        torch.manual_seed(settings.seed)
        profile = self.profile_settings(device)
        model = profile["model"]
        network = build_model(model, formats.shape[1], n_out)
        if self.pretrained:
            self.pretrained_skipped_ = load_pretrained(network, self.pretrained)
        start = time.perf_counter()
        log = train_network(
            network,
            formats,
            standardised,
            settings,
            input_scale=scale,
            device=device,
            progress=self.progress,
            target_zero=-mean / std,
        )
        self.network_ = network.cpu()
        self.profile_settings_ = profile
        self.in_channels_ = int(formats.shape[1])
        self.target_mean_ = mean.astype(float)
        self.target_std_ = std.astype(float)
        self.variance_scale_ = np.ones(len(self.targets))
        self.losses_ = log.losses
        self.training_steps_ = {
            "precision": log.precision,
            "skipped_steps": log.skipped_steps,
            "nonfinite_losses": log.nonfinite_losses,
        }
        self.train_time_s_ = time.perf_counter() - start

    def set_calibration(self, variance_scale: dict[str, float]) -> DeepEngine:
        """Post-hoc variance scale per target (fitted on out-of-fold predictions); returns self."""
        self._check_fitted()
        self.variance_scale_ = np.array([float(variance_scale.get(t, 1.0)) for t in self.targets])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise LiverfatError("the deep engine is not fitted: call fit() or load() first")

    # Prediction -----------------------------------------------------------------------------------
    def predict(self, manifest: Manifest) -> PredictionsTable:
        """A predictions table: a row per subject and target, ``failed`` rows for bad subjects."""
        self._check_fitted()
        start = time.perf_counter()
        arrays, errors = self.load_formats(manifest)
        rows = self._rows(arrays, errors, manifest.subject_ids)
        timings = {"predict": time.perf_counter() - start}
        frame = self._in_range(PredictionsTable.from_rows(rows).frame, manifest)
        run = run_info(
            self.method, configuration=self.configuration(), seed=self.seed, timings_s=timings
        )
        return PredictionsTable(frame, run)

    def predict_arrays(
        self, formats: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Values, std, lower and upper 95 % bounds (each (n, t), target units; the last three
        NaN for the ``mse`` head), mapped back from the network's space
        (:func:`liverfat.deep.uncertainty.interval`); tables keep them inside the card's range."""
        self._check_fitted()
        _, scale, device = self.resolved()
        mean, var = predict_network(
            self.network_, formats, len(self.targets), self.head, input_scale=scale, device=device
        )
        mean = mean * self.target_std_ + self.target_mean_
        sd = np.sqrt(var * self.variance_scale_) * self.target_std_
        return interval(mean, sd, self.transform)

    def _rows(
        self, arrays: dict[str, np.ndarray], errors: dict[str, str], order: Sequence[str]
    ) -> list[dict]:
        ids = [s for s in order if s in arrays]
        if ids:
            values, std, lower, upper = self.predict_arrays(np.stack([arrays[s] for s in ids]))
        position = {s: i for i, s in enumerate(ids)}
        rows = []
        for sid in order:
            for j, target in enumerate(self.targets):
                if sid not in position:
                    rows.append(failed_row(sid, self.method, target, errors.get(sid, "no format")))
                    continue
                i = position[sid]
                bounds = {}
                if np.isfinite(std[i, j]):
                    bounds = {"std": std[i, j], "lower": lower[i, j], "upper": upper[i, j]}
                rows.append(prediction_row(sid, self.method, target, values[i, j], **bounds))
        return rows

    # Cross-validation -------------------------------------------------------------------------
    def cross_validate(
        self, manifest: Manifest, *, folds: Folds = 10, seed: int = 0
    ) -> PredictionsTable:
        """Out-of-fold predictions for every subject with a reference, subject-level folds.

        ``folds``: a number or a study's partition (:func:`liverfat.data.folds.resolve_folds`).
        Each fold trains a fresh copy of this engine. With ``work_dir``, every finished fold is
        written to ``work_dir/cv`` atomically and a rerun with the same settings continues from
        the finished folds. The variance of each fold's predictions is rescaled by a factor
        fitted on the other folds' out-of-fold predictions (cross-fitted calibration), so
        reported interval coverage is honest; the factor fitted on all folds is in
        ``run["variance_scale"]`` for calibrating a final fit (:meth:`set_calibration`).
        """
        start = time.perf_counter()
        matrix = self._target_matrix(manifest, manifest.subject_ids)
        ids = [s for s, r in zip(manifest.subject_ids, matrix, strict=True) if np.isfinite(r).any()]
        parts = resolve_folds(folds, ids, seed, groups=manifest.participants())
        key = self._cv_key(parts)
        work = self.work_path("cv")
        arrays = errors = None
        fold_frames = []
        for k, test_ids in enumerate(parts):
            path = work / f"fold{k:02d}.csv" if work else None
            if path is not None and _finished(path, key):
                fold_frames.append(PredictionsTable.read(path).frame)
                continue
            if arrays is None:
                arrays, errors = self.load_formats(manifest, ids)
            frame, training = self._run_fold(manifest, arrays, errors, test_ids, self.seed + k)
            if path is not None:
                run = run_info(self.method, configuration=self.configuration(), seed=self.seed)
                run.update(cv_key=key, fold=k, training=training)
                PredictionsTable(frame, run).write(path)
            fold_frames.append(frame)
        reference = {t: manifest.target(t) for t in self.targets}
        calibrated = cross_fitted_calibration(fold_frames, reference, self.transform)
        result = self._in_range(calibrated, manifest)  # the folds' own rows are not clipped
        raw = pd.concat(fold_frames, ignore_index=True)
        pairs = zip(result["subject_id"], result["target"], strict=True)
        keep = np.array([pd.notna(reference[t].get(s)) for s, t in pairs], bool)  # with a reference
        run = run_info(
            self.method,
            configuration=self.configuration(),
            seed=self.seed,
            timings_s={"cross_validate": time.perf_counter() - start},
            folds=parts,
            fold_seed=seed,
            variance_scale=(
                variance_scale_from(raw, reference, self.transform) if self.head != "mse" else {}
            ),
            calibration="variance scaled per fold by a factor fitted on the other folds",
        )
        return PredictionsTable(result[keep].reset_index(drop=True), run)

    def _cv_key(self, parts: list[list[str]]) -> str:
        params = {k: v for k, v in self.get_params().items() if k not in _NOT_IN_RESULT}
        # the resolved profile too: ``auto`` trains differently on a GPU and on a CPU
        profile = self.profile_settings()
        return fingerprint({"params": params, "profile": profile, "folds": parts})

    def _run_fold(
        self,
        manifest: Manifest,
        arrays: dict[str, np.ndarray],
        errors: dict[str, str],
        test_ids: list[str],
        fold_seed: int,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The fold's predictions, and what its training did (precision, skipped steps)."""
        test = set(test_ids)
        train_ids = sorted(s for s in arrays if s not in test)
        engine = copy.deepcopy(self)
        engine.seed = fold_seed
        engine._fit_arrays(
            np.stack([arrays[s] for s in train_ids]), self._target_matrix(manifest, train_ids)
        )
        frame = PredictionsTable.from_rows(engine._rows(arrays, errors, test_ids)).frame
        return frame, {**engine.training_steps_, "train_time_s": engine.train_time_s_}

    # Persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``engine.json`` (parameters and the fitted state of :data:`_FITTED`: target
        scaling and range, calibration, ...) and ``network.safetensors`` (the state dict)."""
        self._check_fitted()
        fitted = {k: getattr(self, f"{k}_", None) for k in _FITTED}
        fitted = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fitted.items()}
        meta = {"engine": "DeepEngine", "params": self.params_json(), "fitted": fitted}
        save_network_engine(directory, self.network_, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DeepEngine:
        """Rebuild a saved engine (no pickle: JSON and safetensors only)."""
        meta = read_engine_meta(directory, "DeepEngine", "deep engine")
        engine = cls(**meta["params"])
        fitted = meta["fitted"]
        if "profile_settings" not in fitted:
            raise LiverfatError(
                f"{directory}: saved by an older liverfat (no profile settings); fit again"
            )
        for name in _FITTED:
            value = fitted.get(name)
            setattr(engine, f"{name}_", np.array(value, float) if name in _ARRAYS else value)
        n_out = len(engine.targets) * (2 if engine.head == "mean_variance" else 1)
        network = build_model(engine.model_name, int(engine.in_channels_), n_out)
        engine.network_ = load_network_state(directory, network)
        return engine


#: What a fitted engine saves besides its network (attributes with a trailing underscore).
_FITTED = (
    "in_channels",
    "profile_settings",
    "target_mean",
    "target_std",
    "variance_scale",
    "training_subjects",
    "train_time_s",
    "training_steps",
)
_ARRAYS = ("target_mean", "target_std", "variance_scale")


#: Parameters that change how a run goes but not its result (left out of the resume key).
_NOT_IN_RESULT = ("work_dir", "executor", "n_workers", "progress")


def _finished(path: Path, key: str) -> bool:
    """Whether a fold file exists and was written with the same settings and folds."""
    if not path.is_file():
        return False
    try:
        return PredictionsTable.read(path).run.get("cv_key") == key
    except LiverfatError:
        return False
