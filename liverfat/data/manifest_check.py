"""Everything ``liverfat manifest check`` reports: a manifest's problems, one line each.

Table layout (empty or duplicate ids, no image column, half a Dixon pair, no rows), splits,
target and covariate values (not numbers, not finite, outside the card's range), and each
subject's files (unreadable, truncated, NaN voxels, not a 3D scalar volume, an empty liver mask,
an all-zero signal image, ROI JSON that is not ROIs or leaves the grid, grids that differ).
:meth:`liverfat.data.manifest.Manifest.problems` calls :func:`manifest_problems`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from liverfat.data.geometry import geometry_mismatch, geometry_of
from liverfat.data.io import nifti_payload_problem, read_header, read_volume
from liverfat.data.manifest import (
    GRID_COLUMNS,
    IMAGE_COLUMNS,
    PARTICIPANT_COLUMN,
    VISIT_COLUMN,
    Manifest,
)
from liverfat.data.rois import check_rois_inside, rois_from_json
from liverfat.errors import ImageError

#: Signal images (not masks or ROIs): each is read in full, as the engines will read it.
SIGNAL_COLUMNS = ("water", "fat", "fat_fraction", "in_phase", "opposed_phase", "image")


def manifest_problems(
    manifest: Manifest, *, check_files: bool = True, check_geometry: bool = True
) -> list[str]:
    """Every problem, one line each (empty list: the manifest is sound)."""
    problems: list[str] = []
    table = manifest.table_path.name
    ids = manifest.subjects["subject_id"]
    if ids.eq("").any():
        rows = [str(i + 2) for i in np.flatnonzero(ids.eq(""))]
        problems.append(f"{table}: empty subject_id on line(s) {', '.join(rows[:10])}")
    for dup in sorted(set(ids[ids.duplicated() & ids.ne("")])):
        problems.append(f"{table}: duplicate subject_id {dup}")
    if not manifest.image_columns:
        problems.append(f"{table}: no image column (expected some of {', '.join(IMAGE_COLUMNS)})")
    problems += _split_problems(manifest, table)
    problems += _value_problems(manifest, table)
    problems += _visit_problems(manifest, table)
    problems += _layout_problems(manifest, table)
    if check_files:
        for _, row in manifest.subjects.iterrows():
            problems += _subject_file_problems(manifest, row, check_geometry)
    return problems


def _layout_problems(manifest: Manifest, table: str) -> list[str]:
    """What every engine would trip over: no subjects, half a Dixon pair."""
    problems = []
    if manifest.subjects.empty:
        problems.append(f"{table}: no subjects (a header without rows)")
    columns = set(manifest.image_columns)
    for pair in (("water", "fat"), ("in_phase", "opposed_phase")):
        if len(columns & set(pair)) == 1:
            missing = next(c for c in pair if c not in columns)
            problems.append(f"{table}: {' and '.join(pair)} come in pairs; no {missing} column")
    return problems


def _split_problems(manifest: Manifest, table: str) -> list[str]:
    problems = []
    for name, entry in manifest.splits.items():
        parent = (entry or {}).get("subset_of")
        if parent is not None and parent not in manifest.splits:
            problems.append(f"card: split {name} is subset_of unknown split {parent}")
    if "split" in manifest.subjects.columns:
        for _, row in manifest.subjects.iterrows():
            if row["split"] not in manifest.splits:
                problems.append(
                    f"{table}: subject {row['subject_id']}: unknown split {row['split']!r} "
                    f"(card has {', '.join(manifest.splits)})"
                )
    return problems


def _value_problems(manifest: Manifest, table: str) -> list[str]:
    problems = []
    raw = manifest._raw_values
    ranges = {name: (entry or {}).get("range") for name, entry in manifest.targets.items()}
    ranges.update(
        {
            name: (entry or {}).get("range")
            for name, entry in (manifest.card.get("covariates") or {}).items()
        }
    )
    for column, values in raw.items():
        parsed = manifest.subjects[column]
        for index in np.flatnonzero(parsed.isna() & values.ne("")):
            sid = manifest.subjects["subject_id"].iloc[index]
            problems.append(
                f"{table}: subject {sid}: {column} {values.iloc[index]!r} is not a number"
            )
        for index in np.flatnonzero(np.isinf(parsed.to_numpy(float))):
            sid = manifest.subjects["subject_id"].iloc[index]
            problems.append(f"{table}: subject {sid}: {column} {parsed.iloc[index]} is not finite")
        bounds = ranges.get(column)
        if bounds:
            low, high = (float(b) for b in bounds)
            outside = np.isfinite(parsed) & ((parsed < low) | (parsed > high))
            for index in np.flatnonzero(outside):
                sid = manifest.subjects["subject_id"].iloc[index]
                problems.append(
                    f"{table}: subject {sid}: {column} {parsed.iloc[index]:g} "
                    f"outside [{low:g}, {high:g}]"
                )
    for column in manifest.targets:
        if column not in manifest.subjects.columns:
            problems.append(f"{table}: target column {column} missing")
    return problems


def _visit_problems(manifest: Manifest, table: str) -> list[str]:
    """A visit that is not a whole number, and one participant with the same visit twice."""
    if VISIT_COLUMN not in manifest.subjects.columns:
        return []
    problems = []
    raw = manifest.subjects[VISIT_COLUMN].astype(str).str.strip()
    visits = manifest.visits()
    for sid, text, value in zip(manifest.subject_ids, raw, visits, strict=True):
        if text and not (np.isfinite(value) and value == int(value)):
            problems.append(f"{table}: subject {sid}: visit {text!r} is not a whole number")
    participants = manifest.participants()
    if participants is not None:
        pairs = pd.Series([f"{participants[s]} visit {v:g}" for s, v in visits.items()])
        for pair in sorted(set(pairs[pairs.duplicated() & visits.notna().to_numpy()])):
            problems.append(f"{table}: {PARTICIPANT_COLUMN} {pair} appears more than once")
    return problems


def _subject_file_problems(manifest: Manifest, row: pd.Series, check_geometry: bool) -> list[str]:
    sid = row["subject_id"]
    problems = []
    headers = {}
    rois_json: list[Path] = []
    for column in manifest.image_columns:
        value = row[column]
        if not value.strip():
            continue
        path = manifest.root / value.strip()
        if column == "rois" and path.suffix.lower() == ".json":
            rois_json.append(path)  # not an image: checked against the grid below
            continue
        try:
            header = read_header(path)
            headers[column] = (path, header)
            problems += [
                f"subject {sid}: {column}: {path}: {p}"
                for p in _file_problems(path, header, column)
            ]
        except ImageError as exc:
            problems.append(f"subject {sid}: {column}: {exc}")
    grid = next((h for c, (_, h) in headers.items() if c in GRID_COLUMNS), None)
    for path in rois_json:
        problem = _rois_json_problem(path, grid)
        if problem:
            problems.append(f"subject {sid}: rois: {problem}")
    if not any(c in headers or row.get(c, "").strip() for c in IMAGE_COLUMNS):
        problems.append(f"subject {sid}: no image at all")
    if check_geometry:
        grid = [(c, headers[c]) for c in GRID_COLUMNS if c in headers]
        if grid:
            first_column, (first_path, first_header) = grid[0]
            for column, (path, header) in grid[1:]:
                problem = geometry_mismatch(geometry_of(first_header), geometry_of(header))
                if problem:
                    problems.append(
                        f"subject {sid}: {first_column} {first_path.name} and "
                        f"{column} {path.name} "
                        f"differ in geometry: {problem}"
                    )
    return problems


def _file_problems(path: Path, header: sitk.ImageFileReader, column: str) -> list[str]:
    """What the header and the payload say is wrong with one image file of a subject."""
    problems = []
    if header.GetDimension() != 3:
        problems.append(f"a {header.GetDimension()}D image; a 3D volume is needed")
    if header.GetNumberOfComponents() != 1:
        problems.append(f"a vector image ({header.GetNumberOfComponents()} components per voxel)")
    if column in SIGNAL_COLUMNS and not problems:
        # Read as the engines will: truncation, NaN / infinite and all-zero voxels, one read.
        problems += _read_problems(path)
        return problems
    truncated = nifti_payload_problem(path)  # the header alone reads as whole
    if truncated:
        problems.append(truncated)
    elif column == "liver_mask" and not problems and not _has_voxels(path):
        problems.append("the liver mask is empty")
    return problems


def _read_problems(path: Path) -> list[str]:
    """Why :func:`liverfat.data.io.read_volume` refuses ``path`` (truncated, NaN / infinite or
    all-zero voxels), without the path it names, or nothing."""
    try:
        read_volume(path)
    except ImageError as exc:
        return [str(exc).removeprefix(f"{path}: ")]
    return []


def _rois_json_problem(path: Path, grid: sitk.ImageFileReader | None) -> str | None:
    """What is wrong with an ROI JSON file (not ROIs, or ROIs off the subject's grid)."""
    try:
        rois = rois_from_json(path)
        if grid is not None:
            check_rois_inside(rois, tuple(reversed(grid.GetSize())))
    except ImageError as exc:
        return str(exc)
    return None


def _has_voxels(path: Path) -> bool:
    mask = read_volume(path, allow_empty=True)
    return bool(np.any(sitk.GetArrayViewFromImage(mask)))  # the view while ``mask`` lives
