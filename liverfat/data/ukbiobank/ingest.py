"""The batch: many zips to fused NIfTI volumes, a manifest and a status table (resumable).

:func:`ingest_zip` writes one subject's water, fat, fat fraction (%) and body mask under
``images/<subject_id>/`` and, last, its ``ingest.json``; :func:`ingest_ukb` runs many zips through
:func:`liverfat.parallel.map_subjects`, skipping subjects whose ``ingest.json`` exists, and writes
``manifest.yaml``, ``subjects.csv`` and ``ingest_status.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.dixon import body_mask, fat_fraction
from liverfat.data.io import write_volume
from liverfat.data.manifest import (
    COVARIATE_COLUMNS,
    covariate_entries,
    split_entries,
    write_subject_table,
)
from liverfat.data.ukbiobank.fields import TARGETS, UKB_FIELDS, read_fields, subject_fields
from liverfat.data.ukbiobank.fusion import OUTPUT_SPACING_MM, fuse_dixon
from liverfat.data.ukbiobank.stations import TRIM_SLICES, read_series, select_stations
from liverfat.data.ukbiobank.zipsafe import check_manifest, parse_zip_name, read_zip_members
from liverfat.errors import LiverfatError, one_line
from liverfat.parallel import Outcome, map_subjects

STATUS_NAME = "ingest_status.csv"
STATUS_COLUMNS = ["subject_id", "zip", "status", "message", "n_stations", "seconds"]
DONE_NAME = "ingest.json"
OUTPUT_IMAGES = ("water", "fat", "fat_fraction", "body_mask")


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
    done = subject_folder(job.out, sid) / DONE_NAME
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    start = time.perf_counter()
    members = read_zip_members(job.zip_path, sid)
    manifest_name = check_manifest(members, sid)
    series = read_series(members, sid, manifest_name=manifest_name)
    del members
    stations = select_stations(series, sid)
    grid, water, fat = fuse_dixon(
        stations, sid, spacing_mm=job.spacing_mm, trim_slices=job.trim_slices
    )
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
    record = {
        "subject_id": sid,
        "eid": name.eid,
        "instance": name.instance,
        "zip": str(job.zip_path),
        **paths,
        "study_date": str(stations["water"][0].slices[0].get("StudyDate", "")),
        "n_stations": len(stations["water"]),
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
        return {"status": "failed", "message": one_line(exc)}


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
    rows, jobs = _plan(zip_paths, out, spacing, trim_slices)
    if executor == "processes" and len(jobs) <= 1:
        executor = "serial"
    outcomes = map_subjects(
        _ingest_or_fail,
        jobs,
        executor=executor,
        n_workers=n_workers,
        progress="ingest ukb" if progress else None,
    )
    rows += [_outcome_row(outcome) for outcome in outcomes]
    status = pd.DataFrame(rows, columns=STATUS_COLUMNS).sort_values("subject_id")
    out.mkdir(parents=True, exist_ok=True)
    write_subject_table(status, out / STATUS_NAME)
    card_path = write_manifest(out, field_table, spacing, trim_slices)
    return IngestResult(card_path, status.reset_index(drop=True))


def _plan(
    zip_paths: Sequence[Path], out: Path, spacing: tuple[float, ...], trim_slices: int
) -> tuple[list[dict[str, Any]], list[IngestJob]]:
    """One job per subject; a ``failed`` status row for each badly named or duplicate zip."""
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
    return rows, jobs


def _outcome_row(outcome: Outcome) -> dict[str, Any]:
    """The status row of one job's outcome."""
    path = Path(outcome.item.zip_path)
    sid = parse_zip_name(path).subject_id
    if not outcome.ok:  # a crash outside our own checks (native code, memory)
        return _status_row(sid, path, "failed", f"{sid}: {outcome.error}")
    value = outcome.value
    if value["status"] == "failed":
        return _status_row(sid, path, "failed", value["message"])
    return _status_row(sid, path, "ok", "", value["n_stations"], value["seconds"])


def _status_row(sid, path, status, message, n_stations=None, seconds=None) -> dict[str, Any]:
    return {
        "subject_id": sid,
        "zip": str(path),
        "status": status,
        "message": one_line(message) if message else "",
        "n_stations": np.nan if n_stations is None else n_stations,
        "seconds": np.nan if seconds is None else seconds,
    }


def read_status(out: str | os.PathLike[str]) -> pd.DataFrame:
    """The ingestion status table written by :func:`ingest_ukb` in ``out``."""
    path = Path(out) / STATUS_NAME
    if not path.is_file():
        raise LiverfatError(f"{path}: no ingestion status table")
    return pd.read_csv(path, dtype={"subject_id": str, "message": str}, keep_default_na=False)


# The manifest ----------------------------------------------------------------------------------


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
                **{c: values[c] for c in COVARIATE_COLUMNS},
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
        "covariates": covariate_entries(
            {
                "age": {"from": "fields 34, 52 and 53"},
                "sex": {"coding": "0 female, 1 male (field 31)"},
                "height": {"from": "field 12144"},
                "weight": {"from": "field 21002"},
                "bmi": {"from": "field 21001"},
            }
        ),
        "splits": split_entries(
            "subjects with a liver fat reference (22402 or 22436)",
            "subjects without a reference",
            "half of B chosen by a hash of the subject id (comparison set)",
        ),
    }
