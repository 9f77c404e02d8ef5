"""UK Biobank-like field-20201 zips written from arrays: overlapping Dixon stations as DICOM.

The real zips (``<eid>_20201_<instance>_<array>.zip``) hold, for each of six axial stations from
neck to knee, four series: water (``Dixon_noBH_W``), fat (``_F``), in-phase (``_in``) and
opposed-phase (``_opp``); the thorax and abdomen stations are breath-hold (``Dixon_BH_17s_*``).
The slices carry no rescale slope (stored integers are the signal). Beside them lies
``manifest.cvs`` (sic) whose header spells ``series discription`` and whose date field,
``May 12, 2016``, holds an unquoted comma, so every value after it sits one column right of its
name. This module writes such zips:

* :func:`write_station_zip` from a list of :class:`Station` (each with its own size, spacing and
  position; water and fat may even differ in size, as in rare real zips);
* :func:`write_ukb_zip` from one water and one fat volume cut into equal stations that sample the
  source voxels exactly (so a correct fusion reproduces the source on the output grid);
* :func:`write_phantom_zip` from a phantom subject.

:mod:`~liverfat.data.ukbiobank.realistic` builds the real protocol's unequal stations.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Echo times (ms) of the 1.5 T two-point Dixon protocol: opposed then in phase.
ECHO_TIMES_MS = {"opp": 2.39, "in": 4.77, "W": 2.39, "F": 2.39}
#: Stored uint16 value = round(signal x STORED_PER_SIGNAL); no RescaleSlope tag (as in UK Biobank).
STORED_PER_SIGNAL = 10.0
IMAGE_TYPES = {
    "W": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
    "F": ["DERIVED", "PRIMARY", "DIXON", "FAT"],
    "in": ["ORIGINAL", "PRIMARY", "M", "IN_PHASE"],
    "opp": ["ORIGINAL", "PRIMARY", "M", "OPP_PHASE"],
}
#: Stations (counted from the head) acquired in breath-hold.
BREATH_HOLD_STATIONS = (2, 3, 4)
#: The zip's manifest: its name (sic) and header, as in UK Biobank.
MANIFEST_NAME = "manifest.cvs"
MANIFEST_HEADER = "filename,patientid,studyid,aet,date,tablepos,series discription"
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass(frozen=True)
class Station:
    """One station: water and fat signal (z, y, x), voxel spacing and first voxel centre.

    ``spacing_mm`` and ``origin_mm`` are (x, y, z) in mm, identity direction. ``fat`` may be
    smaller than ``water`` (cropped at the high-index ends), as in rare real zips.
    ``breath_hold`` names the series ``Dixon_BH_17s_*`` rather than ``Dixon_noBH_*`` (default:
    by the station's place from the head, :data:`BREATH_HOLD_STATIONS`).
    """

    water: np.ndarray
    fat: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    breath_hold: bool | None = None


@dataclass(frozen=True)
class StationLayout:
    """Slice ranges (z indices of the source array, end exclusive) of each station."""

    ranges: tuple[tuple[int, int], ...]


def station_layout(n_z: int, n_stations: int = 6, overlap_slices: int = 8) -> StationLayout:
    """Split ``n_z`` source slices into overlapping stations (each overlap ``overlap_slices``)."""
    edges = np.linspace(0, n_z, n_stations + 1).round().astype(int)
    half = overlap_slices // 2
    ranges = []
    for k in range(n_stations):
        low = 0 if k == 0 else int(edges[k]) - half
        high = n_z if k == n_stations - 1 else int(edges[k + 1]) + (overlap_slices - half)
        ranges.append((max(low, 0), min(high, n_z)))
    return StationLayout(tuple(ranges))


@dataclass(frozen=True)
class _SeriesTags:
    """The tags every slice of one series shares."""

    description: str
    kind: str
    series_uid: str
    series_number: int
    series_time: str
    study_uid: str
    study_date: str
    eid: int


def write_ukb_zip(
    path: str | os.PathLike[str],
    water: np.ndarray,
    fat: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float],
    origin_mm: tuple[float, float, float],
    eid: int,
    n_stations: int = 6,
    overlap_slices: int = 8,
    **kwargs,
) -> Path:
    """Write a UK Biobank-like Dixon zip of water and fat volumes (z, y, x; signal units).

    The volumes are cut into ``n_stations`` equal stations overlapping by ``overlap_slices``.
    ``spacing_mm`` and ``origin_mm`` are the voxel spacing and the first voxel's centre (x, y, z
    order, mm; identity direction). Other keywords go to :func:`write_station_zip`.
    """
    water = np.asarray(water, np.float64)
    fat = np.asarray(fat, np.float64)
    stations = []
    for z_low, z_high in station_layout(water.shape[0], n_stations, overlap_slices).ranges:
        origin = (origin_mm[0], origin_mm[1], origin_mm[2] + z_low * spacing_mm[2])
        stations.append(Station(water[z_low:z_high], fat[z_low:z_high], tuple(spacing_mm), origin))
    return write_station_zip(path, stations, eid=eid, **kwargs)


def write_station_zip(
    path: str | os.PathLike[str],
    stations: Sequence[Station],
    *,
    eid: int,
    repeat_station: int | None = None,
    study_date: str = "20160512",
    seed: int = 0,
    skip_series: Sequence[tuple[int, str]] = (),
    extra_members: Sequence[tuple[str, bytes]] = (),
) -> Path:
    """Write stations (index 0 = knee end) as a UK Biobank-like zip; returns its path.

    Parameters
    ----------
    repeat_station:
        Also write an older, motion-corrupted acquisition (signal halved) of this station index;
        ingestion must keep the newer one.
    skip_series:
        ``(station index, kind)`` pairs not written (kind ``W``, ``F``, ``in`` or ``opp``).
    extra_members:
        ``(name, bytes)`` members added as they are (a stray non-DICOM file, say).
    seed:
        Seeds the UIDs and member order, so one call always writes the same zip.
    """
    n = len(stations)
    study_uid = generate_uid(entropy_srcs=[str(eid), str(seed), "study"])
    members: list[tuple[str, bytes]] = []
    rows: list[str] = []
    series_number = 0
    for time_index, (k, corrupted) in enumerate(_acquisitions(n, repeat_station)):
        station = stations[k]
        breath_hold = station.breath_hold
        if breath_hold is None:
            breath_hold = n - k in BREATH_HOLD_STATIONS
        breath = "BH_17s" if breath_hold else "noBH"
        for kind in ("in", "opp", "F", "W"):
            series_number += 1
            if (k, kind) in skip_series:
                continue
            tags = _SeriesTags(
                description=f"Dixon_{breath}_{kind}",
                kind=kind,
                series_uid=generate_uid(entropy_srcs=[str(eid), str(seed), str(series_number)]),
                series_number=series_number,
                series_time=f"{10 + time_index // 6:02d}{(time_index * 7) % 60:02d}00.000000",
                study_uid=study_uid,
                study_date=study_date,
                eid=eid,
            )
            volume = _signal(station, kind) * (0.5 if corrupted else 1.0)
            _add_series(members, rows, volume, tags, station.spacing_mm, station.origin_mm)
    members += list(extra_members)
    order = np.random.default_rng([seed, eid]).permutation(len(members))  # order means nothing
    return _write_zip(Path(path), [members[i] for i in order], rows)


def _signal(station: Station, kind: str) -> np.ndarray:
    """One series' signal: water, fat, or the magnitude in-phase / opposed-phase images."""
    water = np.asarray(station.water, np.float64)
    fat = np.asarray(station.fat, np.float64)
    if kind == "W":
        return water
    if kind == "F":
        return fat
    common = tuple(slice(0, min(a, b)) for a, b in zip(water.shape, fat.shape, strict=True))
    w, f = water[common], fat[common]
    return w + f if kind == "in" else np.abs(w - f)


