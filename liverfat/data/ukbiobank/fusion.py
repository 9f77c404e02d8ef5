"""Fusing a subject's stations into one neck-to-knee volume on a common grid.

Each station is resampled (linear) onto the common grid (2.23 x 2.23 x 3 mm by default, identity
direction), and overlaps are blended with weights that ramp linearly across each seam.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from liverfat.data.geometry import check_same_geometry
from liverfat.data.ukbiobank.stations import TRIM_SLICES, Series, station_image
from liverfat.errors import ImageError

#: Output voxel spacing (x, y, z; mm) of the fused neck-to-knee volume.
OUTPUT_SPACING_MM = (2.23, 2.23, 3.0)


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


def fusion_grid(stations: Sequence[sitk.Image], spacing_mm: Sequence[float]) -> sitk.Image:
    """An empty float32 image on the common grid (identity direction) covering every station.

    In-plane the grid spans the stations' pixel edges; along z it spans the outermost slice
    centres, so no output slice depends on extrapolation beyond a station.
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
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def _z_range_mm(image: sitk.Image) -> tuple[float, float]:
    """Physical z of an image's first and last slice centres (low, high)."""
    corners = _corners_mm(image, z_at_centres=True)[:, 2]
    return float(corners.min()), float(corners.max())


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
        low, high = _z_range_mm(station)
        k_low = int(np.ceil((low - z0) / dz - 1e-6))
        k_high = int(np.floor((high - z0) / dz + 1e-6))
        k_low, k_high = max(k_low, 0), min(k_high, nz - 1)
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


def fuse_dixon(
    stations: dict[str, list[Series]],
    subject_id: str,
    *,
    spacing_mm: Sequence[float] = OUTPUT_SPACING_MM,
    trim_slices: int = TRIM_SLICES,
) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The common grid and the fused water and fat arrays (z, y, x; float32) of one subject.

    ``stations`` is :func:`~liverfat.data.ukbiobank.stations.select_stations`' answer. Raises
    :class:`ImageError` when a station cannot be read or a water station and its fat station do
    not share their grid.
    """
    water_stations = [
        station_image(s, subject_id, trim_slices=trim_slices) for s in stations["water"]
    ]
    fat_stations = [station_image(s, subject_id, trim_slices=trim_slices) for s in stations["fat"]]
    for k, (w, f) in enumerate(zip(water_stations, fat_stations, strict=True)):
        try:
            check_same_geometry(w, f, names=(f"water station {k + 1}", f"fat station {k + 1}"))
        except ImageError as exc:
            raise ImageError(f"{subject_id}: {exc}") from exc
    grid = fusion_grid(water_stations, spacing_mm)
    return grid, fuse_stations(water_stations, grid), fuse_stations(fat_stations, grid)
