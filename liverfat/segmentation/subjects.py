"""The segmentation engine's per-subject work: channels from a manifest, the network grid,
training volumes, and prediction of one subject (mask, readout, metrics) that is written
atomically and resumed.

Subjects are mapped through :func:`liverfat.parallel.map_subjects`; a subject that fails
becomes ``failed`` rows naming it, and the batch goes on.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from liverfat.data.atomic import write_json_atomic
from liverfat.data.dixon import fat_fraction_image
from liverfat.data.geometry import check_same_geometry
from liverfat.data.io import read_header, write_volume
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import failed_row, prediction_row
from liverfat.errors import ImageError, LiverfatError, one_line, subject_message
from liverfat.evaluation.segmentation import segmentation_metrics
from liverfat.nn.device import pick_device
from liverfat.parallel import map_subjects
from liverfat.segmentation.readout import LiverReadout, mask_from_probability, read_liver
from liverfat.segmentation.slices import padded_size, prepare_mask, resampled_size

if TYPE_CHECKING:
    from liverfat.segmentation.engine import SegmentationEngine

#: Largest network slice side (pixels) chosen automatically.
MAX_SLICE_PX = 512


@dataclass(frozen=True)
class Segmented:
    """A segmented volume: the mask on the input grid (uint8) and its readout."""

    mask: sitk.Image
    readout: LiverReadout


# Channels and grid -----------------------------------------------------------------------------
def with_mask(manifest: Manifest) -> list[str]:
    """Subjects of ``manifest`` that have a liver mask file named."""
    return [s for s in manifest.subject_ids if manifest.has(s, "liver_mask")]


def resolve_channels(manifest: Manifest, channels: Sequence[str] | None) -> tuple[str, ...]:
    """The network's input channels: as given, else water and fat, else the single image."""
    columns = set(manifest.image_columns)
    if channels is None:
        if {"water", "fat"} <= columns:
            return ("water", "fat")
        if "image" in columns:
            return ("image",)
        raise LiverfatError(f"{manifest.path}: no water/fat or image column to segment")
    missing = [c for c in channels if c not in columns and c != "fat_fraction"]
    if missing or not channels:
        raise LiverfatError(f"{manifest.path}: no image column(s) {', '.join(missing) or '(none)'}")
    return tuple(channels)


def network_grid(
    manifest: Manifest,
    ids: Sequence[str],
    column: str,
    spacing_mm: Sequence[float] | None,
    size: Sequence[int] | None,
) -> tuple[tuple[float, float], tuple[int, int]]:
    """In-plane spacing (x, y; mm) and slice size (height, width; px) of the network grid:
    the given ones, else the median spacing and the smallest size holding every slice."""
    column = "water" if column == "fat_fraction" else column
    headers = []
    for sid in ids:
        path = manifest.image_path(sid, column)
        try:
            headers.append(read_header(path))
        except (ImageError, RuntimeError, TypeError):
            continue  # a broken subject fails later with its own message
    if not headers:
        raise LiverfatError(f"{manifest.path}: no readable {column} image among the subjects")
    if spacing_mm is None:
        spacing_mm = tuple(float(np.median([h.GetSpacing()[i] for h in headers])) for i in (0, 1))
    if size is None:
        sizes = [resampled_size(h, spacing_mm) for h in headers]
        size = tuple(min(padded_size(max(s[i] for s in sizes)), MAX_SLICE_PX) for i in (1, 0))
    return tuple(float(s) for s in spacing_mm), tuple(int(s) for s in size)


def subject_images(manifest: Manifest, sid: str, channels: Sequence[str]) -> dict[str, sitk.Image]:
    """The subject's channel images (a ``fat_fraction`` from water and fat where not stored)."""
    images = {}
    for channel in channels:
        if channel == "fat_fraction" and not manifest.has(sid, "fat_fraction"):
            images[channel] = manifest.dixon(sid).fat_fraction
        else:
            images[channel] = manifest.read_image(sid, channel, allow_empty=channel == "fat")
    return images


def fat_fraction_of(manifest: Manifest, sid: str) -> sitk.Image | None:
    """The subject's fat fraction (%) if it is a Dixon scan, else None."""
    columns = set(manifest.image_columns)
    if not ({"water", "fat"} <= columns or {"in_phase", "opposed_phase"} <= columns):
        return None
    return manifest.dixon(sid).fat_fraction


# Training volumes -------------------------------------------------------------------------------
def _prepare_training(engine: SegmentationEngine, manifest: Manifest, sid: str):
    images = subject_images(manifest, sid, engine.channels_)
    channels = [images[c] for c in engine.channels_]
    _check_grid(channels, sid, engine.channels_)
    mask = manifest.liver_mask(sid)
    try:
        check_same_geometry(channels[0], mask, names=(engine.channels_[0], "liver_mask"))
    except ImageError as exc:
        raise ImageError(f"subject {sid}: {exc}") from exc
    prepared = engine.prepare(channels, sid)
    return prepared, prepare_mask(mask, prepared)


def _each_subject(engine: SegmentationEngine, fn, ids: Sequence[str], label: str, device=None):
    """:func:`liverfat.parallel.map_subjects` with the engine's executor and progress bar."""
    return map_subjects(
        fn,
        ids,
        executor=engine.executor,
        n_workers=engine.n_workers,
        progress=label if engine.progress else None,
        device=device,
    )


