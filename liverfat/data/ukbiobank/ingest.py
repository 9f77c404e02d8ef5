"""The batch: many zips to fused NIfTI volumes, a manifest and status tables (resumable).

:func:`~liverfat.data.ukbiobank.subject.ingest_zip` ingests one subject; :func:`ingest_ukb` runs
many zips through :func:`liverfat.parallel.map_subjects`, skipping subjects whose ``ingest.json``
exists, and writes ``manifest.yaml``, ``subjects.csv``, ``ingest_status.csv`` (one row per zip:
``ok``, ``flagged`` or ``failed`` with a one-line message) and ``ingest_stations.csv`` (one row
per subject and station: geometry, water-fat swap score and decision, cropping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from liverfat.data.atomic import write_text_atomic
from liverfat.data.manifest import (
    COVARIATE_COLUMNS,
    PARTICIPANT_COLUMN,
    VISIT_COLUMN,
    covariate_entries,
    split_entries,
    visit_entries,
    write_subject_table,
)
from liverfat.data.swaps import SWAP_SCORE_MARGIN, SWAP_SCORE_THRESHOLD
from liverfat.data.ukbiobank.checks import EXPECTED_STATIONS, MIN_FUSED_SLICES
from liverfat.data.ukbiobank.fields import TARGETS, UKB_FIELDS, read_fields, subject_fields
from liverfat.data.ukbiobank.fusion import OUTPUT_SPACING_MM
from liverfat.data.ukbiobank.stations import TRIM_SLICES
from liverfat.data.ukbiobank.subject import DONE_NAME, OUTPUT_IMAGES, IngestJob, ingest_zip
from liverfat.data.ukbiobank.zipsafe import parse_zip_name
from liverfat.errors import LiverfatError, one_line
from liverfat.parallel import Outcome, map_subjects

STATUS_NAME = "ingest_status.csv"
STATIONS_NAME = "ingest_stations.csv"
STATUS_COLUMNS = [
    "subject_id",
    "zip",
    "status",
    "message",
    "n_stations",
    "n_series",
    "n_slices",
    "swapped_stations",
    "seconds",
]
STATION_COLUMNS = [
    "subject_id",
    "station",
    "description",
    "z_low_mm",
    "z_high_mm",
    "size_xyz",
    "spacing_mm",
    "swap_score",
    "swap",
    "swap_corrected",
    "cropped",
]


def _ingest_or_fail(job: IngestJob) -> dict[str, Any]:
    """:func:`ingest_zip`, with user errors turned into a ``failed`` record (no traceback)."""
    try:
        return ingest_zip(job)
    except LiverfatError as exc:
        return {"status": "failed", "message": one_line(exc)}


# The batch -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_ukb` wrote: the card, and the status table (one row per zip)."""

    card_path: Path | None
    status: pd.DataFrame

    def _count(self, *statuses: str) -> int:
        return int(self.status["status"].isin(statuses).sum())

    @property
    def n_ok(self) -> int:
        """Subjects ingested without a flag."""
        return self._count("ok")

    @property
    def n_flagged(self) -> int:
        """Subjects ingested with a flag (their images written; the message says why)."""
        return self._count("flagged")

    @property
    def n_ingested(self) -> int:
        """Subjects in the manifest from this run's zips: ``ok`` plus ``flagged``."""
        return self._count("ok", "flagged")

    @property
    def n_failed(self) -> int:
        return self._count("failed")


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
    spacing_mm: Sequence[float] | None = None,
    trim_slices: int = TRIM_SLICES,
    n_stations: int = EXPECTED_STATIONS,
    min_slices: int = MIN_FUSED_SLICES,
    fix_swaps: bool = True,
    executor: str = "processes",
    n_workers: int | None = None,
    progress: bool = True,
) -> IngestResult:
    """Ingest field-20201 zips into ``out``: fused volumes, a manifest and status tables.

    Subjects already ingested (their ``ingest.json`` exists) are skipped, so an interrupted run
    resumes. A bad zip costs its own subject only: a ``failed`` row in ``ingest_status.csv`` with
    a one-line message. A subject whose scan is incomplete or doubtful is ingested and
    ``flagged``, the message saying why. The manifest lists the subjects ingested so far.

    Parameters
    ----------
    fields:
        A UK Biobank CSV extract with fields 22402, 22436, 31, 34, 52, 53, 12144, 21002, 21001.
    spacing_mm:
        Output voxel spacing (x, y, z; mm); ``None``: each zip's native in-plane pixels
        (UK Biobank: 500 / 224 = 2.2321 mm, no in-plane resampling) and 3 mm slices.
    trim_slices:
        Slices removed at each end of every station before fusion.
    n_stations:
        Stations (of 4 series each) a complete zip holds; fewer, or a z-gap, flag the subject.
    min_slices:
        Fused volumes with fewer slices are flagged (0: never).
    fix_swaps:
        Swap back the water and fat of a station found swapped (else the subject is flagged).
    """
    template = _job_template(out, spacing_mm, trim_slices, n_stations, min_slices, fix_swaps)
    out = Path(out)
    zip_paths = find_zips(zips)
    field_table = read_fields(fields) if fields is not None else None
    rows, jobs = _plan(zip_paths, template)
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
    card_path = write_manifest(out, field_table, template.spacing_mm, trim_slices)
    return IngestResult(card_path, status.reset_index(drop=True))


