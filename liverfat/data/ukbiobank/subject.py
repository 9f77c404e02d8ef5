"""One subject: a field-20201 zip to fused NIfTI volumes and its ``ingest.json`` record.

:func:`ingest_zip` reads the zip safely, groups its series into stations numbered from the head,
checks the scan is complete (:mod:`~liverfat.data.ukbiobank.checks`), pairs water and fat
(cropped to their common size where they differ), tests every station for a water-fat swap
(:func:`liverfat.data.swaps.station_swap_score`) and swaps a swapped one back, fuses the
stations, and writes water, fat, fat fraction (%) and body mask.

The record says what happened: ``status`` is ``ok`` or ``flagged``; ``flags`` are the reasons a
subject is flagged (a missing station or series, a zero-filled z-gap, a short volume, an unsure
or uncorrected swap), ``notes`` what was repaired (a swap corrected, water and fat cropped, a
non-DICOM member skipped), and ``stations`` one entry per station.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverfat.data.atomic import write_json_atomic
from liverfat.data.dixon import body_mask, fat_fraction
from liverfat.data.io import write_volume
from liverfat.data.swaps import (
    SWAP_SCORE_MARGIN,
    SWAP_SCORE_THRESHOLD,
    station_swap_score,
    swap_decision,
)
from liverfat.data.ukbiobank import checks
from liverfat.data.ukbiobank.fusion import (
    StationPair,
    fuse_stations,
    fusion_grid,
    native_spacing,
    station_pair,
    uncovered_runs,
    z_range_mm,
)
from liverfat.data.ukbiobank.stations import TRIM_SLICES, read_series, select_stations
from liverfat.data.ukbiobank.zipsafe import check_manifest, parse_zip_name, read_zip_members

DONE_NAME = "ingest.json"
OUTPUT_IMAGES = ("water", "fat", "fat_fraction", "body_mask")


@dataclass(frozen=True)
class IngestJob:
    """One zip to ingest into ``out`` (picklable, for worker processes).

    Attributes
    ----------
    spacing_mm:
        Output voxel spacing (x, y, z; mm); ``None``: the stations' native in-plane pixels
        (UK Biobank 500 / 224 = 2.2321 mm) and 3 mm slices.
    trim_slices:
        Slices removed at each end of every station before fusion.
    n_stations:
        Stations a complete zip holds (each with 4 series); fewer are flagged.
    min_slices:
        Fused volumes with fewer slices are flagged (0: never).
    fix_swaps:
        Swap back the water and fat of a station found swapped (else flag it).
    """

    zip_path: str
    out: str
    spacing_mm: tuple[float, float, float] | None = None
    trim_slices: int = TRIM_SLICES
    n_stations: int = checks.EXPECTED_STATIONS
    min_slices: int = checks.MIN_FUSED_SLICES
    fix_swaps: bool = True


def subject_folder(out: str | os.PathLike[str], subject_id: str) -> Path:
    return Path(out) / "images" / subject_id


def ingest_zip(job: IngestJob) -> dict[str, Any]:
    """Ingest one zip (or return its earlier record); raise :class:`ImageError` on bad input.

    Returns the record written to ``images/<subject_id>/ingest.json`` (module docstring): ids,
    relative image paths, scan date (DICOM StudyDate), status, flags, notes, stations, grid.
    """
    name = parse_zip_name(job.zip_path)
    sid = name.subject_id
    done = subject_folder(job.out, sid) / DONE_NAME
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    start = time.perf_counter()
    members = read_zip_members(job.zip_path, sid)
    manifest_name = check_manifest(members, sid)
    series, skipped = read_series(members, sid, manifest_name=manifest_name)
    del members
    stations = select_stations(series, sid)
    water_series = sorted(stations["water"], key=lambda s: -s.centre_mm)  # head first
    fat_series = sorted(stations["fat"], key=lambda s: -s.centre_mm)
    numbering = checks.number_stations(
        [checks.is_breath_hold(s.description) for s in water_series],
        checks.gaps_between(water_series),
        job.n_stations,
    )
    n_series, flags = checks.missing_series_flags(stations, numbering.numbers, job.n_stations)
    notes = [f"skipped non-DICOM member {member}" for member in skipped]
    pairs, station_records = [], []
    for number, water, fat in zip(numbering.numbers, water_series, fat_series, strict=True):
        label = f"station {number} of {job.n_stations}"
        pair = station_pair(water, fat, sid, label, trim_slices=job.trim_slices)
        record = _swap_check(pair, label, job.fix_swaps, flags, notes)
        if pair.cropped:
            notes.append(pair.cropped)
        pairs.append(pair)
        station_records.append({"station": number, "description": water.description, **record})
    grid, arrays = _fuse(pairs, job.spacing_mm)
    flags += _coverage_flags(pairs, grid, numbering, job.n_stations)
    flags += checks.slice_count_flag(grid.GetSize()[2], job.min_slices)
    for pair, record in zip(pairs, station_records, strict=True):
        record.update(_station_geometry(pair.water))
    paths = _write_images(job.out, sid, grid, arrays)
    record = {
        "subject_id": sid,
        "eid": name.eid,
        "instance": name.instance,
        "zip": str(job.zip_path),
        **paths,
        "status": "flagged" if flags else "ok",
        "flags": flags,
        "notes": notes,
        "study_date": str(water_series[0].slices[0].get("StudyDate", "")),
        "n_stations": len(pairs),
        "n_series": n_series,
        "stations": station_records,
        "series_kinds": sorted({s.kind for s in series}),
        "size_xyz": list(grid.GetSize()),
        "spacing_mm": list(grid.GetSpacing()),
        "trim_slices": job.trim_slices,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(done, record)  # written last: its presence marks the subject done
    return record


def _swap_check(
    pair: StationPair, label: str, fix: bool, flags: list[str], notes: list[str]
) -> dict[str, Any]:
    """Score one station for a water-fat swap, swap it back if asked, and say so.

    Appends a note for a corrected swap and a flag for an uncorrected or unsure one; returns the
    station's swap entries (score in percentage points, decision, whether it was corrected).
    """
    water = sitk.GetArrayViewFromImage(pair.water)
    fat = sitk.GetArrayViewFromImage(pair.fat)
    try:
        mask = body_mask(water, fat)
    except ValueError:  # a blank station: no body to score
        mask = np.zeros(water.shape, np.uint8)
    score = station_swap_score(water, fat, mask, spacing_mm=pair.water.GetSpacing()[:2])
    decision = swap_decision(score)
    corrected = decision == "swapped" and fix
    limit = SWAP_SCORE_THRESHOLD + SWAP_SCORE_MARGIN
    text = f"swap score {score:+.1f} pp" if np.isfinite(score) else "no swap score (no body)"
    if corrected:
        pair.water, pair.fat = pair.fat, pair.water
        notes.append(f"{label}: water and fat swapped ({text} > {limit:g}), swapped back")
    elif decision == "swapped":
        flags.append(f"{label}: water and fat swapped ({text} > {limit:g}), not corrected")
    elif decision == "unsure":
        flags.append(f"{label}: water-fat swap check unsure ({text}, within +-{limit:g})")
    return {
        "swap_score": round(score, 2) if np.isfinite(score) else None,
        "swap": decision,
        "swap_corrected": corrected,
        "cropped": pair.cropped,
    }


def _fuse(
    pairs: list[StationPair], spacing_mm: tuple[float, float, float] | None
) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """The common grid and the fused water, fat, fat fraction (%) and body mask arrays."""
    water_images = [p.water for p in pairs]
    spacing = spacing_mm if spacing_mm is not None else native_spacing(water_images)
    grid = fusion_grid(water_images, spacing)
    water = fuse_stations(water_images, grid)
    fat = fuse_stations([p.fat for p in pairs], grid)
    arrays = {
        "water": water,
        "fat": fat,
        "fat_fraction": fat_fraction(water, fat),
        "body_mask": body_mask(water, fat),
    }
    return grid, arrays


def _coverage_flags(
    pairs: list[StationPair], grid: sitk.Image, numbering: checks.Numbering, expected: int
) -> list[str]:
    """Flags for the zero-filled z-gaps of the fused grid and for the missing stations."""
    z_out = grid.GetOrigin()[2] + grid.GetSpacing()[2] * np.arange(grid.GetSize()[2])
    centres = [z_range_mm(p.water) for p in pairs]  # head first
    flags, named = [], []
    for first, last in uncovered_runs([p.water for p in pairs], grid):
        # The grid ends at slice centres, so a station lies above and below every run.
        above = min(
            (k for k, (low, _) in enumerate(centres) if low > z_out[last]),
            key=lambda k: centres[k][0],
        )
        below = max(
            (k for k, (_, high) in enumerate(centres) if high < z_out[first]),
            key=lambda k: centres[k][1],
        )
        neighbours = (numbering.numbers[above], numbering.numbers[below])
        missing = [n for n in numbering.missing if neighbours[0] < n < neighbours[1]]
        if not numbering.certain:
            missing = []
        named += missing
        z_mm = (float(z_out[first]), float(z_out[last]))
        flags.append(checks.gap_flag(z_mm, last - first + 1, neighbours, missing, expected))
    return checks.missing_station_flags(numbering, expected, named=named) + flags


def _station_geometry(image: sitk.Image) -> dict[str, Any]:
    """A station's size (x, y, z), spacing (mm) and slice-centre z range (mm) after trimming."""
    low, high = z_range_mm(image)
    return {
        "size_xyz": list(image.GetSize()),
        "spacing_mm": [round(s, 5) for s in image.GetSpacing()],
        "z_mm": [round(low, 2), round(high, 2)],
    }


def _write_images(
    out: str, sid: str, grid: sitk.Image, arrays: dict[str, np.ndarray]
) -> dict[str, str]:
    """Write the fused arrays on ``grid`` as NIfTI; returns their paths relative to ``out``."""
    paths = {key: f"images/{sid}/{key}.nii.gz" for key in OUTPUT_IMAGES}
    for key in OUTPUT_IMAGES:
        image = sitk.GetImageFromArray(arrays[key])
        image.CopyInformation(grid)
        write_volume(image, Path(out) / paths[key])
    return paths