def prepare_all(
    engine: SegmentationEngine, manifest: Manifest, ids: Sequence[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Prepared volumes and labels by subject, and one-line errors of those that failed."""
    fn = functools.partial(_prepare_training, engine, manifest)
    prepared, errors = {}, {}
    for outcome in _each_subject(engine, fn, ids, "prepare volumes"):
        if outcome.ok:
            prepared[outcome.item] = outcome.value
        else:
            errors[outcome.item] = subject_message(outcome.item, outcome.error)
    return prepared, errors


def _check_grid(channels: Sequence[sitk.Image], sid: str, names: Sequence[str]) -> None:
    for name, image in zip(names[1:], channels[1:], strict=True):
        try:
            check_same_geometry(channels[0], image, names=(names[0], name))
        except ImageError as exc:
            raise ImageError(f"subject {sid}: {exc}") from exc


# Segmenting -------------------------------------------------------------------------------------
def segment_images(
    engine: SegmentationEngine, images: dict[str, sitk.Image], subject_id: str
) -> Segmented:
    """Mask and readout of one volume (see :meth:`SegmentationEngine.segment`)."""
    images = dict(images)
    if "fat_fraction" not in images and {"water", "fat"} <= set(images):
        images["fat_fraction"] = fat_fraction_image(images["water"], images["fat"])
    missing = [c for c in engine.channels_ if c not in images]
    if missing:
        raise LiverfatError(
            f"subject {subject_id}: the network needs channel(s) {', '.join(missing)}; "
            f"got {', '.join(images) or 'none'}"
        )
    channels = [images[c] for c in engine.channels_]
    _check_grid(channels, subject_id, engine.channels_)
    prepared = engine.prepare(channels, subject_id)
    mask = mask_from_probability(prepared.to_subject_grid(engine.probability(prepared)))
    fat_fraction = images.get("fat_fraction")
    if fat_fraction is not None:
        _check_grid([channels[0], fat_fraction], subject_id, (engine.channels_[0], "fat_fraction"))
    readout = read_liver(
        mask,
        fat_fraction if "liver_pdff_pct" in engine.targets else None,
        erosion_mm=float(engine.erosion_mm),
        min_volume_ml=float(engine.min_volume_ml),
        max_volume_ml=float(engine.max_volume_ml),
    )
    return Segmented(mask, readout)


def _needs_stored_fat_fraction(
    engine: SegmentationEngine, manifest: Manifest, sid: str, images: dict[str, sitk.Image]
) -> bool:
    """Whether the readout's fat fraction must come from the manifest: a stored column, or
    in/opposed-phase images; from water and fat already read, :func:`segment_images` computes
    it without reading them again."""
    if "liver_pdff_pct" not in engine.targets or "fat_fraction" in images:
        return False
    return manifest.has(sid, "fat_fraction") or not {"water", "fat"} <= set(images)


def _predict_one(
    engine: SegmentationEngine, manifest: Manifest, folder: Path | None, key: str, sid: str
) -> dict[str, Any]:
    """One subject's result record: rows, metrics (against a reference mask) and mask path."""
    done = folder / f"{sid}.json" if folder is not None else None
    if done is not None and done.is_file():
        finished = json.loads(done.read_text(encoding="utf-8"))
        if finished.get("key") == key:  # the same network and readout: resume
            return finished
    images = subject_images(manifest, sid, engine.channels_)
    if _needs_stored_fat_fraction(engine, manifest, sid, images):
        fat_fraction = fat_fraction_of(manifest, sid)
        if fat_fraction is not None:
            images["fat_fraction"] = fat_fraction
    result = segment_images(engine, images, sid)
    record = {
        "subject_id": sid,
        "rows": _rows(engine, sid, result.readout),
        "readout": result.readout.as_dict(),
        "metrics": _metrics(manifest, sid, result.mask),
        "mask": None,
        "key": key,
    }
    if folder is not None:
        record["mask"] = str(write_volume(result.mask, folder / f"{sid}_liver_mask.nii.gz"))
        write_json_atomic(done, record)
    return record


def _rows(engine: SegmentationEngine, sid: str, readout: LiverReadout) -> list[dict]:
    rows = []
    for target in engine.targets:
        if target == "liver_volume_ml":
            value = readout.liver_volume_ml
            status, message = readout.volume_status, readout.volume_message
        else:
            value, status, message = readout.liver_pdff_pct, readout.status, readout.message
        if value is None:
            reason = readout.message or "no fat-fraction image (not a Dixon scan)"
            rows.append(failed_row(sid, engine.method, target, f"subject {sid}: {reason}"))
        else:
            row = prediction_row(sid, engine.method, target, value, status=status, message=message)
            rows.append(row)
    return rows


def _metrics(manifest: Manifest, sid: str, mask: sitk.Image) -> dict[str, Any] | None:
    """Segmentation metrics against the subject's reference mask (None without one)."""
    if not manifest.has(sid, "liver_mask"):
        return None
    try:
        reference = manifest.liver_mask(sid)
        check_same_geometry(reference, mask, names=("liver_mask", "predicted mask"))
    except ImageError as exc:
        return {"subject_id": sid, "note": one_line(str(exc))}
    spacing = mask.GetSpacing()[::-1]
    metrics = segmentation_metrics(
        sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(mask), spacing
    )
    return {"subject_id": sid, **metrics}


def predict_subjects(
    engine: SegmentationEngine, manifest: Manifest, ids: Sequence[str], folder: Path | None
) -> list[dict[str, Any]]:
    """Result records of ``ids`` in order (failed subjects: failed rows naming them)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    key = engine.network_key() if folder is not None else ""
    fn = functools.partial(_predict_one, engine, manifest, folder, key)
    records = {}
    for outcome in _each_subject(engine, fn, ids, "segment", str(pick_device(engine.device))):
        if outcome.ok:
            records[outcome.item] = outcome.value
        else:
            message = subject_message(outcome.item, outcome.error)
            rows = [failed_row(outcome.item, engine.method, t, message) for t in engine.targets]
            records[outcome.item] = {"subject_id": outcome.item, "rows": rows, "mask": None}
    return [records[s] for s in ids]
