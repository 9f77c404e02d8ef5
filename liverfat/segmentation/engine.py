"""The segmentation engine: a 2.5D U-Net segments the liver; volume and median fat fraction.

Follows the engine contract of docs/design.md ("Engines")::

    engine = SegmentationEngine(iterations=3000, work_dir="w")
    oof = engine.cross_validate(manifest.select(split="A"), folds=5)   # Dice etc. in oof.run
    engine.fit(manifest.select(split="A")).save("unet")
    table = engine.predict(manifest.select(split="B"))   # masks written, paths in table.run

Predictions (method ``unet``): ``liver_volume_ml`` (mL) and ``liver_pdff_pct`` (median fat
fraction, %, in the mask eroded by ``erosion_mm``). A subject with a reference liver mask also
gets a record of segmentation metrics
(:func:`liverfat.evaluation.segmentation.segmentation_metrics`) in ``table.run["segmentation"]``;
``table.run["masks"]`` maps subjects to their mask files.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from liverfat.data.atomic import write_json_atomic
from liverfat.data.fingerprint import fingerprint
from liverfat.data.folds import Folds, resolve_folds
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable, run_info
from liverfat.engine import Engine
from liverfat.errors import LiverfatError
from liverfat.nn.device import pick_device
from liverfat.nn.registry import get_model_factory, model_names
from liverfat.nn.weights import (
    load_network_state,
    load_pretrained,
    read_engine_meta,
    save_network_engine,
)
from liverfat.parallel import EXECUTORS
from liverfat.segmentation import subjects
from liverfat.segmentation.networks import DEFAULT_FEATURES, FACTORIES
from liverfat.segmentation.readout import MAX_LIVER_ML, MIN_LIVER_ML
from liverfat.segmentation.slices import NORMALISATIONS, PreparedVolume, prepare_volume
from liverfat.segmentation.training import (
    LOSSES,
    SegmentationSettings,
    SliceBatches,
    predict_probability,
    train_segmentation,
)

TARGETS = ("liver_volume_ml", "liver_pdff_pct")
METHOD = "unet"


class SegmentationEngine(Engine):
    """2.5D U-Net liver segmentation with a volume and fat-fraction readout.

    Parameters
    ----------
    targets:
        Which readouts become table rows: ``liver_volume_ml`` (mL), ``liver_pdff_pct`` (%).
    channels:
        Manifest image columns fed to the network (``fat_fraction`` is computed from water and
        fat when the manifest has no such column); None: ``water`` and ``fat`` where the
        manifest has them, else ``image``.
    context_slices:
        Neighbouring slices on each side given as extra channels (k; 2k + 1 slices in all).
    pixel_spacing_mm:
        In-plane spacing (x, y) of the network grid; None: the training subjects' median.
    slice_size:
        (height, width) of the network grid, multiples of 16; None: the smallest that holds
        the largest training slice.
    normalisation:
        ``volume``, ``slice`` or ``none`` (:func:`liverfat.segmentation.slices.normalise`).
    model, features:
        A registered segmentation model (``unet``, ``residual_unet``, plug-ins) and, for the
        built-in ones, the BasicUNet stage channels.
    loss, iterations, batch_size, learning_rate:
        ``ce`` or ``dice_ce``; Adam steps, slices per batch and learning rate. The thesis' 1e-4
        learns too slowly for CPU budgets: 300 steps on the quarter-scale phantom gave a
        held-out Dice of 0.11 with it, 0.85 with the default 1e-3.
    elastic_grid, elastic_sigma_px, elastic_prob, affine_prob, flip_prob, intensity_jitter,
    gamma_prob, histogram_shift_prob:
        Augmentation (:class:`liverfat.segmentation.training.SegmentationSettings`).
    pretrained:
        A local weights file for the network (matching names loaded; nothing downloaded).
    erosion_mm:
        Margin (mm) eroded from the mask before the fat fraction is read.
    min_volume_ml, max_volume_ml:
        Plausible liver volumes; outside them rows are flagged.
    mask_dir:
        Where :meth:`predict` writes the masks (NIfTI); None: ``work_dir/masks`` or none.
    seed, device:
        Seed of initialisation, batches and augmentation; ``auto``, ``cpu`` or ``cuda``.
    work_dir:
        Resumable state: finished cross-validation folds and per-subject predictions.
    executor, n_workers, progress:
        How subjects are mapped (:func:`liverfat.parallel.map_subjects`); progress bars.
    """

    def __init__(
        self,
        *,
        targets: Sequence[str] = TARGETS,
        channels: Sequence[str] | None = None,
        context_slices: int = 1,
        pixel_spacing_mm: Sequence[float] | None = None,
        slice_size: Sequence[int] | None = None,
        normalisation: str = "volume",
        model: str = "unet",
        features: Sequence[int] = DEFAULT_FEATURES,
        loss: str = "ce",
        iterations: int = 2000,
        batch_size: int = 16,
        learning_rate: float = 1e-3,
        elastic_grid: int = 8,
        elastic_sigma_px: float = 4.0,
        elastic_prob: float = 0.5,
        affine_prob: float = 0.0,
        flip_prob: float = 0.0,
        intensity_jitter: float = 0.0,
        gamma_prob: float = 0.0,
        histogram_shift_prob: float = 0.0,
        pretrained: str | None = None,
        erosion_mm: float = 5.0,
        min_volume_ml: float = MIN_LIVER_ML,
        max_volume_ml: float = MAX_LIVER_ML,
        mask_dir: str | None = None,
        seed: int = 0,
        device: str = "auto",
        work_dir: str | None = None,
        executor: str = "serial",
        n_workers: int | None = None,
        progress: bool = False,
    ) -> None:
        self.targets = targets
        self.channels = channels
        self.context_slices = context_slices
        self.pixel_spacing_mm = pixel_spacing_mm
        self.slice_size = slice_size
        self.normalisation = normalisation
        self.model = model
        self.features = features
        self.loss = loss
        self.iterations = iterations
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.elastic_grid = elastic_grid
        self.elastic_sigma_px = elastic_sigma_px
        self.elastic_prob = elastic_prob
        self.affine_prob = affine_prob
        self.flip_prob = flip_prob
        self.intensity_jitter = intensity_jitter
        self.gamma_prob = gamma_prob
        self.histogram_shift_prob = histogram_shift_prob
        self.pretrained = pretrained
        self.erosion_mm = erosion_mm
        self.min_volume_ml = min_volume_ml
        self.max_volume_ml = max_volume_ml
        self.mask_dir = mask_dir
        self.seed = seed
        self.device = device
        self.work_dir = work_dir
        self.executor = executor
        self.n_workers = n_workers
        self.progress = progress
        self._validate()

    def _validate(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if isinstance(self.targets, str) or not list(self.targets) or unknown:
            raise LiverfatError(f"targets must be a non-empty list drawn from {', '.join(TARGETS)}")
        if self.model not in model_names("segmentation"):
            names = ", ".join(model_names("segmentation"))
            raise LiverfatError(f"unknown segmentation model {self.model!r}; available: {names}")
        for name, allowed in (
            ("normalisation", NORMALISATIONS),
            ("loss", LOSSES),
            ("executor", EXECUTORS),
        ):
            if getattr(self, name) not in allowed:
                choices = ", ".join(allowed)
                raise LiverfatError(f"unknown {name} {getattr(self, name)!r}; choose {choices}")
        for name in (
            "elastic_prob",
            "affine_prob",
            "flip_prob",
            "gamma_prob",
            "histogram_shift_prob",
        ):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise LiverfatError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("iterations", "batch_size", "elastic_grid"):
            if int(getattr(self, name)) < 1:
                raise LiverfatError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.features) != 6 or any(int(f) < 1 for f in self.features):
            raise LiverfatError(f"features must be six channel counts >= 1, got {self.features}")
        if int(self.context_slices) < 0:
            raise LiverfatError(f"context_slices must be 0 or more, got {self.context_slices}")
        if self.slice_size is not None and (
            len(self.slice_size) != 2 or any(int(s) % 16 or int(s) < 16 for s in self.slice_size)
        ):
            raise LiverfatError(f"slice_size must be two multiples of 16, got {self.slice_size}")
        if self.pixel_spacing_mm is not None and (
            len(self.pixel_spacing_mm) != 2
            or not all(np.isfinite(s) and s > 0 for s in self.pixel_spacing_mm)
        ):
            spacing = self.pixel_spacing_mm
            raise LiverfatError(f"pixel_spacing_mm must be two sizes > 0 (mm), got {spacing}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise LiverfatError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise LiverfatError(f"pretrained weights file {self.pretrained} not found")

    # Settings ---------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return METHOD

    def settings(self, seed: int | None = None) -> SegmentationSettings:
        return SegmentationSettings(
            iterations=int(self.iterations),
            batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate),
            loss=self.loss,
            elastic_grid=int(self.elastic_grid),
            elastic_sigma_px=float(self.elastic_sigma_px),
            elastic_prob=float(self.elastic_prob),
            affine_prob=float(self.affine_prob),
            flip_prob=float(self.flip_prob),
            intensity_jitter=float(self.intensity_jitter),
            gamma_prob=float(self.gamma_prob),
            histogram_shift_prob=float(self.histogram_shift_prob),
            seed=int(self.seed if seed is None else seed),
        )

    def configuration(self) -> dict[str, Any]:
        resolved = {"device": str(pick_device(self.device))}
        for name in ("channels", "pixel_spacing_mm", "slice_size"):
            if hasattr(self, f"{name}_"):
                resolved[name] = list(getattr(self, f"{name}_"))
        return {**self.params_json(), "resolved": resolved}

    def _build_network(self, in_channels: int) -> torch.nn.Module:
        factory = get_model_factory(self.model, task="segmentation")
        if self.model in FACTORIES:
            return factory(in_channels, 2, features=tuple(int(f) for f in self.features))
        return factory(in_channels, 2)

    # Fitting ------------------------------------------------------------------------------------
    def fit(self, manifest: Manifest) -> SegmentationEngine:
        """Train on every subject with a liver mask; returns self."""
        ids = subjects.with_mask(manifest)
        if not ids:
            raise LiverfatError(f"{manifest.path}: no subject has a liver_mask to train on")
        self._set_geometry(manifest, ids)
        prepared, errors = subjects.prepare_all(self, manifest, ids)
        if not prepared:
            raise LiverfatError(f"no usable training subject: {next(iter(errors.values()))}")
        self._fit_prepared(prepared)
        self.training_failures_ = errors
        return self

    def _set_geometry(self, manifest: Manifest, ids: Sequence[str]) -> None:
        """Fix the channels and the network grid from the subjects' headers (no labels)."""
        self.channels_ = subjects.resolve_channels(manifest, self.channels)
        spacing, size = subjects.network_grid(
            manifest, ids, self.channels_[0], self.pixel_spacing_mm, self.slice_size
        )
        self.pixel_spacing_mm_, self.slice_size_ = spacing, size

    def _fit_prepared(self, prepared: dict[str, tuple[PreparedVolume, np.ndarray]]) -> None:
        settings = self.settings()
        device = pick_device(self.device)
        ids = sorted(prepared)
        volumes = [prepared[s][0].slices for s in ids]
        in_channels = volumes[0].shape[1] * (2 * int(self.context_slices) + 1)
        torch.manual_seed(settings.seed)
        network = self._build_network(in_channels)
        if self.pretrained:
            self.pretrained_skipped_ = load_pretrained(network, self.pretrained)
        batches = SliceBatches(
            volumes, [prepared[s][1] for s in ids], int(self.context_slices), device, settings.seed
        )
        log = train_segmentation(network, batches, settings, progress=self.progress)
        del batches
        self.network_ = network.cpu().eval()
        self.in_channels_ = in_channels
        self.training_subjects_ = ids
        self.losses_ = log.losses
        self.train_time_s_ = log.seconds

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise LiverfatError("the segmentation engine is not fitted: call fit() or load() first")

    # Segmenting one volume --------------------------------------------------------------------
    def segment(
        self, images: dict[str, sitk.Image], *, subject_id: str = "subject"
    ) -> subjects.Segmented:
        """Segment one volume: ``images`` maps each of :attr:`channels_` (or ``water`` and
        ``fat`` for a computed ``fat_fraction``) to an image on one grid. The fat fraction is
        read from a ``fat_fraction`` image, else from water and fat, else not at all."""
        self._check_fitted()
        return subjects.segment_images(self, images, subject_id)

    def probability(self, prepared: PreparedVolume) -> np.ndarray:
        """Liver probability on the network grid (z, h, w) of a prepared volume."""
        return predict_probability(
            self.network_,
            prepared.slices,
            int(self.context_slices),
            device=pick_device(self.device),
        )

    def prepare(self, channels: Sequence[sitk.Image], subject_id: str) -> PreparedVolume:
        """A subject's channels on this engine's network grid."""
        return prepare_volume(
            channels,
            pixel_spacing_mm=self.pixel_spacing_mm_,
            slice_size=self.slice_size_,
            normalisation=self.normalisation,
            subject_id=subject_id,
        )

    # Prediction ---------------------------------------------------------------------------------
    def predict(self, manifest: Manifest) -> PredictionsTable:
        """Rows per subject and target; masks written to ``mask_dir`` (or ``work_dir/masks``)."""
        self._check_fitted()
        start = time.perf_counter()
        folder = self._mask_folder()
        results = subjects.predict_subjects(self, manifest, manifest.subject_ids, folder)
        return self._table(results, {"predict": time.perf_counter() - start})

    def predict_masks(
        self, manifest: Manifest, folder: str | os.PathLike[str]
    ) -> tuple[Manifest, PredictionsTable]:
        """Predict, writing the masks to ``folder/masks`` and a derived manifest
        (``folder/manifest.yaml``) whose ``liver_mask`` column points at them, so engines that
        need a liver mask (radiomics ROIs, atlas templates) run on subjects that had none."""
        engine = copy.copy(self)
        engine.mask_dir = str(Path(folder) / "masks")
        table = engine.predict(manifest)
        derived = manifest.with_liver_masks(table.run["masks"], Path(folder) / "manifest.yaml")
        return derived, table

    def _mask_folder(self) -> Path | None:
        if self.mask_dir is not None:
            Path(self.mask_dir).mkdir(parents=True, exist_ok=True)
            return Path(self.mask_dir)
        return self.work_path("masks", self.network_key())

    def network_key(self) -> str:
        """A key of the fitted network's weights and readout settings (resumes predictions)."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.network_.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        readout = {k: getattr(self, k) for k in _READOUT_PARAMS}
        return fingerprint({"weights": digest.hexdigest(), "readout": readout})

    def _table(self, results: list[dict[str, Any]], timings: dict[str, float], **extra: Any):
        rows = [row for result in results for row in result["rows"]]
        run = run_info(
            self.method,
            configuration=self.configuration(),
            seed=self.seed,
            timings_s=timings,
            segmentation=[r["metrics"] for r in results if r.get("metrics")],
            masks={r["subject_id"]: r["mask"] for r in results if r.get("mask")},
            **extra,
        )
        return PredictionsTable(PredictionsTable.from_rows(rows).frame, run)

    # Cross-validation -------------------------------------------------------------------------
    def cross_validate(
        self, manifest: Manifest, *, folds: Folds = 5, seed: int = 0
    ) -> PredictionsTable:
        """Out-of-fold masks and readouts of every subject with a liver mask (or of a study's
        partition), subject-level folds; with ``work_dir``, finished folds are kept, each with
        its trained model (``run["fold_models"]``: folders for :meth:`load`)."""
        start = time.perf_counter()
        ids = subjects.with_mask(manifest)
        if not ids:
            raise LiverfatError(f"{manifest.path}: no subject has a liver_mask to train on")
        parts = resolve_folds(folds, ids, seed, groups=manifest.participants())
        engine = copy.deepcopy(self)
        engine._set_geometry(manifest, ids)  # from the headers only: no label of a test fold
        key = fingerprint({"params": self._result_params(), "folds": parts})
        work = self.work_path("cv", key)
        prepared = None
        results, train_s, models = [], [], []
        for k, test_ids in enumerate(parts):
            done = work / f"fold{k:02d}.json" if work else None
            if done is not None and done.is_file():
                fold_run = json.loads(done.read_text(encoding="utf-8"))
            else:
                if prepared is None:
                    prepared, _ = subjects.prepare_all(engine, manifest, ids)
                fold_run = engine._run_fold(manifest, prepared, test_ids, k, work)
                if done is not None:
                    write_json_atomic(done, fold_run)
            results += fold_run["results"]
            train_s.append(fold_run["train_time_s"])
            model = _fold_model_dir(work, k)
            models.append(str(model) if model and model.is_dir() else None)  # older runs: none
        timings = {"cross_validate": time.perf_counter() - start}
        return engine._table(
            results,
            timings,
            folds=parts,
            fold_seed=seed,
            train_time_s_per_fold=train_s,
            fold_models=models,
        )

    def _run_fold(
        self,
        manifest: Manifest,
        prepared: dict[str, tuple[PreparedVolume, np.ndarray]],
        test_ids: Sequence[str],
        k: int,
        work: Path | None,
    ) -> dict[str, Any]:
        """Train fold ``k``'s copy (seed ``seed + k``) on the subjects outside ``test_ids``,
        saved below ``work``; their result records."""
        fold = copy.deepcopy(self)
        fold.seed = self.seed + k
        test = set(test_ids)
        fold._fit_prepared({s: v for s, v in prepared.items() if s not in test})
        if work is not None:
            fold.save(_fold_model_dir(work, k))
        folder = work / "masks" if work else None
        results = subjects.predict_subjects(fold, manifest, test_ids, folder)
        return {"results": results, "train_time_s": fold.train_time_s_}

    def _result_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params_json().items() if k not in _NOT_IN_RESULT}

    # Persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """``engine.json`` (parameters, grid, channels) and ``network.safetensors``."""
        self._check_fitted()
        fitted = json.loads(json.dumps({k: getattr(self, f"{k}_") for k in _FITTED}, default=list))
        meta = {"engine": "SegmentationEngine", "params": self.params_json(), "fitted": fitted}
        save_network_engine(directory, self.network_, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SegmentationEngine:
        """Rebuild a saved engine (JSON and safetensors; no pickle)."""
        meta = read_engine_meta(directory, "SegmentationEngine", "segmentation engine")
        engine = cls(**meta["params"])
        for name in _FITTED:
            value = meta["fitted"][name]
            setattr(engine, f"{name}_", tuple(value) if isinstance(value, list) else value)
        engine.training_subjects_ = list(engine.training_subjects_)
        network = engine._build_network(int(engine.in_channels_))
        engine.network_ = load_network_state(directory, network)
        return engine


def _fold_model_dir(work: Path | None, k: int) -> Path | None:
    """Where cross-validation keeps fold ``k``'s trained model (None without a work folder)."""
    return work / f"fold{k:02d}_model" if work else None


#: What a fitted engine saves besides its network.
_FITTED = (
    "channels",
    "pixel_spacing_mm",
    "slice_size",
    "in_channels",
    "training_subjects",
    "train_time_s",
)
#: Parameters that change how a run goes but not its result (left out of resume keys).
_NOT_IN_RESULT = ("work_dir", "mask_dir", "executor", "n_workers", "progress")
#: Parameters of the readout (with the weights, they key resumable predictions).
_READOUT_PARAMS = ("targets", "erosion_mm", "min_volume_ml", "max_volume_ml", "channels")
