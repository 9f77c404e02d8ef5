"""The UK Biobank CSV extract: reference liver fat (fields 22402, 22436) and covariates.

Both column styles of an extract are understood: ``22402-2.0`` (classic basket) and
``p22402_i2`` (research analysis platform). :func:`subject_fields` gives one subject-visit's
targets and covariates, with age computed from the birth year and month and the scan date.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverfat.data.manifest import target_entry
from liverfat.errors import LiverfatError, one_line

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
    "liver_pdff_pct": target_entry(
        "liver PDFF, UK Biobank field 22402 (dedicated liver MRI)", "%", 100
    ),
    "liver_pdff_22436_pct": target_entry("liver PDFF, UK Biobank field 22436 (AMRA)", "%", 100),
}

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
