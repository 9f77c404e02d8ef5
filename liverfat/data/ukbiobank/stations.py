"""DICOM slices to Dixon series to stations: grouping, kinds, repeats, and one station's image.

Members that are not DICOM at all are skipped (the caller notes them); slices are grouped into
series; series descriptions give the kind (suffix ``_W``, ``_F``,
``_in``, ``_opp``); a station acquired twice keeps its newest series (series date and time);
water and fat stations must sit at the same positions. A few slices at each end of every station
are trimmed (fold-over artefacts) when it becomes an image.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverfat.data.io import slice_normal, slice_position_mm
from liverfat.errors import ImageError, one_line

#: Slices removed at each end of every station before fusion (fold-over artefacts).
TRIM_SLICES = 2
#: Stations of one kind whose centres lie closer than this are one station acquired twice (mm).
SAME_STATION_MM = 20.0
#: Water and fat stations must sit within this distance of each other (mm): their centres, or
#: their first or last slices when one is cut short.
STATION_MATCH_MM = 1.0

KINDS = {"w": "water", "f": "fat", "in": "in_phase", "opp": "opposed_phase"}
_KIND_SUFFIX = re.compile(r"_(w|f|in|opp)$", re.IGNORECASE)


@dataclass
class Series:
    """The slices of one DICOM series (one station of one kind), sorted along the slice normal."""

    uid: str
    description: str
    kind: str
    acquired: str  # series date + time, sortable
    slices: list[Any] = field(default_factory=list)  # pydicom datasets

    @property
    def positions_mm(self) -> np.ndarray:
        return np.array([slice_position_mm(ds) for ds in self.slices])

    @property
    def centre_mm(self) -> float:
        return float(np.mean(self.positions_mm))

    @property
    def label(self) -> str:
        return f"{self.description} ({self.uid[-12:]})"


def series_kind(description: str) -> str | None:
    """``water``, ``fat``, ``in_phase``, ``opposed_phase`` from a Dixon series description."""
    if "dixon" not in description.lower():
        return None
    match = _KIND_SUFFIX.search(description.strip())
    return KINDS[match.group(1).lower()] if match else None


def read_series(
    members: dict[str, bytes], subject_id: str, *, manifest_name: str | None
) -> tuple[list[Series], list[str]]:
    """Parse every DICOM member and group the Dixon series.

    Returns the series and the names of the members skipped because they are not DICOM at all
    (a stray text file, say). A DICOM file that is damaged raises :class:`ImageError`.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, Series] = {}
    skipped: list[str] = []
    for name, data in members.items():
        if name == manifest_name:
            continue
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            skipped.append(name)
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
            raise ImageError(
                f"{subject_id}: member {name} is a damaged DICOM file ({one_line(exc, limit=200)})"
            ) from exc
        kind = series_kind(str(ds.get("SeriesDescription", "")))
        if kind is None:
            continue
        missing = [
            tag
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if tag not in ds
        ]
        if missing:
            raise ImageError(f"{subject_id}: slice {name} lacks {', '.join(missing)}")
        ds.filename = name
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid not in groups:
            acquired = f"{ds.get('SeriesDate', '')}{ds.get('SeriesTime', '')}"
            groups[uid] = Series(uid, str(ds.SeriesDescription), kind, acquired)
        groups[uid].slices.append(ds)
    for series in groups.values():
        series.slices.sort(key=slice_position_mm)
    return list(groups.values()), skipped


