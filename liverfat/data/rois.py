"""ROI files: square regions of interest on axial slices, as JSON or as a label map, and the
pixels they cover.

Arrays are (z, y, x) = (slice, row, column). An ROI is the ``size x size`` pixel square whose
top-left pixel is ``(row, column)`` on axial slice ``slice``. A manifest's ``rois`` column names
a subject's ROI file, either

- a JSON file: a list of ``{slice, row, column, size[, lobe]}`` objects, or the object that
  ``liverfat radiomics rois --out DIR`` writes as ``DIR/<subject>_rois.json``
  (``{"subject_id": ..., "rois": [...], ...}``); or
- a label-map image on the subject's grid: one filled square per non-zero label.

Where ROIs are placed (automatically, from a liver mask) is the radiomics engine's business
(:mod:`liverfat.radiomics.rois`); this module only reads, writes and cuts them out, so every
engine that grades ROIs reads the same files the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverfat.data.io import read_header
from liverfat.data.manifest import MASKED_IMAGE_COLUMNS, Manifest
from liverfat.errors import ImageError

#: The Dixon channels :func:`roi_windows` can cut out: fat fraction (%), water and fat (a.u.).
ROI_CHANNELS = ("fat_fraction", "water", "fat")


@dataclass(frozen=True)
class Roi:
    """One square ROI: axial ``slice`` index, top-left ``row`` and ``column``, side ``size`` (px).

    ``lobe`` is ``right``, ``left`` or ``manual``.
    """

    slice: int
    row: int
    column: int
    size: int
    lobe: str = "manual"

    def window(self) -> tuple[int, slice, slice]:
        """Index expression selecting the ROI from a (z, y, x) array."""
        return (
            self.slice,
            slice(self.row, self.row + self.size),
            slice(self.column, self.column + self.size),
        )

    def overlaps(self, other: Roi) -> bool:
        """Whether the two squares share a pixel (same slice, overlapping extents)."""
        return (
            self.slice == other.slice
            and abs(self.row - other.row) < max(self.size, other.size)
            and abs(self.column - other.column) < max(self.size, other.size)
        )


# Reading and writing ------------------------------------------------------------------------------
def rois_from_label_map(labels: np.ndarray) -> list[Roi]:
    """One ROI per non-zero label of a (z, y, x) label map; each must be a filled square on one
    slice."""
    rois = []
    for label in np.unique(labels[labels > 0]):
        z, y, x = np.nonzero(labels == label)
        height, width = y.max() - y.min() + 1, x.max() - x.min() + 1
        if np.unique(z).size != 1 or height != width or z.size != height * width:
            raise ImageError(
                f"ROI label {int(label)} is not a filled square on one axial slice "
                f"({z.size} voxels over slices {sorted(set(z.tolist()))[:3]})"
            )
        rois.append(Roi(int(z[0]), int(y.min()), int(x.min()), int(height), "manual"))
    if not rois:
        raise ImageError("the ROI label map is empty")
    return rois


def rois_from_json(path: str | os.PathLike[str]) -> list[Roi]:
    """ROIs from a JSON file: a list of ``{slice, row, column, size[, lobe]}`` objects, or an
    object with such a list under ``rois`` (what ``radiomics rois --out`` writes)."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(items, dict):
            items = items["rois"]
        if not isinstance(items, list):
            raise TypeError(f"a JSON {type(items).__name__}, not a list")
        return [_roi_from_mapping(item) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(
            f"{path}: not a JSON list of {{slice, row, column, size}} ROIs ({exc})"
        ) from exc


def _roi_from_mapping(item: dict[str, Any]) -> Roi:
    return Roi(
        int(item["slice"]),
        int(item["row"]),
        int(item["column"]),
        int(item["size"]),
        str(item.get("lobe", "manual")),
    )


def load_saved_rois(path: str | os.PathLike[str]) -> list[Roi]:
    """ROIs from a review file ``<subject>_rois.json`` (either JSON form is accepted)."""
    return rois_from_json(path)


def check_rois_inside(rois: Sequence[Roi], shape_zyx: tuple[int, ...]) -> None:
    """Raise :class:`ImageError` if an ROI leaves the image grid of shape (z, y, x)."""
    for roi in rois:
        if not (
            0 <= roi.slice < shape_zyx[0]
            and roi.row >= 0
            and roi.row + roi.size <= shape_zyx[1]
            and roi.column >= 0
            and roi.column + roi.size <= shape_zyx[2]
        ):
            raise ImageError(f"ROI {roi} lies outside the image grid {tuple(shape_zyx)}")


def rois_to_json(rois: Sequence[Roi]) -> str:
    """The ROIs as a JSON list of ``{slice, row, column, size, lobe}`` objects."""
    return json.dumps([asdict(r) for r in rois], indent=1)


def rois_to_label_map(rois: Sequence[Roi], shape_zyx: tuple[int, ...]) -> np.ndarray:
    """A uint8 (z, y, x) label map with ROI ``k`` (counted from 1) labelled ``k``."""
    labels = np.zeros(shape_zyx, np.uint8)
    for number, roi in enumerate(rois, start=1):
        labels[roi.window()] = number
    return labels


# From a manifest --------------------------------------------------------------------------------
def subject_rois_from_manifest(
    manifest: Manifest, sid: str, shape_zyx: tuple[int, ...] | None = None
) -> list[Roi]:
    """The ROIs in the manifest's ``rois`` column for subject ``sid`` (JSON or label map),
    checked to lie on the image grid ``shape_zyx`` (z, y, x; default: read from the header of
    the subject's first image).

    Raises
    ------
    ImageError
        One line naming the subject when the column or the file is missing, the file is not an
        ROI file, or an ROI leaves the grid.
    """
    path = manifest.image_path(sid, "rois") if "rois" in manifest.subjects.columns else None
    if path is None:
        raise ImageError(f"subject {sid}: no rois file in the manifest (column rois)")
    try:
        if path.suffix.lower() == ".json":
            rois = rois_from_json(path)
            if not rois:
                raise ImageError(f"{path}: holds no ROI")
        else:
            rois = rois_from_label_map(sitk.GetArrayFromImage(manifest.read_image(sid, "rois")))
        check_rois_inside(rois, shape_zyx or _grid_shape(manifest, sid))
    except ImageError as exc:
        text = str(exc)
        raise ImageError(text if sid in text else f"subject {sid}: rois: {text}") from exc
    return rois


def _grid_shape(manifest: Manifest, sid: str) -> tuple[int, ...]:
    """(z, y, x) size of the subject's images, from the first image header it has."""
    for column in MASKED_IMAGE_COLUMNS:
        path = manifest.image_path(sid, column) if column in manifest.subjects.columns else None
        if path is not None:
            return tuple(int(n) for n in reversed(read_header(path).GetSize()))
    raise ImageError(f"subject {sid}: no image to place the ROIs on")


def roi_windows(
    manifest: Manifest,
    sid: str,
    rois: Sequence[Roi],
    channels: Sequence[str] = ("fat_fraction",),
    margin_px: int = 2,
) -> np.ndarray:
    """Each ROI's square plus ``margin_px`` pixels of context on every side, per channel.

    Read through ``manifest.dixon(sid)``: ``fat_fraction`` in %, ``water`` and ``fat`` in the
    scanner's arbitrary units. Where the window leaves the image it is edge-padded (the nearest
    pixel of the slice repeated).

    Returns
    -------
    numpy.ndarray
        float32, shape (n_rois, n_channels, size + 2 margin, size + 2 margin); all ROIs must share
        one size.
    """
    unknown = [c for c in channels if c not in ROI_CHANNELS]
    if unknown or not channels:
        raise ImageError(f"channels must be among {', '.join(ROI_CHANNELS)}, got {list(channels)}")
    if margin_px < 0:
        raise ImageError(f"margin_px must be >= 0, got {margin_px}")
    sizes = sorted({roi.size for roi in rois})
    if len(sizes) != 1:
        raise ImageError(f"subject {sid}: the ROIs must share one size, got sizes {sizes} px")
    dixon = manifest.dixon(sid)
    images = {"fat_fraction": dixon.fat_fraction, "water": dixon.water, "fat": dixon.fat}
    arrays = [sitk.GetArrayViewFromImage(images[c]) for c in channels]
    try:
        check_rois_inside(rois, arrays[0].shape)
    except ImageError as exc:
        raise ImageError(f"subject {sid}: {exc}") from exc
    side = sizes[0] + 2 * margin_px
    out = np.empty((len(rois), len(channels), side, side), np.float32)
    for i, roi in enumerate(rois):
        for j, array in enumerate(arrays):
            out[i, j] = _window(array[roi.slice], roi, margin_px)
    return out


def _window(plane: np.ndarray, roi: Roi, margin: int) -> np.ndarray:
    """The ROI square of a (y, x) plane plus ``margin`` pixels each side, edge-padded."""
    rows = np.clip(np.arange(roi.row - margin, roi.row + roi.size + margin), 0, plane.shape[0] - 1)
    cols = np.arange(roi.column - margin, roi.column + roi.size + margin)
    cols = np.clip(cols, 0, plane.shape[1] - 1)
    return plane[np.ix_(rows, cols)]
