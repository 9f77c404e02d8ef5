"""Fusing a subject's stations into one neck-to-knee volume on a common grid.

Water and fat of each station are paired, and cropped to their common size where they differ
(:func:`station_pairs`). Each station is resampled (linear) onto the common grid and overlaps are
blended with weights that ramp linearly across each seam (:func:`fuse_stations`). By default the
grid keeps the stations' own in-plane pixels (UK Biobank: 500 / 224 = 2.2321 mm, so no in-plane
resampling blur) with 3 mm slices (:func:`native_spacing`); output slices no station covers are
zero and reported by :func:`uncovered_runs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from liverfat.data.geometry import check_same_geometry
from liverfat.data.ukbiobank.stations import TRIM_SLICES, Series, station_image
from liverfat.errors import ImageError

#: UK Biobank's native in-plane pixel spacing (mm): a 500 mm field of view over 224 columns.
NATIVE_PIXEL_MM = 500 / 224
#: Output slice spacing (mm) of the fused volume.
OUTPUT_Z_MM = 3.0
#: The fused grid of a UK Biobank zip by default (x, y, z; mm): native pixels, 3 mm slices.
OUTPUT_SPACING_MM = (NATIVE_PIXEL_MM, NATIVE_PIXEL_MM, OUTPUT_Z_MM)
#: Slice positions of water and fat closer than this are the same slice (mm).
SAME_SLICE_MM = 0.01


@dataclass
class StationPair:
    """One station's water and fat images on one grid; ``cropped`` says how, if they were cut."""

    water: sitk.Image
    fat: sitk.Image
    cropped: str = ""


def _size_text(image: sitk.Image) -> str:
    return "x".join(str(n) for n in image.GetSize())


def _common_slices(water: Series, fat: Series) -> tuple[Series, Series]:
    """Both series reduced to the slice positions they share (within :data:`SAME_SLICE_MM`)."""
    w_z, f_z = water.positions_mm, fat.positions_mm

    def shared(slices: list, z: np.ndarray, other: np.ndarray) -> list:
        return [
            ds for ds, at in zip(slices, z, strict=True) if np.abs(other - at).min() < SAME_SLICE_MM
        ]

    keep_w, keep_f = shared(water.slices, w_z, f_z), shared(fat.slices, f_z, w_z)
    return dataclasses.replace(water, slices=keep_w), dataclasses.replace(fat, slices=keep_f)


def station_pair(
    water: Series, fat: Series, subject_id: str, label: str, *, trim_slices: int = TRIM_SLICES
) -> StationPair:
    """Water and fat images of one station, cropped to their common size where they differ.

    Slices are kept where both series have one; in-plane both are cut to the smaller row and
    column counts from the first pixel (the origin stays). Raises :class:`ImageError` when the
    two still differ in geometry (spacing, origin, orientation).
    """
    sizes = [(len(s.slices), int(s.slices[0].Rows), int(s.slices[0].Columns)) for s in (water, fat)]
    cropped = ""
    if sizes[0] != sizes[1]:
        water, fat = _common_slices(water, fat)
    w = station_image(water, subject_id, trim_slices=trim_slices)
    f = station_image(fat, subject_id, trim_slices=trim_slices)
    if sizes[0] != sizes[1]:
        nx, ny = (min(a, b) for a, b in zip(w.GetSize()[:2], f.GetSize()[:2], strict=True))
        w, f = w[:nx, :ny, :], f[:nx, :ny, :]
        cropped = (
            f"{label}: water and fat differ in size ({sizes[0][2]}x{sizes[0][1]}x{sizes[0][0]} vs "
            f"{sizes[1][2]}x{sizes[1][1]}x{sizes[1][0]} voxels), cropped to the common "
            f"{nx}x{ny}x{len(water.slices)}"
        )
    try:
        check_same_geometry(w, f, names=(f"water {label}", f"fat {label}"))
    except ImageError as exc:
        raise ImageError(f"{subject_id}: {exc}") from exc
    return StationPair(w, f, cropped)


def native_spacing(stations: Sequence[sitk.Image], z_mm: float = OUTPUT_Z_MM) -> tuple[float, ...]:
    """The in-plane pixel spacing of the station with the most in-plane voxels, and ``z_mm``."""
    reference = max(stations, key=lambda s: s.GetSize()[0] * s.GetSize()[1])
    return (*reference.GetSpacing()[:2], float(z_mm))


def _corners_mm(image: sitk.Image, *, z_at_centres: bool) -> np.ndarray:
    """Physical corners of an image: in-plane at the pixel edges, along z at the slice centres
    (``z_at_centres``) or edges."""
    size = image.GetSize()
    z_pad = 0.0 if z_at_centres else 0.5
    corners = []
    for i in (-0.5, size[0] - 0.5):
        for j in (-0.5, size[1] - 0.5):
            for k in (-z_pad, size[2] - 1 + z_pad):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((i, j, k)))
    return np.array(corners)


