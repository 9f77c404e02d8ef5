"""The atlas engine: templates, multi-atlas registration, fused eroded median readout, calibration.

Follows the engine contract of docs/design.md ("Engines").
The classical baseline of the UK Biobank liver-fat study. ``fit`` chooses the templates (or takes
the given ones) among subjects with liver masks and fits a linear calibration of the raw readout
to the reference on the other subjects; ``predict`` registers the templates to every subject in
worker processes, writes each subject's result atomically (reruns skip finished subjects) and
returns calibrated values.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverfat.atlas.calibration import LinearCalibration
from liverfat.atlas.fusion import FUSIONS
from liverfat.atlas.jobs import SubjectJob, finished_result, run_subject_job
from liverfat.atlas.registration import BACKENDS, TORCH_BACKENDS, BackendSettings, torch_device
from liverfat.atlas.reliability import AGREEMENT_FLAG_BELOW
from liverfat.atlas.selection import SELECTIONS
from liverfat.atlas.templates import choose_templates, select_templates
from liverfat.data.atomic import write_json_atomic
from liverfat.data.folds import Folds, resolve_folds, training_ids
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable, failed_row, prediction_row, run_info
from liverfat.engine import Engine
from liverfat.errors import LiverfatError, one_line, subject_message
from liverfat.parallel import EXECUTORS, map_subjects

#: Reliability columns of :meth:`AtlasEngine.readout_details`.
DETAIL_COLUMNS = (
    "template_agreement",
    "fused_volume_ml",
    "eroded_volume_ml",
    "purity",
    "true_median_pct",
    "readout_error_pp",
)


class AtlasEngine(Engine):
    """Multi-atlas liver-fat readout.

    Parameters
    ----------
    backend:
        ``torch`` (the default: the best CHAOS Dice at the least time, docs/atlas.md), ``elastix``,
        ``deform`` or ``fireants`` (see
        :mod:`liverfat.atlas.registration`).
    n_templates:
        Templates registered to each subject: chosen once for shape variance (``shape``) when
        ``templates`` is not given, or per subject from the pool (``similarity``).
    templates:
        Template subject ids (must have liver masks), or None to choose; with ``similarity``,
        the pool.
    template_selection:
        ``shape``: one fixed set for every subject (with the other defaults, the published
        setting: 3 templates, intersection, 7-voxel erosion);
        ``similarity``: per subject the ``n_templates`` of the pool most similar after an
        affine stage (:mod:`liverfat.atlas.selection`; a subject never selects itself).
    pool_size:
        With ``similarity``: the pool is this many subjects with liver masks chosen for shape
        variance (None: every one).
    fusion:
        ``intersection`` (the study's product), ``majority``, ``staple``, ``weighted`` (the
        locally weighted vote, :func:`liverfat.atlas.fusion.local_weights`) or ``jlf`` (joint
        label fusion, :func:`liverfat.atlas.fusion.joint_weights`).
    agreement_flag_below:
        Flag a readout whose warped templates agree less (median pairwise Dice; None: never),
        :data:`liverfat.atlas.reliability.AGREEMENT_FLAG_BELOW` by default.
    erosion_diameter_voxels, erosion_diameter_mm:
        Erosion ball: 7 voxels by default; a diameter in mm (wins when given) honours
        anisotropic spacing.
    min_voxels:
        Fewer eroded voxels than this gives a ``flagged`` row.
    target:
        Target name written in the predictions and used for calibration.
    calibrate:
        Fit the linear calibration in ``fit`` (else the identity).
    working_spacing_mm, backend_options, threads_per_worker:
        Registration grid (x, y, z mm; None = native), backend-specific options, and native
        threads per registration.
    executor, n_workers, scheduler:
        How subjects are mapped (see :func:`liverfat.parallel.map_subjects`).
    work_dir:
        Resumable state: per-subject results (and masks) are written there, so a rerun skips
        finished subjects; a temporary folder when None.
    save_masks:
        Also write each subject's fused liver mask (NIfTI) for review.
    mask_dir:
        Where those masks go (default ``work_dir/masks``).
    """

    def __init__(
        self,
        *,
        backend: str = "torch",
        n_templates: int = 3,
        templates: Sequence[str] | None = None,
        template_selection: str = "shape",
        pool_size: int | None = 15,
        fusion: str = "intersection",
        erosion_diameter_voxels: float | None = 7,
        erosion_diameter_mm: float | None = None,
        min_voxels: int = 20,
        target: str = "liver_pdff_pct",
        calibrate: bool = True,
        working_spacing_mm: Sequence[float] | None = None,
        backend_options: dict[str, Any] | None = None,
        threads_per_worker: int = 1,
        executor: str = "serial",
        n_workers: int | None = None,
        scheduler: str | None = None,
        work_dir: str | Path | None = None,
        save_masks: bool = False,
        mask_dir: str | Path | None = None,
        agreement_flag_below: float | None = AGREEMENT_FLAG_BELOW,
    ) -> None:
        if backend not in BACKENDS:
            raise LiverfatError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if fusion not in FUSIONS:
            raise LiverfatError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if executor not in EXECUTORS:
            raise LiverfatError(f"unknown executor {executor!r}; choose {', '.join(EXECUTORS)}")
        if n_templates < 1:
            raise LiverfatError("n_templates must be at least 1")
        if template_selection not in SELECTIONS:
            raise LiverfatError(
                f"unknown template_selection {template_selection!r}; choose {', '.join(SELECTIONS)}"
            )
        if template_selection == "similarity" and pool_size is not None and pool_size < n_templates:
            raise LiverfatError(f"pool_size {pool_size} is smaller than n_templates {n_templates}")
        self.backend = backend
        self.n_templates = n_templates
        self.templates = templates
        self.template_selection = template_selection
        self.pool_size = pool_size
        self.fusion = fusion
        self.erosion_diameter_voxels = erosion_diameter_voxels
        self.erosion_diameter_mm = erosion_diameter_mm
        self.min_voxels = min_voxels
        self.target = target
        self.calibrate = calibrate
        self.working_spacing_mm = working_spacing_mm
        self.backend_options = backend_options
        self.threads_per_worker = threads_per_worker
        self.executor = executor
        self.n_workers = n_workers
        self.scheduler = scheduler
        self.work_dir = work_dir
        self.save_masks = save_masks
        self.mask_dir = mask_dir
        self.agreement_flag_below = agreement_flag_below

    @property
    def method(self) -> str:
        return f"atlas-{self.backend}"

    def _settings(self) -> BackendSettings:
        spacing = (
            tuple(float(s) for s in self.working_spacing_mm) if self.working_spacing_mm else None
        )
        return BackendSettings(spacing, self.threads_per_worker, dict(self.backend_options or {}))

    def _device(self) -> str | None:
        """Where the registrations run (None: no torch), so workers sharing a GPU are capped."""
        if self.backend not in TORCH_BACKENDS:
            return None
        return torch_device(dict(self.backend_options or {}))  # imports torch: only here

    def _results_dir(self) -> Path:
        if self.work_dir is not None:
            return Path(self.work_dir)
        if getattr(self, "_scratch", None) is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="liverfat_atlas_"))
        return self._scratch

    # Fitting -----------------------------------------------------------------------------------
    @property
    def _pooled(self) -> bool:
        return self.template_selection == "similarity"

    def fit(self, manifest: Manifest) -> AtlasEngine:
        """Choose templates (or the pool) among subjects with liver masks; calibrate on the
        others (with a pool: on every subject, none of which selects itself)."""
        start = time.perf_counter()
        candidates = [s for s in manifest.subject_ids if manifest.has(s, "liver_mask")]
        if self.templates:
            chosen = select_templates(
                {str(t): None for t in self.templates if t in candidates}, given=self.templates
            )
        elif self._pooled:
            whole = self.pool_size is None or self.pool_size >= len(candidates)
            size = self.pool_size or self.n_templates
            chosen = list(candidates) if whole and candidates else choose_templates(manifest, size)
        else:
            chosen = choose_templates(manifest, self.n_templates)
        self.templates_ = chosen
        self._template_manifest = manifest.select(subject_ids=chosen)
        self.calibration_ = LinearCalibration()
        if self.calibrate and self.target in manifest.targets:
            others = manifest.select(
                subject_ids=[s for s in manifest.subject_ids if self._pooled or s not in chosen]
            )
            raw = self.raw_readout(others)
            if len(raw) and raw["value"].isna().all():  # not an identity line fitted on nobody
                raise LiverfatError(
                    f"every readout for the calibration failed ({len(raw)} subjects); the "
                    f"first: {one_line(raw['message'].iloc[0])}"
                )
            reference = others.target(self.target)
            flagged = raw["status"] == "flagged"
            self.calibration_ = LinearCalibration.fit(raw["value"], reference, flagged=flagged)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "templates_"):
            raise LiverfatError("the atlas engine is not fitted: call fit() or load() first")

    # Prediction --------------------------------------------------------------------------------
    def _job(self, manifest: Manifest, subject_id: str) -> SubjectJob:
        return SubjectJob(
            manifest=manifest,
            subject_id=subject_id,
            templates=self._template_manifest,
            backend=self.backend,
            settings=self._settings(),
            fusion=self.fusion,
            erosion_diameter_voxels=self.erosion_diameter_voxels,
            erosion_diameter_mm=self.erosion_diameter_mm,
            min_voxels=self.min_voxels,
            result_dir=self._results_dir(),
            save_mask=self.save_masks,
            mask_dir=Path(self.mask_dir) if self.mask_dir else None,
            n_select=self.n_templates if self._pooled else None,
            agreement_flag_below=self.agreement_flag_below,
        )

    def raw_readout(self, manifest: Manifest, *, progress: str | None = None) -> pd.DataFrame:
        """Raw (uncalibrated) readout per subject, resuming from finished results.

        Returns a frame indexed by subject_id with ``value`` (%), ``status``, ``message``,
        ``fused_volume_ml`` and ``seconds_per_registration``.
        """
        self._check_fitted()
        results: dict[str, dict[str, Any]] = {}
        pending = []
        for sid in manifest.subject_ids:
            job = self._job(manifest, sid)
            try:
                done = finished_result(job)
            except OSError:
                done = None
            if done is not None:
                results[sid] = done
            else:
                pending.append(job)
        for outcome in map_subjects(
            run_subject_job,
            pending,
            executor=self.executor,
            n_workers=self.n_workers,
            threads_per_worker=self.threads_per_worker,
            scheduler=self.scheduler,
            progress=progress,
            device=self._device() if pending and self.executor != "serial" else None,
        ):
            sid = outcome.item.subject_id
            if outcome.ok:
                results[sid] = outcome.value
            else:
                message = subject_message(sid, outcome.error)
                results[sid] = {
                    "subject_id": sid,
                    "value": None,
                    "status": "failed",
                    "message": message,
                    "seconds_per_registration": [],
                }
        frame = pd.DataFrame([results[s] for s in manifest.subject_ids])
        if frame.empty:
            frame = pd.DataFrame(columns=["subject_id", "value", "status", "message"])
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
        return frame.set_index("subject_id")

    def readout_details(self, manifest: Manifest) -> pd.DataFrame:
        """Per subject: the raw readout (%), status, templates used, their agreement, fused and
        eroded volumes (mL) and, where the subject has a liver mask, the readout's purity and
        error (pp) against it. Reads finished results (registers what is missing)."""
        frame = self.raw_readout(manifest).reset_index()
        if "templates" in frame:  # absent when every subject failed
            frame["templates"] = frame["templates"].map(
                lambda t: " ".join(t) if isinstance(t, list) else ""
            )
        wanted = ["subject_id", "value", "status", "templates", *DETAIL_COLUMNS, "message"]
        return frame.reindex(columns=wanted).rename(columns={"value": "raw_readout_pct"})

    def predict(self, manifest: Manifest, *, raw: bool = False) -> PredictionsTable:
        """Calibrated (or ``raw``) median liver fat fraction (%) per subject."""
        self._check_fitted()
        start = time.perf_counter()
        readout = self.raw_readout(manifest, progress=f"{self.method} predict")
        bounds = manifest.target_range(self.target) if self.target in manifest.targets else (0, 100)
        rows = []
        for sid, result in readout.iterrows():
            if result["status"] not in ("ok", "flagged") or not np.isfinite(result["value"]):
                rows.append(failed_row(sid, self.method, self.target, str(result["message"])))
                continue
            value = float(result["value"])
            if not raw:
                value = float(self.calibration_.apply(value, bounds))
            rows.append(
                prediction_row(
                    sid,
                    self.method,
                    self.target,
                    value,
                    status=result["status"],
                    message=str(result["message"]),
                )
            )
        seconds = [s for v in readout.get("seconds_per_registration", []) for s in (v or [])]
        info = run_info(
            self.method,
            configuration=self._configuration(raw),
            seed=0,
            timings_s={
                "predict": time.perf_counter() - start,
                "registration_median": float(np.median(seconds)) if seconds else float("nan"),
            },
        )
        return PredictionsTable.from_rows(rows, info)

    def _configuration(self, raw: bool = False) -> dict[str, Any]:
        return {
            **self.params_json(),
            "templates_": self.templates_,
            "raw": raw,
            "calibration_": self.calibration_.to_dict(),
        }

    def cross_validate(
        self, manifest: Manifest, *, folds: Folds = 10, seed: int = 0
    ) -> PredictionsTable:
        """Out-of-fold calibrated predictions for the subjects with a reference.

        ``folds``: a number or a study's partition (:func:`liverfat.data.folds.resolve_folds`);
        subjects without a reference are in every training part (template candidates).
        Templates and calibration are chosen inside each training part; a subject's readout
        from the same templates is computed once and read back in the other folds.
        """
        scored = list(manifest.target(self.target).dropna().index)
        parts = resolve_folds(folds, scored, seed, groups=manifest.participants())
        results = self._results_dir()  # shared by the folds: a registration is done once
        tables = []
        for test_ids in parts:
            engine = self.clone()
            engine._scratch = results
            engine.fit(manifest.select(subject_ids=training_ids(manifest.subject_ids, test_ids)))
            tables.append(engine.predict(manifest.select(subject_ids=test_ids)))
        table = PredictionsTable.concat(tables)
        table.run = run_info(
            self.method, configuration=self.params_json(), seed=seed, folds=parts, fold_seed=seed
        )
        return table

    # Persistence -------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write parameters, templates (copied images) and calibration as JSON + NIfTI."""
        self._check_fitted()
        directory = Path(directory)
        folder = directory / "templates"
        folder.mkdir(parents=True, exist_ok=True)
        source = self._template_manifest
        table = source.subjects.copy()
        for index, sid in enumerate(source.subject_ids):
            for column in source.image_columns:
                path = source.image_path(sid, column)
                if path is None:
                    continue
                name = f"{sid}_{column}{''.join(path.suffixes)}"
                shutil.copyfile(path, folder / name)
                table.loc[index, column] = name
        Manifest(
            card=dict(source.card),
            subjects=table,
            path=folder / "manifest.yaml",
            root=folder.resolve(),
        ).write(folder / "manifest.yaml")
        write_json_atomic(
            directory / "atlas_engine.json",
            {
                "params": self.params_json(),
                "templates_": self.templates_,
                "calibration_": self.calibration_.to_dict(),
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> AtlasEngine:
        directory = Path(directory)
        path = directory / "atlas_engine.json"
        if not path.is_file():
            raise LiverfatError(f"{directory}: no saved atlas engine (atlas_engine.json missing)")
        state = json.loads(path.read_text(encoding="utf-8"))
        engine = cls(**state["params"])
        engine.templates_ = list(state["templates_"])
        engine._template_manifest = Manifest.load(directory / "templates" / "manifest.yaml")
        engine.calibration_ = LinearCalibration(**state["calibration_"])
        return engine