def _write_zip(path: Path, members: list[tuple[str, bytes]], rows: list[str]) -> Path:
    """The zip: the manifest of ``rows`` first, then ``members`` in the order given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([MANIFEST_HEADER, *rows]) + "\n\n"  # a trailing blank line, as in real zips
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(MANIFEST_NAME, text)
        for name, data in members:
            archive.writestr(name, data)
    return path


def _acquisitions(n_stations: int, repeat_station: int | None) -> list[tuple[int, bool]]:
    """(station index, corrupted) in acquisition order: head to foot (the top station first),
    with a corrupted repeat of ``repeat_station`` acquired just before it."""
    order = list(range(n_stations))[::-1]
    acquisitions = [(k, False) for k in order]
    if repeat_station is not None:
        acquisitions.insert(order.index(repeat_station), (repeat_station, True))
    return acquisitions


def manifest_date(study_date: str) -> str:
    """``20160512`` -> ``May 12, 2016``: the manifest's date, with its unquoted comma."""
    year, month, day = study_date[:4], int(study_date[4:6]), int(study_date[6:8])
    return f"{_MONTHS[month - 1]} {day}, {year}"


def _add_series(
    members: list[tuple[str, bytes]],
    rows: list[str],
    volume: np.ndarray,
    tags: _SeriesTags,
    spacing_mm: tuple[float, float, float],
    origin_mm: tuple[float, float, float],
) -> None:
    """Append one series' slices (first slice centred at ``origin_mm``) to ``members`` and its
    manifest lines to ``rows`` (written unquoted: the date's comma shifts the columns)."""
    table_mm = origin_mm[2] + (volume.shape[0] - 1) / 2 * spacing_mm[2]
    for i in range(volume.shape[0]):
        position_mm = (origin_mm[0], origin_mm[1], origin_mm[2] + i * spacing_mm[2])
        ds = _slice_dataset(
            volume[i],
            spacing_mm=spacing_mm,
            position_mm=position_mm,
            instance_number=volume.shape[0] - i,  # numbered head to foot
            tags=tags,
        )
        name = f"{ds.SOPInstanceUID}.dcm"
        members.append((name, _dicom_bytes(ds)))
        fields = [name, str(tags.eid), tags.study_uid, "UKB_AERA", manifest_date(tags.study_date)]
        rows.append(",".join([*fields, f"{table_mm:.0f}", tags.description]))


