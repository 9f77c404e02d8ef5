"""UK Biobank's real station layout and an analytic body, written as a field-20201 zip.

Real zips do not hold six equal stations. From the head: 224 x 168 x 64 voxels (3 mm slices),
three breath-hold stations of 224 x 174 x 44 (4.5 mm), 224 x 162 x 72 (3.5 mm) and
224 x 156 x 64 (4 mm), all with 500 / 224 = 2.2321 mm pixels (the slice thicknesses here follow
the protocol's pattern of thicker breath-hold slices). :func:`ukb_station_geometry` lays these out
along z with overlapping ends; :func:`body_signal` is a body defined in millimetres (legs, trunk
with a liver, neck; subcutaneous fat around each), so the truth is known at any point;
:func:`write_realistic_zip` samples it on every station and writes the zip, optionally with the
faults real zips show (a swapped station, a missing station, water and fat of different size, a
missing series, a stray non-DICOM file). ``shrink`` divides the voxel counts (same field of view)
for fast tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverfat.data.ukbiobank.synthetic import BREATH_HOLD_STATIONS, Station, write_station_zip

#: UK Biobank's Dixon stations from the head: columns (x), rows (y), slices, slice spacing (mm).
UKB_STATIONS = (
    (224, 168, 64, 3.0),
    (224, 174, 44, 4.5),
    (224, 174, 44, 4.5),
    (224, 174, 44, 4.5),
    (224, 162, 72, 3.5),
    (224, 156, 64, 4.0),
)
#: Native in-plane pixel spacing (mm): a 500 mm field of view over 224 columns.
NATIVE_PIXEL_MM = 500 / 224
#: Overlap of neighbouring stations (mm, slice edge to slice edge).
OVERLAP_MM = 30.0

# The analytic body (mm; z = 0 at the knee end, +x left, +y posterior).
_LEGS_TOP_MM, _NECK_MM = 330.0, 1030.0
_PD = {"sat": 95.0, "muscle": 70.0, "liver": 80.0}
_FF = {"sat": 0.92, "muscle": 0.03, "liver": 0.12}


@dataclass(frozen=True)
class StationGeometry:
    """Voxel counts (x, y, z), spacing (x, y, z; mm) and first voxel centre (mm) of a station."""

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]

    def centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (mm) along x, y and z."""
        return tuple(
            self.origin_mm[i] + self.spacing_mm[i] * np.arange(self.size[i]) for i in range(3)
        )


def ukb_station_geometry(*, shrink: int = 1) -> list[StationGeometry]:
    """The six stations, knee end first, overlapping by :data:`OVERLAP_MM`, centred in-plane.

    ``shrink`` divides every voxel count (rounded, at least 4) and multiplies the spacings, so
    the field of view stays the same.
    """
    geometries, top_mm = [], 0.0
    for columns, rows, slices, slice_mm in reversed(UKB_STATIONS):
        nx, ny, nz = (max(4, round(n / shrink)) for n in (columns, rows, slices))
        dx = NATIVE_PIXEL_MM * columns / nx
        dy = NATIVE_PIXEL_MM * rows / ny
        dz = slice_mm * slices / nz
        low_edge = top_mm - OVERLAP_MM if geometries else 0.0
        origin = (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, low_edge + dz / 2)
        geometries.append(StationGeometry((nx, ny, nz), (dx, dy, dz), origin))
        top_mm = low_edge + nz * dz
    return geometries


def _ellipse(x, y, a, b, cx=0.0):
    return ((x - cx) / a) ** 2 + (y / b) ** 2 <= 1


def body_tissue(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of subcutaneous fat, muscle and liver at broadcast coordinates (mm)."""
    legs, neck = z < _LEGS_TOP_MM, z >= _NECK_MM
    trunk = ~legs & ~neck
    outer = (
        (legs & (_ellipse(x, y, 75, 75, -85) | _ellipse(x, y, 75, 75, 85)))
        | (trunk & _ellipse(x, y, 170, 115))
        | (neck & _ellipse(x, y, 65, 60))
    )
    inner = (
        (legs & (_ellipse(x, y, 60, 60, -85) | _ellipse(x, y, 60, 60, 85)))
        | (trunk & _ellipse(x, y, 148, 93))
        | (neck & _ellipse(x, y, 53, 48))
    )
    liver = inner & (((x + 70) / 85) ** 2 + (y / 70) ** 2 + ((z - 760) / 90) ** 2 <= 1)
    return {"sat": outer & ~inner, "muscle": inner & ~liver, "liver": liver}


def body_signal(x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat signal (signal units) of the analytic body at broadcast coordinates (mm)."""
    tissues = body_tissue(x, y, z)
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    water, fat = np.zeros(shape), np.zeros(shape)
    for name, mask in tissues.items():
        water[mask] = _PD[name] * (1 - _FF[name])
        fat[mask] = _PD[name] * _FF[name]
    return water, fat


def body_signal_on(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """:func:`body_signal` at the voxel centres of an identity-direction image, (z, y, x)."""
    x, y, z = (
        image.GetOrigin()[i] + image.GetSpacing()[i] * np.arange(image.GetSize()[i])
        for i in range(3)
    )
    return body_signal(x[None, None, :], y[None, :, None], z[:, None, None])


def station_arrays(geometry: StationGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat of the analytic body sampled on one station, (z, y, x)."""
    x, y, z = geometry.centres()
    return body_signal(x[None, None, :], y[None, :, None], z[:, None, None])


def write_realistic_zip(
    path: str | os.PathLike[str],
    *,
    eid: int,
    shrink: int = 1,
    swap_station: int | None = None,
    drop_station: int | None = None,
    crop_fat_station: int | None = None,
    skip_series: Sequence[tuple[int, str]] = (),
    extra_members: Sequence[tuple[str, bytes]] = (),
    seed: int = 0,
) -> Path:
    """Write the analytic body on UK Biobank's real stations as a zip, with optional faults.

    Stations are numbered from the head (1 = neck, 6 = knees), as ingestion reports them.

    Parameters
    ----------
    swap_station:
        This station's water and fat images are exchanged.
    drop_station:
        This station is left out entirely (a gap, or a shorter scan at an end).
    crop_fat_station:
        This station's fat series has 2 rows and 1 slice fewer than its water series.
    skip_series:
        ``(station number, kind)`` series left out (kind ``W``, ``F``, ``in``, ``opp``).
    """
    stations: dict[int, Station] = {}
    for index, geometry in enumerate(ukb_station_geometry(shrink=shrink)):
        number = len(UKB_STATIONS) - index
        water, fat = station_arrays(geometry)
        if number == swap_station:
            water, fat = fat, water
        if number == crop_fat_station:
            fat = fat[:-1, :-2, :]
        breath_hold = number in BREATH_HOLD_STATIONS
        stations[number] = Station(water, fat, geometry.spacing_mm, geometry.origin_mm, breath_hold)
    stations.pop(drop_station, None)
    numbers = sorted(stations, reverse=True)  # knee end first
    skip = [(numbers.index(number), kind) for number, kind in skip_series if number in stations]
    return write_station_zip(
        path,
        [stations[n] for n in numbers],
        eid=eid,
        seed=seed,
        skip_series=skip,
        extra_members=extra_members,
    )