def _job_template(out, spacing_mm, trim_slices, n_stations, min_slices, fix_swaps) -> IngestJob:
    """The settings every job shares, checked (one clear line for a bad value)."""
    spacing = None
    if spacing_mm is not None:
        spacing = tuple(float(s) for s in spacing_mm)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise LiverfatError(f"spacing must be three positive numbers (mm), got {spacing_mm}")
    if trim_slices < 0:
        raise LiverfatError(f"trim_slices must be >= 0, got {trim_slices}")
    if n_stations < 1:
        raise LiverfatError(f"n_stations must be >= 1, got {n_stations}")
    if min_slices < 0:
        raise LiverfatError(f"min_slices must be >= 0, got {min_slices}")
    return IngestJob(
        "", str(out), spacing, trim_slices, int(n_stations), int(min_slices), bool(fix_swaps)
    )


def _plan(
    zip_paths: Sequence[Path], template: IngestJob
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
        jobs.append(dataclasses.replace(template, zip_path=str(path)))
    return rows, jobs


def status_message(record: dict[str, Any]) -> str:
    """One line for an ingested subject: its flags, then its notes ("" when there are none)."""
    parts = [*record.get("flags", []), *record.get("notes", [])]
    return f"{record['subject_id']}: " + "; ".join(parts) if parts else ""


def swapped_stations(record: dict[str, Any]) -> str:
    """The stations found swapped, as ``"3"`` or ``"2;5"`` ("" for none)."""
    stations = record.get("stations", [])
    return ";".join(str(s["station"]) for s in stations if s.get("swap") == "swapped")


def _outcome_row(outcome: Outcome) -> dict[str, Any]:
    """The status row of one job's outcome."""
    path = Path(outcome.item.zip_path)
    sid = parse_zip_name(path).subject_id
    if not outcome.ok:  # a crash outside our own checks (native code, memory)
        return _status_row(sid, path, "failed", f"{sid}: {outcome.error}")
    value = outcome.value
    if value["status"] == "failed":
        return _status_row(sid, path, "failed", value["message"])
    row = _status_row(sid, path, value.get("status", "ok"), status_message(value))
    row.update(
        n_stations=value["n_stations"],
        n_series=value.get("n_series", np.nan),
        n_slices=value["size_xyz"][2],
        swapped_stations=swapped_stations(value),
        seconds=value["seconds"],
    )
    return row


def _status_row(sid, path, status, message) -> dict[str, Any]:
    return {
        "subject_id": sid,
        "zip": str(path),
        "status": status,
        "message": one_line(message) if message else "",
        **{c: np.nan for c in ("n_stations", "n_series", "n_slices", "seconds")},
        "swapped_stations": "",
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
    spacing_mm: Sequence[float] | None,
    trim_slices: int,
) -> Path | None:
    """Write ``manifest.yaml``, ``subjects.csv`` and ``ingest_stations.csv`` for every subject
    ingested in ``out``.

    One row per zip (subject-visit, ``subject_id`` ``<eid>_<instance>``): a participant's
    visits are separate rows sharing ``participant_id`` (the eid), with ``visit`` the zip's
    instance (2 first imaging visit, 3 repeat imaging visit).
    Besides the manifest's columns, ``subjects.csv`` carries each subject's ``ingest_status``
    (``ok`` or ``flagged``), ``ingest_message`` (flags, then notes) and ``swapped_stations``.
    """
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
                PARTICIPANT_COLUMN: record["eid"],
                VISIT_COLUMN: record["instance"],
                "eid": record["eid"],
                "instance": record["instance"],
                **{key: record[key] for key in OUTPUT_IMAGES},
                "split": _split_of(record, values),
                **{c: values[c] for c in COVARIATE_COLUMNS},
                **{t: values[t] for t in TARGETS},
                "scan_date": values["scan_date"],
                "ingest_status": record.get("status", "ok"),
                "swapped_stations": swapped_stations(record),
                "ingest_message": status_message(record),
            }
        )
    write_subject_table(pd.DataFrame(rows), out / "subjects.csv")
    write_subject_table(station_table(records), out / STATIONS_NAME)
    card_path = out / "manifest.yaml"
    write_text_atomic(
        card_path, yaml.safe_dump(dataset_card(spacing_mm, trim_slices), sort_keys=False)
    )
    return card_path


