"""UK Biobank-like field-20201 zips written from arrays: six overlapping Dixon stations as DICOM.

The real zips (``<eid>_20201_<instance>_<array>.zip``) hold, for each of six axial stations from
neck to knee, four series: water (``Dixon_noBH_W``), fat (``_F``), in-phase (``_in``) and
opposed-phase (``_opp``); the thorax and abdomen stations are breath-hold (``Dixon_BH_17s_*``).
Beside the slices lies a manifest CSV whose header does not line up with its rows. This module
writes such zips from water and fat arrays (for example a phantom subject), so ingestion can be
tested and benchmarked without UK Biobank data: each station samples the source voxels exactly,
so a correct fusion reproduces the source volume on the output grid.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Echo times (ms) of the 1.5 T two-point Dixon protocol: opposed then in phase.
ECHO_TIMES_MS = {"opp": 2.39, "in": 4.77, "W": 2.39, "F": 2.39}
#: Stored value = signal / RESCALE_SLOPE (uint16), read back as stored * slope.
RESCALE_SLOPE = 0.1
IMAGE_TYPES = {
    "W": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
    "F": ["DERIVED", "PRIMARY", "DIXON", "FAT"],
    "in": ["ORIGINAL", "PRIMARY", "M", "IN_PHASE"],
    "opp": ["ORIGINAL", "PRIMARY", "M", "OPP_PHASE"],
}
#: Stations (counted from the head) acquired in breath-hold.
BREATH_HOLD_STATIONS = (2, 3, 4)


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
    repeat_station: int | None = None,
    study_date: str = "20160512",
    seed: int = 0,
) -> Path:
    """Write a UK Biobank-like Dixon zip of water and fat arrays (z, y, x; signal units).

    Parameters
    ----------
    spacing_mm, origin_mm:
        Voxel spacing and the first voxel's centre (x, y, z order, mm; identity direction).
    repeat_station:
        Also write an older, motion-corrupted acquisition (signal halved) of this station index
        (0 = knee end); ingestion must keep the newer one.
    seed:
        Seeds the UIDs, so one call always writes the same zip.
    """
    water = np.asarray(water, np.float64)
    fat = np.asarray(fat, np.float64)
    signals = {"W": water, "F": fat, "in": water + fat, "opp": np.abs(water - fat)}
    layout = station_layout(water.shape[0], n_stations, overlap_slices)
    rng = np.random.default_rng([seed, eid])
    study_uid = generate_uid(entropy_srcs=[str(eid), str(seed), "study"])
    members: list[tuple[str, bytes]] = []
    rows: list[list[str]] = []
    series_number = 0
    for time_index, (k, corrupted) in enumerate(_acquisitions(n_stations, repeat_station)):
        z_low, z_high = layout.ranges[k]
        station_from_head = n_stations - k
        breath = "BH_17s" if station_from_head in BREATH_HOLD_STATIONS else "noBH"
        for kind in ("in", "opp", "F", "W"):
            series_number += 1
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
            volume = signals[kind][z_low:z_high] * (0.5 if corrupted else 1.0)
            _add_series(members, rows, volume, (z_low, z_high), tags, spacing_mm, origin_mm)
    order_in_zip = rng.permutation(len(members))  # slice order in the zip means nothing
    return _write_zip(Path(path), [members[i] for i in order_in_zip], rows)


def _write_zip(path: Path, members: list[tuple[str, bytes]], rows: list[list[str]]) -> Path:
    """The zip: the manifest CSV of ``rows`` first, then ``members`` in the order given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("manifest.csv", _manifest_csv(rows))
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


def _add_series(
    members: list[tuple[str, bytes]],
    rows: list[list[str]],
    volume: np.ndarray,
    z_range: tuple[int, int],
    tags: _SeriesTags,
    spacing_mm: tuple[float, float, float],
    origin_mm: tuple[float, float, float],
) -> None:
    """Append one series' slices (source z indices ``z_range``) to ``members`` and its manifest
    rows to ``rows``."""
    z_low, z_high = z_range
    table_mm = origin_mm[2] + (z_low + z_high - 1) / 2 * spacing_mm[2]
    for i in range(volume.shape[0]):
        position_mm = (origin_mm[0], origin_mm[1], origin_mm[2] + (z_low + i) * spacing_mm[2])
        ds = _slice_dataset(
            volume[i],
            spacing_mm=spacing_mm,
            position_mm=position_mm,
            instance_number=volume.shape[0] - i,  # numbered head to foot
            tags=tags,
        )
        name = f"{ds.SOPInstanceUID}.dcm"
        members.append((name, _dicom_bytes(ds)))
        rows.append(
            [
                str(len(rows) + 1),  # a leading row number the header does not name
                name,
                str(tags.eid),
                tags.study_uid,
                "UKB_AERA",
                tags.study_date,
                f"{table_mm:.1f}",
                tags.description,
            ]
        )


def _manifest_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The real header names fewer columns than each row holds, so names and values are shifted.
    writer.writerow(["filename", "patientid", "studyid", "aet", "date", "tablepos", "seriesdesc"])
    writer.writerows(rows)
    return buffer.getvalue()


def _slice_dataset(
    plane: np.ndarray, *, spacing_mm, position_mm, instance_number: int, tags: _SeriesTags
) -> pydicom.Dataset:
    stored = np.clip(np.round(plane / RESCALE_SLOPE), 0, 65535).astype(np.uint16)
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
    ds.PixelSpacing = [f"{spacing_mm[1]:.6g}", f"{spacing_mm[0]:.6g}"]  # row (y), column (x)
    ds.SliceThickness = f"{spacing_mm[2]:.6g}"
    ds.SpacingBetweenSlices = f"{spacing_mm[2]:.6g}"
    ds.RescaleSlope = RESCALE_SLOPE
    ds.RescaleIntercept = 0
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
