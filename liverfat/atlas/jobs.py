"""The per-subject job: register every template, fuse, erode, read out; write the result atomically.

A job is a picklable :class:`SubjectJob`; :func:`run_subject_job` runs in a worker process
(through :func:`liverfat.parallel.map_subjects`), so a crash in native registration code costs one
subject. Its result JSON is written atomically under a name that hashes every input (images,
templates, settings), so a rerun skips finished subjects and never reuses a stale result.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverfat.atlas.fusion import (
    IMAGE_FUSIONS,
    WEIGHTED_POWER,
    WEIGHTED_SIGMA_MM,
    erode,
    fuse,
    median_pairwise_dice,
    median_readout,
)
from liverfat.atlas.images import AtlasImage, align_centres, load_subject
from liverfat.atlas.registration import (
    BackendSettings,
    backend_defaults,
    register_many,
    warp_image,
)
from liverfat.atlas.reliability import (
    AGREEMENT_MAX_SPACING_MM,
    disagreement_message,
    readout_truth,
)
from liverfat.atlas.selection import (
    SELECTION_AFFINE_ITERATIONS,
    SELECTION_SPACING_MM,
    most_similar,
)
from liverfat.data.atomic import write_json_atomic
from liverfat.data.fingerprint import fingerprint, subject_files
from liverfat.data.io import write_volume
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError

#: Status of a subject whose scan has no fat fraction: its liver mask is made, its fat readout
#: skipped (not a failure of the registration; its predictions row has no value).
NO_READOUT = "no_readout"
NO_READOUT_MESSAGE = "no fat fraction in this scan: liver mask only, no fat readout"

#: Templates loaded in this process, keyed by id and file signature: every subject of a batch
#: registers the same few templates, so each is read (and its body mask computed) once.
_TEMPLATES: dict[str, AtlasImage] = {}


def load_template(templates: Manifest, template_id: str) -> AtlasImage:
    """Template ``template_id`` with its liver mask, from this process's cache when unchanged.

    The cache holds every template of ``templates`` (at least 8), so a pool is read once per
    worker, not once per subject."""
    signature = [
        template_id,
        templates.card.get("liver_label"),
        subject_files(templates, template_id),
    ]
    key = json.dumps(signature, default=str)
    if key not in _TEMPLATES:
        if len(_TEMPLATES) >= max(8, len(templates.subject_ids)):
            _TEMPLATES.clear()
        _TEMPLATES[key] = load_subject(templates, template_id, with_liver=True)
    return _TEMPLATES[key]


@dataclass
class SubjectJob:
    """Everything one subject's readout needs."""

    manifest: Manifest
    subject_id: str
    templates: Manifest
    backend: str
    settings: BackendSettings
    fusion: str = "intersection"
    erosion_diameter_voxels: float | None = 7
    erosion_diameter_mm: float | None = None
    min_voxels: int = 20
    result_dir: Path = field(default_factory=Path)
    save_mask: bool = False
    mask_dir: Path | None = None
    n_select: int | None = None
    agreement_flag_below: float | None = None

    def key(self) -> str:
        """Hash of the inputs (image files with size and mtime, templates by content, settings,
        the backend's defaults and liverfat's version), so a changed method is never reused. The
        templates go by content because a saved engine holds copies of them: its ``predict``
        reuses what ``calibrate`` registered when both share a work folder."""
        templates = self.templates
        content = {
            "subject": subject_files(self.manifest, self.subject_id),
            "templates": [
                subject_files(templates, t, by_content=True) for t in templates.subject_ids
            ],
            "backend": self.backend,
            "settings": asdict(self.settings),
            "defaults": backend_defaults(self.backend),
            "fusion": self.fusion,
            "erosion": [self.erosion_diameter_voxels, self.erosion_diameter_mm],
            "min_voxels": self.min_voxels,
            # "median": the agreement statistic (a mean until stop 33: not to be reused)
            "agreement_flag": [self.agreement_flag_below, AGREEMENT_MAX_SPACING_MM, "median"],
        }
        if self.n_select is not None:
            selection = [SELECTION_SPACING_MM, SELECTION_AFFINE_ITERATIONS]
            content["selection"] = [self.n_select, *selection]
        if self.fusion in IMAGE_FUSIONS:
            content["weights"] = [WEIGHTED_SIGMA_MM, WEIGHTED_POWER]
        return fingerprint(content)

    @property
    def result_path(self) -> Path:
        return Path(self.result_dir) / f"{self.subject_id}-{self.key()}.json"

    @property
    def mask_path(self) -> Path:
        """Where the fused liver mask goes: ``mask_dir`` (default ``result_dir/masks``)."""
        folder = Path(self.mask_dir) if self.mask_dir else Path(self.result_dir) / "masks"
        return folder / f"{self.subject_id}_liver_mask.nii.gz"


