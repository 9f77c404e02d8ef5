"""UK Biobank ingestion: neck-to-knee Dixon zips (field 20201) to fused volumes and a manifest.

One zip per subject and visit (``<eid>_20201_<instance>_<array>.zip``) holds six overlapping axial
stations, each as water, fat, in-phase and opposed-phase series (``Dixon_noBH_W``,
``Dixon_BH_17s_F``, ...), plus a manifest CSV whose header does not line up with its rows.
:func:`ingest_zip` turns one zip into NIfTI volumes on a common 2.23 x 2.23 x 3 mm grid:

1. the zip is treated as untrusted input: member paths that would escape the output folder,
   absurd compression ratios (zip bombs), oversized or truncated members, members the manifest
   lists but the zip lacks, and non-DICOM members each stop that subject with one clear line;
2. slices are grouped into series; series descriptions give the kind (suffix ``_W``, ``_F``,
   ``_in``, ``_opp``); a station acquired twice keeps its newest series (series date and time);
   water and fat stations must sit at the same positions;
3. a few slices at each end of every station are trimmed (fold-over artefacts), each station is
   resampled (linear) onto the common grid, and overlaps are blended with weights that ramp
   linearly across each seam;
4. water, fat, fat fraction (%) and the body mask of the UK Biobank liver-fat study are written.

:func:`ingest_ukb` runs many zips through :func:`liverfat.parallel.map_subjects` (resumable: a
subject whose ``ingest.json`` exists is skipped), joins reference and covariate fields from a
UK Biobank CSV extract, and writes ``manifest.yaml``, ``subjects.csv`` and ``ingest_status.csv``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import time
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.dixon import body_mask, fat_fraction
from liverfat.data.geometry import check_same_geometry
from liverfat.data.io import write_volume
from liverfat.data.manifest import write_subject_table
from liverfat.errors import ImageError, LiverfatError, one_line
from liverfat.parallel import map_subjects

#: Output voxel spacing (x, y, z; mm) of the fused neck-to-knee volume.
OUTPUT_SPACING_MM = (2.23, 2.23, 3.0)
#: Slices removed at each end of every station before fusion (fold-over artefacts).
TRIM_SLICES = 2
#: Safety limits on one zip.
MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 4 * 2**30
MAX_COMPRESSION_RATIO = 100.0
#: Members smaller than this are exempt from the ratio check (a small file cannot be a bomb).
RATIO_CHECK_MIN_BYTES = 2**20
#: Stations of one kind whose centres lie closer than this are one station acquired twice (mm).
SAME_STATION_MM = 20.0
#: Water and fat stations must sit within this distance of each other (mm).
STATION_MATCH_MM = 1.0

ZIP_NAME = re.compile(r"^(\d+)_20201_(\d+)_(\d+)\.zip$")
KINDS = {"w": "water", "f": "fat", "in": "in_phase", "opp": "opposed_phase"}
_KIND_SUFFIX = re.compile(r"_(w|f|in|opp)$", re.IGNORECASE)
STATUS_NAME = "ingest_status.csv"
STATUS_COLUMNS = ["subject_id", "zip", "status", "message", "n_stations", "seconds"]
DONE_NAME = "ingest.json"
OUTPUT_IMAGES = ("water", "fat", "fat_fraction", "body_mask")

#: The UK Biobank fields read from a CSV extract: subject-table column, unit, meaning, instance.
#: ``instance`` "visit" means the zip's own instance (2 = first imaging visit).
UKB_FIELDS: dict[int, dict[str, Any]] = {
    20201: {
        "column": None,
        "unit": "DICOM zip",
        "meaning": "Dixon technique for internal fat, neck to knee (the images)",
        "instance": "visit",
    },
    22402: {
        "column": "liver_pdff_pct",
        "unit": "%",
        "meaning": "Liver fat percentage (proton density fat fraction, dedicated liver MRI)",
        "instance": "visit",
    },
    22436: {
        "column": "liver_pdff_22436_pct",
        "unit": "%",
        "meaning": "Liver proton density fat fraction (AMRA), second reference",
        "instance": "visit",
    },
    31: {
        "column": "sex",
        "unit": "coded 0 female, 1 male",
        "meaning": "Sex",
        "instance": 0,
    },
    34: {"column": None, "unit": "year", "meaning": "Year of birth (for age)", "instance": 0},
    52: {
        "column": None,
        "unit": "month 1-12",
        "meaning": "Month of birth (for age)",
        "instance": 0,
    },
    53: {
        "column": "scan_date",
        "unit": "date YYYY-MM-DD",
        "meaning": "Date of attending assessment centre (scan date, for age)",
        "instance": "visit",
    },
    12144: {"column": "height", "unit": "cm", "meaning": "Standing height", "instance": "visit"},
    21002: {"column": "weight", "unit": "kg", "meaning": "Weight", "instance": "visit"},
    21001: {
        "column": "bmi",
        "unit": "kg/m^2",
        "meaning": "Body mass index",
        "instance": "visit",
    },
}

TARGETS = {
    "liver_pdff_pct": {
        "meaning": "liver PDFF, UK Biobank field 22402 (dedicated liver MRI)",
        "unit": "%",
        "range": [0, 100],
    },
    "liver_pdff_22436_pct": {
        "meaning": "liver PDFF, UK Biobank field 22436 (AMRA)",
        "unit": "%",
        "range": [0, 100],
    },
}


# Zip names -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipName:
    """The parts of ``<eid>_20201_<instance>_<array>.zip``."""

    eid: str
    instance: int
    array: int

    @property
    def subject_id(self) -> str:
        """``<eid>_<instance>`` (``_<array>`` appended when the array index is not 0)."""
        suffix = f"_{self.array}" if self.array else ""
        return f"{self.eid}_{self.instance}{suffix}"


def parse_zip_name(path: str | os.PathLike[str]) -> ZipName:
    """Split a field-20201 zip name; :class:`LiverfatError` if it does not follow the pattern."""
    match = ZIP_NAME.match(Path(path).name)
    if not match:
        raise LiverfatError(
            f"{Path(path).name}: not a UK Biobank Dixon zip name "
            "(<eid>_20201_<instance>_<array>.zip)"
        )
    return ZipName(match.group(1), int(match.group(2)), int(match.group(3)))


# Reading a zip safely --------------------------------------------------------------------------


def _escapes(name: str) -> bool:
    """Whether a member name would land outside the folder it is extracted into."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    return posix.startswith("/") or ".." in parts or bool(re.match(r"^[A-Za-z]:", posix))