def _slice_dataset(
    plane: np.ndarray, *, spacing_mm, position_mm, instance_number: int, tags: _SeriesTags
) -> pydicom.Dataset:
    stored = np.clip(np.round(plane * STORED_PER_SIGNAL), 0, 65535).astype(np.uint16)
    sop_uid = generate_uid(entropy_srcs=[tags.series_uid, str(instance_number)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Aera"
    ds.MagneticFieldStrength = 1.5
    ds.PatientID = str(tags.eid)
    ds.StudyInstanceUID = tags.study_uid
    ds.StudyDate = tags.study_date
    ds.SeriesDate = tags.study_date
    ds.SeriesInstanceUID = tags.series_uid
    ds.SeriesNumber = tags.series_number
    ds.SeriesDescription = tags.description
    ds.SeriesTime = tags.series_time
    ds.ImageType = IMAGE_TYPES[tags.kind]
    ds.InstanceNumber = instance_number
    ds.EchoTime = ECHO_TIMES_MS[tags.kind]
    ds.RepetitionTime = 6.69
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{spacing_mm[1]:.9g}", f"{spacing_mm[0]:.9g}"]  # row (y), column (x)
    ds.SliceThickness = f"{spacing_mm[2]:.6g}"
    ds.SpacingBetweenSlices = f"{spacing_mm[2]:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()
    return ds


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_phantom_zip(
    out: str | os.PathLike[str],
    index: int,
    *,
    seed: int = 0,
    scale: str = "quarter",
    eid: int | None = None,
    instance: int = 2,
    **kwargs,
) -> Path:
    """Build phantom subject ``index`` and write it as ``<eid>_20201_<instance>_0.zip`` in ``out``.

    The eid defaults to ``1000000 + index``. Extra keywords go to :func:`write_ukb_zip`.
    """
    from liverfat.data.phantom import Grid, PhantomConfig, build_subject

    arrays, _ = build_subject(index, seed, scale, PhantomConfig(), "A")
    grid = Grid.at_scale(scale)
    eid = 1_000_000 + index if eid is None else eid
    return write_ukb_zip(
        Path(out) / f"{eid}_20201_{instance}_0.zip",
        arrays["water"],
        arrays["fat"],
        spacing_mm=grid.spacing,
        origin_mm=grid.origin,
        eid=eid,
        seed=seed,
        **kwargs,
    )