def run_subject_job(job: SubjectJob) -> dict[str, Any]:
    """Register the templates to one subject and read out its median fat fraction (%).

    Returns (and writes to ``job.result_path``) a dict with ``value`` (raw, % or None),
    ``status``, ``message``, the templates used (and their affine similarity when chosen from a
    pool), their agreement, volumes, seconds per registration, and against the subject's own
    liver mask when it has one, the readout's purity and error.
    """
    target = load_subject(job.manifest, job.subject_id)
    chosen = _chosen_templates(job, target)
    templates = [align_centres(target, load_template(job.templates, t)) for t in chosen]
    registrations = register_many(job.backend, target, templates, job.settings)
    warped = [r.warped_mask for r in registrations]
    seconds = [r.seconds for r in registrations]
    images = []
    if job.fusion in IMAGE_FUSIONS:
        images = [
            warp_image(r.transform, t.channels[0], target.reference)
            for r, t in zip(registrations, templates, strict=True)
        ]
    fused = fuse(warped, job.fusion, target=target.reference, warped=images)
    eroded = erode(
        fused, diameter_voxels=job.erosion_diameter_voxels, diameter_mm=job.erosion_diameter_mm
    )
    agreement = median_pairwise_dice(warped)
    readout = _readout(job, target, warped, fused, eroded, agreement)
    if job.save_mask:
        job.mask_path.parent.mkdir(parents=True, exist_ok=True)
        write_volume(fused, job.mask_path)
    result = {
        "subject_id": job.subject_id,
        "templates": list(chosen),
        "similarity": chosen if isinstance(chosen, dict) else None,
        **readout,
        "template_agreement": agreement,
        **_volumes(fused, eroded),
        "seconds_per_registration": seconds,
        "mask": str(job.mask_path) if job.save_mask else None,
        **_against_truth(job, eroded, target.fat_fraction),
    }
    Path(job.result_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.result_path, result)
    return result


def _chosen_templates(job: SubjectJob, target: AtlasImage) -> list[str] | dict[str, float]:
    """Every template (the paper's fixed set), or the ``n_select`` most similar of the pool
    (id -> affine similarity, best first)."""
    if job.n_select is None:
        return list(job.templates.subject_ids)
    pool = {t: load_template(job.templates, t) for t in job.templates.subject_ids}
    return dict(most_similar(target, pool, job.n_select))


def _readout(job, target, warped, fused, eroded, agreement) -> dict[str, Any]:
    """``value``, ``status`` and ``message`` of the fat readout, flagged when the templates
    disagree."""
    if target.fat_fraction is None:
        return {"value": None, "status": NO_READOUT, "message": NO_READOUT_MESSAGE}
    union = sitk.Cast(sum(sitk.Cast(w, sitk.sitkUInt16) for w in warped) > 0, sitk.sitkUInt8)
    readout = median_readout(
        target.fat_fraction, fused, eroded, min_voxels=job.min_voxels, fallback=union
    )
    status, message = readout.status, readout.message
    disagreement = disagreement_message(agreement, job.agreement_flag_below, fused.GetSpacing())
    if disagreement and status != "failed":
        status, message = "flagged", "; ".join(m for m in (message, disagreement) if m)
    return {"value": readout.value, "status": status, "message": message}


def _volumes(fused: sitk.Image, eroded: sitk.Image) -> dict[str, Any]:
    spacing = fused.GetSpacing()
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    n_fused = int(sitk.GetArrayViewFromImage(fused).sum())
    n_eroded = int(sitk.GetArrayViewFromImage(eroded).sum())
    return {
        "fused_voxels": n_fused,
        "fused_volume_ml": n_fused * voxel_ml,
        "eroded_voxels": n_eroded,
        "eroded_volume_ml": n_eroded * voxel_ml,
    }


def _against_truth(job: SubjectJob, eroded: sitk.Image, fat_fraction) -> dict[str, Any]:
    """Purity and error of the readout against the subject's own liver mask, when it has a
    readable one (CHAOS, the phantom); None values otherwise."""
    empty = {"purity": None, "true_median_pct": None, "readout_error_pp": None}
    if not job.manifest.has(job.subject_id, "liver_mask"):
        return empty
    try:
        truth = job.manifest.liver_mask(job.subject_id)
        truth.CopyInformation(eroded)
    except (LiverfatError, RuntimeError):
        return empty  # a mask that does not fit the scan costs the truth figures, not the readout
    return readout_truth(eroded, truth, fat_fraction)


def finished_result(job: SubjectJob) -> dict[str, Any] | None:
    """The stored result of an identical earlier job, or None."""
    path = job.result_path
    if not path.is_file():
        return None
    if job.save_mask and not job.mask_path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    if job.save_mask:  # where this job keeps its mask (an earlier run may have put it elsewhere)
        result["mask"] = str(job.mask_path)
    return result