def read_zip_members(zip_path: str | os.PathLike[str], subject_id: str) -> dict[str, bytes]:
    """All file members of a zip, checked for the safety limits, as ``{name: bytes}``.

    Raises
    ------
    ImageError
        Naming ``subject_id`` and the member: unreadable or truncated zip, a path escaping the
        output folder, an oversized member, a compression ratio above
        :data:`MAX_COMPRESSION_RATIO`, or a member whose data fails to decompress or its CRC.
    """
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ImageError(
            f"{subject_id}: {zip_path.name} is not a readable zip, truncated or corrupt "
            f"({one_line(exc, limit=200)})"
        ) from exc
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        _check_limits(infos, subject_id)
        members = {}
        for info in infos:
            try:
                members[info.filename] = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                raise ImageError(
                    f"{subject_id}: member {info.filename} is truncated or corrupt "
                    f"({one_line(exc, limit=200)})"
                ) from exc
    return members


def _check_limits(infos: Sequence[zipfile.ZipInfo], subject_id: str) -> None:
    if len(infos) > MAX_MEMBERS:
        raise ImageError(f"{subject_id}: zip holds {len(infos)} members, over {MAX_MEMBERS}")
    total = 0
    for info in infos:
        if _escapes(info.filename):
            raise ImageError(
                f"{subject_id}: member path {info.filename!r} escapes the output folder (zip slip)"
            )
        if info.file_size > MAX_MEMBER_BYTES:
            raise ImageError(
                f"{subject_id}: member {info.filename} would expand to "
                f"{info.file_size / 2**20:.0f} MiB, over the {MAX_MEMBER_BYTES // 2**20} MiB limit"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise ImageError(
                f"{subject_id}: member {info.filename} has compression ratio {ratio:.0f}:1, over "
                f"{MAX_COMPRESSION_RATIO:.0f}:1 (zip bomb?)"
            )
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise ImageError(
            f"{subject_id}: zip would expand to {total / 2**30:.1f} GiB, over "
            f"{MAX_TOTAL_BYTES / 2**30:.0f} GiB"
        )


def manifest_filenames(text: str, member_names: Iterable[str]) -> set[str]:
    """The member names a zip's manifest CSV lists, found by content rather than by header.

    The column whose values most often name a member is the file-name column (the real header
    is shifted against its rows). Values are matched by base name; rows that name no member in
    that column (the header, trailing blanks) and names the zip lacks are both returned as given,
    so the caller can report missing files.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    by_base = {PurePosixPath(n).name for n in member_names}
    width = max((len(row) for row in rows), default=0)
    counts = [
        sum(1 for row in rows if j < len(row) and PurePosixPath(row[j].strip()).name in by_base)
        for j in range(width)
    ]
    if not counts or max(counts) == 0:
        return set()
    column = int(np.argmax(counts))
    looks_like_file = re.compile(r"\.(dcm|ima)$|^\d+(\.\d+){4,}", re.IGNORECASE)
    return {
        PurePosixPath(row[column].strip()).name
        for row in rows
        if column < len(row) and looks_like_file.search(row[column].strip())
    }


# Slices, series, stations ----------------------------------------------------------------------


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
        return np.array([_position_along_normal(ds) for ds in self.slices])

    @property
    def centre_mm(self) -> float:
        return float(np.mean(self.positions_mm))

    @property
    def label(self) -> str:
        return f"{self.description} ({self.uid[-12:]})"


def _position_along_normal(ds) -> float:
    orientation = np.asarray(ds.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float)))


def series_kind(description: str) -> str | None:
    """``water``, ``fat``, ``in_phase``, ``opposed_phase`` from a Dixon series description."""
    if "dixon" not in description.lower():
        return None
    match = _KIND_SUFFIX.search(description.strip())
    return KINDS[match.group(1).lower()] if match else None


def read_series(
    members: dict[str, bytes], subject_id: str, *, manifest_name: str | None
) -> list[Series]:
    """Parse every DICOM member (all but the manifest must be DICOM) and group Dixon series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, Series] = {}
    for name, data in members.items():
        if name == manifest_name:
            continue
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError as exc:
            raise ImageError(f"{subject_id}: member {name} is not a DICOM file") from exc
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
        series.slices.sort(key=_position_along_normal)
    return list(groups.values())