def select_stations(series: list[Series], subject_id: str) -> dict[str, list[Series]]:
    """Stations of each kind, feet to head; a station acquired twice keeps its newest series.

    Raises :class:`ImageError` when there is no water or fat series or when the water and fat
    stations do not sit at the same positions (centres, or first or last slices, when one series
    of a station is cut short).
    """
    by_kind: dict[str, list[Series]] = defaultdict(list)
    for s in sorted(series, key=lambda s: s.centre_mm):
        stations = by_kind[s.kind]
        if stations and abs(stations[-1].centre_mm - s.centre_mm) < SAME_STATION_MM:
            if s.acquired > stations[-1].acquired:
                stations[-1] = s
        else:
            stations.append(s)
    for kind in ("water", "fat"):
        if not by_kind.get(kind):
            found = ", ".join(sorted({s.description for s in series})) or "no Dixon series"
            raise ImageError(f"{subject_id}: no {kind} series in the zip (found {found})")
    water = np.array([s.centre_mm for s in by_kind["water"]])
    fat = np.array([s.centre_mm for s in by_kind["fat"]])
    if water.shape != fat.shape or not all(
        _same_place(w, f) for w, f in zip(by_kind["water"], by_kind["fat"], strict=True)
    ):
        raise ImageError(
            f"{subject_id}: water stations at {_mm_list(water)} mm and fat stations at "
            f"{_mm_list(fat)} mm do not match"
        )
    return dict(by_kind)


def _same_place(water: Series, fat: Series) -> bool:
    """Whether two series are one station: their centres, first slices or last slices lie within
    :data:`STATION_MATCH_MM` (a series cut short at one end still starts or ends in place)."""
    w, f = water.positions_mm, fat.positions_mm
    pairs = ((water.centre_mm, fat.centre_mm), (w.min(), f.min()), (w.max(), f.max()))
    return any(abs(a - b) <= STATION_MATCH_MM for a, b in pairs)


def _mm_list(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in values) + "]"


def station_image(series: Series, subject_id: str, *, trim_slices: int = TRIM_SLICES) -> sitk.Image:
    """One station as a float32 image (rescaled signal), ``trim_slices`` removed at each end.

    Raises :class:`ImageError` for unreadable pixel data, slices of differing size or
    orientation, duplicate or unevenly spaced slices (a missing slice), or a station too short
    to trim.
    """
    slices = series.slices
    if len(slices) - 2 * trim_slices < 2:
        raise ImageError(
            f"{subject_id}: series {series.label} has {len(slices)} slices, too few to trim "
            f"{trim_slices} at each end"
        )
    first = slices[0]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    planes = [_plane(ds, series, subject_id, orientation) for ds in slices]
    gaps = np.diff(series.positions_mm)
    if gaps.min() <= 1e-3 or (gaps.max() - gaps.min()) > 0.01 * gaps.mean() + 1e-3:
        raise ImageError(
            f"{subject_id}: series {series.label} has uneven slice spacing "
            f"({gaps.min():.2f}-{gaps.max():.2f} mm): a slice is missing or duplicated"
        )
    keep = slice(trim_slices, len(planes) - trim_slices)
    image = sitk.GetImageFromArray(np.stack(planes[keep]))
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    image.SetSpacing((column_mm, row_mm, float(gaps.mean())))
    normal = slice_normal(orientation)
    image.SetDirection(np.column_stack([orientation[:3], orientation[3:], normal]).ravel().tolist())
    image.SetOrigin([float(v) for v in slices[trim_slices].ImagePositionPatient])
    return image


def _plane(ds, series: Series, subject_id: str, orientation: np.ndarray) -> np.ndarray:
    """One slice's rescaled signal (float32), checked against the series' first slice."""
    first = series.slices[0]
    if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
        raise ImageError(
            f"{subject_id}: slice {ds.filename} of {series.label}: orientation differs"
        )
    try:
        plane = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - pydicom/numpy raise many types on bad pixels
        raise ImageError(
            f"{subject_id}: slice {ds.filename} of {series.label} has unreadable pixel data "
            f"({one_line(exc, limit=200)})"
        ) from exc
    if plane.shape != (int(first.Rows), int(first.Columns)):
        raise ImageError(
            f"{subject_id}: slice {ds.filename} of {series.label} is {plane.shape}, "
            f"not {(int(first.Rows), int(first.Columns))}"
        )
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return plane * np.float32(slope) + np.float32(intercept)