def station_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per subject and station (numbered from the head) of ingestion records."""
    rows = []
    for record in records:
        for station in record.get("stations", []):
            low, high = station["z_mm"]
            rows.append(
                {
                    "subject_id": record["subject_id"],
                    **{k: station[k] for k in ("station", "description")},
                    "z_low_mm": low,
                    "z_high_mm": high,
                    "size_xyz": "x".join(str(n) for n in station["size_xyz"]),
                    "spacing_mm": "x".join(f"{v:g}" for v in station["spacing_mm"]),
                    **{k: station[k] for k in ("swap_score", "swap", "swap_corrected", "cropped")},
                }
            )
    return pd.DataFrame(rows, columns=STATION_COLUMNS)


def read_stations(out: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-station table written by :func:`ingest_ukb` in ``out``."""
    path = Path(out) / STATIONS_NAME
    if not path.is_file():
        raise LiverfatError(f"{path}: no ingestion station table")
    return pd.read_csv(path, dtype={"subject_id": str, "cropped": str}, keep_default_na=False)


def dataset_card(spacing_mm: Sequence[float] | None, trim_slices: int) -> dict[str, Any]:
    """The dataset card of an ingested UK Biobank cohort (see ``data_manifests/ukbiobank.yaml``).

    ``spacing_mm`` ``None`` records the default grid: native in-plane pixels, 3 mm slices.
    """
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
            "spacing_mm": [float(s) for s in (spacing_mm or OUTPUT_SPACING_MM)],
            "in_plane": (
                "native: each zip's own pixels (500 / 224 = 2.2321 mm), no in-plane resampling"
                if spacing_mm is None
                else "resampled to spacing_mm"
            ),
            "direction": "identity (LPS: +x left, +y posterior, +z superior)",
            "trim_slices_per_station_end": int(trim_slices),
            "interpolation": "linear; overlaps blended linearly across each seam",
            "gaps": "output slices no station covers are 0 (the subject is flagged)",
        },
        "quality": {
            "ingest_status": "ok, or flagged: a missing station or series, a zero-filled z-gap, "
            f"fewer than {MIN_FUSED_SLICES} slices, or an unsure or uncorrected water-fat swap",
            "ingest_message": "the flags, then the notes (repairs), one line",
            "swapped_stations": "stations (1 = neck) whose water and fat were found swapped",
            "swap_score": "median fat fraction of the body core minus that of its outer 10 mm "
            f"(percentage points): > {SWAP_SCORE_THRESHOLD + SWAP_SCORE_MARGIN:g} swapped, "
            f"< {SWAP_SCORE_THRESHOLD - SWAP_SCORE_MARGIN:g} normal (liverfat.data.swaps)",
            "stations_table": STATIONS_NAME,
        },
        "fields": {
            str(field_id): {k: v for k, v in entry.items()}
            for field_id, entry in UKB_FIELDS.items()
        },
        "targets": TARGETS,
        "visits": visit_entries("the same participant (eid) scanned again, a new zip"),
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