def select_stations(series: list[Series], subject_id: str) -> dict[str, list[Series]]:
    """Stations of each kind, feet to head; a station acquired twice keeps its newest series.

    Raises :class:`ImageError` when there is no water or fat series or when the water and fat
    stations do not sit at the same positions.
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
    if water.shape != fat.shape or np.abs(water - fat).max() > STATION_MATCH_MM:
        raise ImageError(
            f"{subject_id}: water stations at {_mm_list(water)} mm and fat stations at "
            f"{_mm_list(fat)} mm do not match"
        )
    return dict(by_kind)


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
    planes = []
    for ds in slices:
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
        planes.append(plane * np.float32(slope) + np.float32(intercept))
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
    normal = np.cross(orientation[:3], orientation[3:])
    image.SetDirection(np.column_stack([orientation[:3], orientation[3:], normal]).ravel().tolist())
    image.SetOrigin([float(v) for v in slices[trim_slices].ImagePositionPatient])
    return image


# Fusion ----------------------------------------------------------------------------------------


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


# One subject -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestJob:
    """One zip to ingest into ``out`` (picklable, for worker processes)."""

    zip_path: str
    out: str
    spacing_mm: tuple[float, float, float] = OUTPUT_SPACING_MM
    trim_slices: int = TRIM_SLICES


def subject_folder(out: str | os.PathLike[str], subject_id: str) -> Path:
    return Path(out) / "images" / subject_id


def ingest_zip(job: IngestJob) -> dict[str, Any]:
    """Ingest one zip (or return its earlier record); raise :class:`ImageError` on bad input.

    Returns the record written to ``images/<subject_id>/ingest.json``: subject id, eid,
    instance, relative image paths, scan date (DICOM StudyDate), station count and positions.
    """
    name = parse_zip_name(job.zip_path)
    sid = name.subject_id
    folder = subject_folder(job.out, sid)
    done = folder / DONE_NAME
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    start = time.perf_counter()
    members = read_zip_members(job.zip_path, sid)
    manifest_name = next((n for n in members if "manifest" in PurePosixPath(n).name.lower()), None)
    if manifest_name is None:
        raise ImageError(f"{sid}: zip has no manifest CSV (a member named *manifest*)")
    text = members[manifest_name].decode("utf-8", errors="replace")
    listed = manifest_filenames(text, members)
    present = {PurePosixPath(n).name for n in members}
    absent = sorted(listed - present)
    if absent:
        raise ImageError(
            f"{sid}: zip lacks {len(absent)} file(s) its manifest lists (first {absent[0]}): "
            "truncated download?"
        )
    series = read_series(members, sid, manifest_name=manifest_name)
    del members
    stations = select_stations(series, sid)
    water_stations = [station_image(s, sid, trim_slices=job.trim_slices) for s in stations["water"]]
    fat_stations = [station_image(s, sid, trim_slices=job.trim_slices) for s in stations["fat"]]
    for k, (w, f) in enumerate(zip(water_stations, fat_stations, strict=True)):
        try:
            check_same_geometry(w, f, names=(f"water station {k + 1}", f"fat station {k + 1}"))
        except ImageError as exc:
            raise ImageError(f"{sid}: {exc}") from exc
    grid = fusion_grid(water_stations, job.spacing_mm)
    water = fuse_stations(water_stations, grid)
    fat = fuse_stations(fat_stations, grid)
    arrays = {
        "water": water,
        "fat": fat,
        "fat_fraction": fat_fraction(water, fat),
        "body_mask": body_mask(water, fat),
    }
    paths = {key: f"images/{sid}/{key}.nii.gz" for key in OUTPUT_IMAGES}
    for key, array in arrays.items():
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        write_volume(image, Path(job.out) / paths[key])
    first = stations["water"][0].slices[0]
    record = {
        "subject_id": sid,
        "eid": name.eid,
        "instance": name.instance,
        "zip": str(job.zip_path),
        **paths,
        "study_date": str(first.get("StudyDate", "")),
        "n_stations": len(water_stations),
        "station_centres_mm": [round(s.centre_mm, 2) for s in stations["water"]],
        "series_kinds": sorted({s.kind for s in series}),
        "size_xyz": list(grid.GetSize()),
        "spacing_mm": list(grid.GetSpacing()),
        "trim_slices": job.trim_slices,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(done, record)  # written last: its presence marks the subject done
    return record


def _ingest_or_fail(job: IngestJob) -> dict[str, Any]:
    """:func:`ingest_zip`, with user errors turned into a ``failed`` record (no traceback)."""
    try:
        return {"status": "ok", **ingest_zip(job)}
    except LiverfatError as exc:
        return {"status": "failed", "message": " ".join(str(exc).split())}


# Reference fields ------------------------------------------------------------------------------

_CLASSIC_COLUMN = re.compile(r"^(\d+)-(\d+)\.(\d+)$")  # 22402-2.0
_RAP_COLUMN = re.compile(r"^p(\d+)(?:_i(\d+))?(?:_a(\d+))?$")  # p22402_i2, p31


def read_fields(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A UK Biobank CSV extract as strings indexed by eid, columns ``<field>:<instance>``.

    Both column styles are understood: ``22402-2.0`` (classic basket) and ``p22402_i2`` (research
    analysis platform; a field without instances, like ``p31``, has instance None). Only fields
    in :data:`UKB_FIELDS` with array index 0 are kept.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LiverfatError(
            f"{path}: not a readable CSV extract ({one_line(exc, limit=200)})"
        ) from exc
    eid_column = next(
        (
            c
            for c in raw.columns
            if c.strip().lower() in ("eid", "participant.eid", "participant id")
        ),
        None,
    )
    if eid_column is None:
        raise LiverfatError(f"{path}: no eid column (have {', '.join(raw.columns[:8])})")
    columns = {}
    for column in raw.columns:
        key = _field_key(column.strip())
        if key is not None and key[0] in UKB_FIELDS:
            columns[column] = _key_name(*key[:2])
    table = raw[list(columns)].rename(columns=columns)
    table.index = raw[eid_column].str.strip()
    return table


def _key_name(field_id: int, instance: int | None) -> str:
    return f"{field_id}:{'' if instance is None else instance}"


def _field_key(column: str) -> tuple[int, int | None, int] | None:
    for pattern in (_CLASSIC_COLUMN, _RAP_COLUMN):
        match = pattern.match(column)
        if match:
            field_id, instance, array = match.groups()
            if array not in (None, "0"):
                return None
            return int(field_id), None if instance is None else int(instance), 0
    return None


def _field_value(fields: pd.DataFrame, eid: str, field_id: int, instance: int) -> str:
    if eid not in fields.index:
        return ""
    row = fields.loc[eid]
    if isinstance(row, pd.DataFrame):  # duplicate eids: the first row wins
        row = row.iloc[0]
    for key in (_key_name(field_id, instance), _key_name(field_id, None)):
        if key in row.index and str(row[key]).strip():
            return str(row[key]).strip()
    return ""


def subject_fields(
    fields: pd.DataFrame | None, eid: str, instance: int, study_date: str = ""
) -> dict[str, Any]:
    """Targets and covariates of one subject-visit from an extract (NaN where absent).

    Age (years) is the scan date (field 53 at this visit, else the DICOM StudyDate) minus the
    15th of the birth month (fields 34 and 52; 1 July when the month is missing).
    """
    values: dict[str, Any] = {}
    get = (
        (lambda f, i: _field_value(fields, eid, f, i)) if fields is not None else (lambda f, i: "")
    )
    for field_id, entry in UKB_FIELDS.items():
        column = entry["column"]
        if column is None or column == "scan_date":
            continue
        instance_of = instance if entry["instance"] == "visit" else entry["instance"]
        values[column] = pd.to_numeric(get(field_id, instance_of) or np.nan, errors="coerce")
    scan = _parse_date(get(53, instance)) or _parse_date(study_date)
    values["scan_date"] = scan.isoformat() if scan else ""
    year = pd.to_numeric(get(34, 0) or np.nan, errors="coerce")
    month = pd.to_numeric(get(52, 0) or np.nan, errors="coerce")
    values["age"] = np.nan
    if scan and np.isfinite(year):
        birth = (
            dt.date(int(year), int(month), 15) if np.isfinite(month) else dt.date(int(year), 7, 1)
        )
        values["age"] = round((scan - birth).days / 365.25, 2)
    return values


def _parse_date(text: str) -> dt.date | None:
    text = (text or "").strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(text[:10] if "-" in text else text, fmt).date()
        except ValueError:
            continue
    return None


# The batch -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_ukb` wrote: the card, and the status table (one row per zip)."""

    card_path: Path | None
    status: pd.DataFrame

    @property
    def n_ok(self) -> int:
        return int((self.status["status"] == "ok").sum())

    @property
    def n_failed(self) -> int:
        return int((self.status["status"] == "failed").sum())


