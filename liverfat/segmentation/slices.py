"""Volumes to network slices and back: in-plane resampling, pad/crop, normalisation, context.

A volume (SimpleITK, array order z y x) becomes a stack of transversal slices on a common
in-plane grid: each channel is resampled in plane to ``pixel_spacing_mm`` with linear
interpolation (never across slices), centre-padded or cropped to ``slice_size`` (multiples of
16, for four poolings), and normalised. The network sees each slice with ``context`` neighbours
on either side as extra channels (:func:`context_indices`). :meth:`PreparedVolume.to_subject_grid`
inverts every step, so a probability map comes back on the subject's own grid and geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from liverfat.data.geometry import geometry_of
from liverfat.errors import ImageError

#: Normalisation modes: percentile clipping then min-max to [0, 1] over the whole volume or each
#: slice, or the raw intensities.
NORMALISATIONS = ("volume", "slice", "none")
#: Percentiles (low, high) clipped before min-max scaling.
CLIP_PERCENTILES = (0.5, 99.5)
#: Slice sizes are multiples of this (four 2x2 poolings).
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class PreparedVolume:
    """A subject's channels on the network's in-plane grid, and how to go back.

    Attributes
    ----------
    slices:
        float32 (z, channels, height, width), normalised.
    geometry:
        The subject's grid: size, spacing (mm), origin (mm) and direction
        (:func:`liverfat.data.geometry.geometry_of`).
    resampled_size:
        In-plane size (x, y) after resampling, before pad/crop.
    offset:
        Where the resampled slice starts in the padded one (x, y; negative: it was cropped).
    pixel_spacing_mm:
        The network grid's in-plane spacing (x, y), mm.
    """

    slices: np.ndarray
    geometry: dict[str, tuple]
    resampled_size: tuple[int, int]
    offset: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]

    def to_subject_grid(self, probability: np.ndarray) -> sitk.Image:
        """A (z, height, width) map on the network grid back on the subject's grid (float32,
        linear interpolation); threshold it for a mask."""
        nx, ny = self.resampled_size
        ox, oy = self.offset
        h, w = probability.shape[1:]
        out = np.zeros((probability.shape[0], ny, nx), np.float32)
        src_y, dst_y = _overlap(oy, h, ny)
        src_x, dst_x = _overlap(ox, w, nx)
        out[:, dst_y, dst_x] = probability[:, src_y, src_x]
        image = sitk.GetImageFromArray(out)
        grid = self.geometry
        image.SetSpacing((*self.pixel_spacing_mm, grid["spacing"][2]))
        image.SetOrigin(grid["origin"])
        image.SetDirection(grid["direction"])
        return sitk.Resample(
            image,
            grid["size"],
            sitk.Transform(),
            sitk.sitkLinear,
            grid["origin"],
            grid["spacing"],
            grid["direction"],
            0.0,
            sitk.sitkFloat32,
        )


def _overlap(offset: int, padded: int, resampled: int) -> tuple[slice, slice]:
    """Slices (in the padded array, in the resampled one) of their common part."""
    start = max(offset, 0)
    stop = min(offset + resampled, padded)
    return slice(start, stop), slice(start - offset, stop - offset)


def padded_size(size_px: int) -> int:
    """The smallest multiple of :data:`SIZE_MULTIPLE` that holds ``size_px`` pixels."""
    return int(np.ceil(size_px / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def resampled_size(image: sitk.Image, pixel_spacing_mm: Sequence[float]) -> tuple[int, int]:
    """In-plane size (x, y) of ``image`` resampled to ``pixel_spacing_mm`` (x, y)."""
    size, spacing = image.GetSize(), image.GetSpacing()
    return tuple(max(1, int(round(size[i] * spacing[i] / pixel_spacing_mm[i]))) for i in (0, 1))


def _resample_in_plane(
    image: sitk.Image, pixel_spacing_mm: Sequence[float], size: Sequence[int]
) -> sitk.Image:
    reference = sitk.Image(int(size[0]), int(size[1]), image.GetSize()[2], sitk.sitkFloat32)
    reference.SetSpacing((*pixel_spacing_mm, image.GetSpacing()[2]))
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0
    )


def normalise(volume: np.ndarray, mode: str) -> np.ndarray:
    """Percentile clipping (:data:`CLIP_PERCENTILES`) and min-max to [0, 1] of a (z, y, x)
    channel, over the whole volume or per slice; ``none`` returns it unchanged."""
    if mode == "none":
        return volume.astype(np.float32)
    if mode not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORMALISATIONS}")
    axes = None if mode == "volume" else (1, 2)
    low, high = np.percentile(volume, CLIP_PERCENTILES, axis=axes, keepdims=True)
    scale = np.where(high > low, high - low, 1.0)
    return np.clip((volume - low) / scale, 0.0, 1.0).astype(np.float32)


def prepare_volume(
    channels: Sequence[sitk.Image],
    *,
    pixel_spacing_mm: Sequence[float],
    slice_size: Sequence[int],
    normalisation: str = "volume",
    subject_id: str = "subject",
) -> PreparedVolume:
    """Resample, pad/crop and normalise a subject's channels (all on one grid).

    ``slice_size`` is (height, width) in pixels of the network grid.
    """
    first = channels[0]
    if first.GetDimension() != 3:
        raise ImageError(f"subject {subject_id}: a 3D image is needed, got {first.GetDimension()}D")
    size = resampled_size(first, pixel_spacing_mm)
    h, w = (int(s) for s in slice_size)
    offset = ((w - size[0]) // 2, (h - size[1]) // 2)
    stack = np.zeros((first.GetSize()[2], len(channels), h, w), np.float32)
    src_y, dst_y = _overlap(offset[1], h, size[1])
    src_x, dst_x = _overlap(offset[0], w, size[0])
    for c, image in enumerate(channels):
        array = sitk.GetArrayFromImage(_resample_in_plane(image, pixel_spacing_mm, size))
        if not np.isfinite(array).all():
            raise ImageError(f"subject {subject_id}: channel {c} has NaN or infinite voxels")
        stack[:, c, src_y, src_x] = normalise(array, normalisation)[:, dst_y, dst_x]
    spacing = tuple(float(s) for s in pixel_spacing_mm)
    return PreparedVolume(stack, geometry_of(first), size, offset, spacing)


def prepare_mask(mask: sitk.Image, prepared: PreparedVolume) -> np.ndarray:
    """A mask on the prepared volume's network grid: uint8 (z, height, width), the linearly
    resampled mask thresholded at 0.5."""
    nx, ny = prepared.resampled_size
    binary = sitk.Cast(mask > 0, sitk.sitkFloat32)
    resampled = sitk.GetArrayFromImage(
        _resample_in_plane(binary, prepared.pixel_spacing_mm, (nx, ny))
    )
    z, _, h, w = prepared.slices.shape
    out = np.zeros((z, h, w), np.uint8)
    src_y, dst_y = _overlap(prepared.offset[1], h, ny)
    src_x, dst_x = _overlap(prepared.offset[0], w, nx)
    out[:, src_y, src_x] = resampled[:, dst_y, dst_x] >= 0.5
    return out


def context_indices(n_slices: int, context: int) -> np.ndarray:
    """(n_slices, 2 context + 1) slice indices of each slice's neighbourhood, edges repeated."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.arange(n_slices)[:, None] + offsets[None, :], 0, n_slices - 1)