def _lattice_axis(low: float, high: float, step: float, anchor: float) -> tuple[float, int]:
    """First centre and count of the points ``anchor + n * step`` within ``[low, high]`` edges."""
    first = anchor + step * np.ceil((low + step / 2 - anchor) / step - 1e-6)
    count = int(np.floor((high - step / 2 - first) / step + 1e-6)) + 1
    return float(first), count


def fusion_grid(stations: Sequence[sitk.Image], spacing_mm: Sequence[float]) -> sitk.Image:
    """An empty float32 image on the common grid (identity direction) covering every station.

    In-plane the grid spans the stations' pixel edges; along z it spans the outermost slice
    centres, so no output slice depends on extrapolation beyond a station. When the in-plane
    spacing is that of the widest station, the grid keeps that station's pixel centres (no
    in-plane resampling for stations on its lattice); otherwise it is centred on the extent.
    """
    spacing = np.asarray(spacing_mm, float)
    corners = np.concatenate([_corners_mm(s, z_at_centres=True) for s in stations])
    low, high = corners.min(axis=0), corners.max(axis=0)
    size = np.floor((high - low) / spacing + 1e-3).astype(int)
    size[2] += 1  # z spans centre to centre
    origin = low.copy()
    origin[:2] += spacing[:2] / 2
    # Centre the in-plane and z grids on the covered extent.
    origin[:2] += ((high - low)[:2] - size[:2] * spacing[:2]) / 2
    origin[2] += ((high - low)[2] - (size[2] - 1) * spacing[2]) / 2
    reference = max(stations, key=lambda s: s.GetSize()[0] * s.GetSize()[1])
    if np.allclose(reference.GetSpacing()[:2], spacing[:2], rtol=1e-5, atol=0):
        for axis in (0, 1):
            anchor = reference.GetOrigin()[axis]
            origin[axis], size[axis] = _lattice_axis(low[axis], high[axis], spacing[axis], anchor)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def z_range_mm(image: sitk.Image) -> tuple[float, float]:
    """Physical z of an image's first and last slice centres (low, high)."""
    corners = _corners_mm(image, z_at_centres=True)[:, 2]
    return float(corners.min()), float(corners.max())


def _slice_span(station: sitk.Image, grid: sitk.Image) -> tuple[int, int]:
    """First and last output slice (inclusive) within a station's slice centres; empty if
    first > last."""
    nz = grid.GetSize()[2]
    z0, dz = grid.GetOrigin()[2], grid.GetSpacing()[2]
    low, high = z_range_mm(station)
    k_low = int(np.ceil((low - z0) / dz - 1e-6))
    k_high = int(np.floor((high - z0) / dz + 1e-6))
    return max(k_low, 0), min(k_high, nz - 1)


def uncovered_runs(stations: Sequence[sitk.Image], grid: sitk.Image) -> list[tuple[int, int]]:
    """Runs of output slices (first, last; inclusive) that no station covers (zero-filled)."""
    covered = np.zeros(grid.GetSize()[2], bool)
    for station in stations:
        k_low, k_high = _slice_span(station, grid)
        covered[k_low : k_high + 1] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[1], covered.astype(int), [1]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def fuse_stations(stations: Sequence[sitk.Image], grid: sitk.Image) -> np.ndarray:
    """Resample stations onto ``grid`` (linear) and blend them; returns a (z, y, x) float32 array.

    Each station's weight along z is its distance to its nearer end slice plus half an output
    slice, so across an overlap ``[a, b]`` the upper station's share rises linearly from about 0
    at ``a`` to about 1 at ``b`` (linear blending across the seam). Voxels no station covers are 0.
    """
    nx, ny, nz = grid.GetSize()
    z0, dz = grid.GetOrigin()[2], grid.GetSpacing()[2]
    z_out = z0 + dz * np.arange(nz)
    total = np.zeros((nz, ny, nx), np.float32)
    weights = np.zeros((nz, ny, nx), np.float32)
    for station in stations:
        low, high = z_range_mm(station)
        k_low, k_high = _slice_span(station, grid)
        if k_high < k_low:
            continue
        reference = sitk.Image([nx, ny, k_high - k_low + 1], sitk.sitkFloat32)
        reference.SetSpacing(grid.GetSpacing())
        reference.SetOrigin((grid.GetOrigin()[0], grid.GetOrigin()[1], float(z_out[k_low])))
        values = sitk.GetArrayFromImage(
            sitk.Resample(
                station, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
            )
        )
        ones = sitk.Image(station.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(station)
        covered = sitk.GetArrayFromImage(  # a copy: a view would outlive its temporary image
            sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        )
        z = z_out[k_low : k_high + 1]
        ramp = (np.minimum(z - low, high - z) + dz / 2).astype(np.float32)[:, None, None]
        weight = covered * ramp
        total[k_low : k_high + 1] += weight * values
        weights[k_low : k_high + 1] += weight
    out = np.zeros_like(total)
    np.divide(total, weights, out=out, where=weights > 0)
    return out