def find_zips(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Zip files named on the command line; folders contribute their ``*_20201_*.zip``."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.glob("*_20201_*.zip"))
        elif path.is_file():
            found.append(path)
        else:
            raise LiverfatError(f"{path}: no such file or folder")
    return found


def ingest_ukb(
    zips: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    fields: str | os.PathLike[str] | None = None,
    spacing_mm: Sequence[float] = OUTPUT_SPACING_MM,
    trim_slices: int = TRIM_SLICES,
    executor: str = "processes",
    n_workers: int | None = None,
    progress: bool = True,
) -> IngestResult:
    """Ingest field-20201 zips into ``out``: fused volumes, a manifest and a status table.

    Subjects already ingested (their ``ingest.json`` exists) are skipped, so an interrupted run
    resumes. A bad zip costs its own subject only: a ``failed`` row in ``ingest_status.csv`` with
    a one-line message. The manifest lists the subjects ingested so far (all runs).

    Parameters
    ----------
    fields:
        A UK Biobank CSV extract with fields 22402, 22436, 31, 34, 52, 53, 12144, 21002, 21001.
    spacing_mm:
        Output voxel spacing (x, y, z; mm).
    trim_slices:
        Slices removed at each end of every station before fusion.
    """
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise LiverfatError(f"spacing must be three positive numbers (mm), got {spacing_mm}")
    if trim_slices < 0:
        raise LiverfatError(f"trim_slices must be >= 0, got {trim_slices}")
    out = Path(out)
    zip_paths = find_zips(zips)
    field_table = read_fields(fields) if fields is not None else None
    rows, jobs = [], []
    seen: dict[str, Path] = {}
    for path in zip_paths:
        try:
            sid = parse_zip_name(path).subject_id
        except LiverfatError as exc:
            rows.append(_status_row(path.stem, path, "failed", str(exc)))
            continue
        if sid in seen:
            rows.append(_status_row(sid, path, "failed", f"{sid}: duplicate of {seen[sid].name}"))
            continue
        seen[sid] = path
        jobs.append(IngestJob(str(path), str(out), spacing, trim_slices))
    if executor == "processes" and len(jobs) <= 1:
        executor = "serial"
    for outcome in map_subjects(
        _ingest_or_fail,
        jobs,
        executor=executor,
        n_workers=n_workers,
        progress="ingest ukb" if progress else None,
    ):
        path = Path(outcome.item.zip_path)
        sid = parse_zip_name(path).subject_id
        if not outcome.ok:  # a crash outside our own checks (native code, memory)
            rows.append(_status_row(sid, path, "failed", f"{sid}: {outcome.error}"))
        elif outcome.value["status"] == "failed":
            rows.append(_status_row(sid, path, "failed", outcome.value["message"]))
        else:
            value = outcome.value
            rows.append(_status_row(sid, path, "ok", "", value["n_stations"], value["seconds"]))
    status = pd.DataFrame(rows, columns=STATUS_COLUMNS).sort_values("subject_id")
    out.mkdir(parents=True, exist_ok=True)
    write_subject_table(status, out / STATUS_NAME)
    card_path = write_manifest(out, field_table, spacing, trim_slices)
    return IngestResult(card_path, status.reset_index(drop=True))


def _status_row(sid, path, status, message, n_stations=None, seconds=None) -> dict[str, Any]:
    return {
        "subject_id": sid,
        "zip": str(path),
        "status": status,
        "message": " ".join(str(message).split()),
        "n_stations": np.nan if n_stations is None else n_stations,
        "seconds": np.nan if seconds is None else seconds,
    }


def _split_of(record: dict[str, Any], values: dict[str, Any]) -> str:
    if any(np.isfinite(values.get(t, np.nan)) for t in TARGETS):
        return "A"
    # C: a stable half of B, fixed by the subject id (no seed to record).
    digest = hashlib.sha256(record["subject_id"].encode()).digest()
    return "C" if digest[0] % 2 else "B"


def write_manifest(
    out: Path,
    fields: pd.DataFrame | None,
    spacing_mm: Sequence[float],
    trim_slices: int,
) -> Path | None:
    """Write ``manifest.yaml`` and ``subjects.csv`` for every subject ingested in ``out``."""
    records = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((out / "images").glob(f"*/{DONE_NAME}"))
    ]
    if not records:
        return None
    rows = []
    for record in records:
        values = subject_fields(fields, record["eid"], record["instance"], record["study_date"])
        rows.append(
            {
                "subject_id": record["subject_id"],
                "eid": record["eid"],
                "instance": record["instance"],
                **{key: record[key] for key in OUTPUT_IMAGES},
                "split": _split_of(record, values),
                **{c: values[c] for c in ("age", "sex", "height", "weight", "bmi")},
                **{t: values[t] for t in TARGETS},
                "scan_date": values["scan_date"],
            }
        )
    write_subject_table(pd.DataFrame(rows), out / "subjects.csv")
    card_path = out / "manifest.yaml"
    write_text_atomic(
        card_path, yaml.safe_dump(dataset_card(spacing_mm, trim_slices), sort_keys=False)
    )
    return card_path


def dataset_card(spacing_mm: Sequence[float], trim_slices: int) -> dict[str, Any]:
    """The dataset card of an ingested UK Biobank cohort (see ``data_manifests/ukbiobank.yaml``)."""
    return {
        "name": "ukbiobank-dixon",
        "description": (
            "UK Biobank neck-to-knee two-point Dixon body MRI (field 20201), six stations fused "
            "by `liverfat ingest ukb`, with liver fat references (fields 22402, 22436)."
        ),
        "source": "UK Biobank (https://www.ukbiobank.ac.uk), approved application required",
        "licence": "UK Biobank Material Transfer Agreement: no redistribution",
        "subjects": "subjects.csv",
        "units": {
            "fat_fraction": "%",
            "signal": "scanner units (float32)",
            "length": "mm",
            "body_mask": "1 inside the body (W + F above the mean coronal Otsu threshold)",
        },
        "grid": {
            "spacing_mm": [float(s) for s in spacing_mm],
            "direction": "identity (LPS: +x left, +y posterior, +z superior)",
            "trim_slices_per_station_end": int(trim_slices),
            "interpolation": "linear; overlaps blended linearly across each seam",
        },
        "fields": {
            str(field_id): {k: v for k, v in entry.items()}
            for field_id, entry in UKB_FIELDS.items()
        },
        "targets": TARGETS,
        "covariates": {
            "age": {"unit": "years", "range": [18, 100], "from": "fields 34, 52 and 53"},
            "sex": {"coding": "0 female, 1 male (field 31)", "range": [0, 1]},
            "height": {"unit": "cm", "range": [100, 230], "from": "field 12144"},
            "weight": {"unit": "kg", "range": [30, 250], "from": "field 21002"},
            "bmi": {"unit": "kg/m^2", "range": [10, 80], "from": "field 21001"},
        },
        "splits": {
            "A": {"meaning": "subjects with a liver fat reference (22402 or 22436)"},
            "B": {"meaning": "subjects without a reference"},
            "C": {
                "meaning": "half of B chosen by a hash of the subject id (comparison set)",
                "subset_of": "B",
            },
        },
    }


def read_status(out: str | os.PathLike[str]) -> pd.DataFrame:
    """The ingestion status table written by :func:`ingest_ukb` in ``out``."""
    path = Path(out) / STATUS_NAME
    if not path.is_file():
        raise LiverfatError(f"{path}: no ingestion status table")
    return pd.read_csv(path, dtype={"subject_id": str, "message": str}, keep_default_na=False)


__all__ = [
    "IngestJob",
    "IngestResult",
    "OUTPUT_SPACING_MM",
    "UKB_FIELDS",
    "dataset_card",
    "fuse_stations",
    "fusion_grid",
    "ingest_ukb",
    "ingest_zip",
    "manifest_filenames",
    "parse_zip_name",
    "read_fields",
    "read_zip_members",
    "select_stations",
    "station_image",
    "subject_fields",
]
