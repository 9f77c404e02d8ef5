"""The predictions table: the one format every engine writes and the evaluation reads.

Long format, one row per subject x method x target::

    subject_id, method, target, value, std, lower, upper, status, message

``std``/``lower``/``upper`` are empty (NaN) where a method has no uncertainty. ``status`` is
``ok``, ``flagged`` (a value exists but is doubtful, ``message`` says why) or ``failed`` (no value;
``message`` says why). A failed subject is a row, never a silent gap. On disk it is a CSV with a
JSON sidecar ``<stem>.run.json`` holding the method, configuration, package versions, seed and
timings.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverfat.data.atomic import atomic_path, write_json_atomic
from liverfat.errors import LiverfatError, one_line

COLUMNS = ["subject_id", "method", "target", "value", "std", "lower", "upper", "status", "message"]
STATUSES = ("ok", "flagged", "failed")
_FLOAT_COLUMNS = ["value", "std", "lower", "upper"]
_KEY = ["subject_id", "method", "target"]
_VERSIONED_PACKAGES = (
    "liverfat",
    "numpy",
    "scipy",
    "pandas",
    "SimpleITK",
    "scikit-learn",
    "torch",
    "monai",
    "xgboost-cpu",
    "xgboost",
    "pyradiomics-bhklab",
    "itk-elastix",
    "pydeform",
    "dask",
)


class PredictionsError(LiverfatError):
    """A predictions table that breaks the format."""


def prediction_row(
    subject_id: str,
    method: str,
    target: str,
    value: float | None = None,
    *,
    std: float | None = None,
    lower: float | None = None,
    upper: float | None = None,
    status: str = "ok",
    message: str = "",
) -> dict[str, Any]:
    """One row of a predictions table as a dict (None becomes NaN)."""

    def num(x: float | None) -> float:
        return math.nan if x is None else float(x)

    return {
        "subject_id": str(subject_id),
        "method": method,
        "target": target,
        "value": num(value),
        "std": num(std),
        "lower": num(lower),
        "upper": num(upper),
        "status": status,
        "message": message,
    }


def failed_row(subject_id: str, method: str, target: str, message: str) -> dict[str, Any]:
    """A ``failed`` row: no value, one line saying why."""
    return prediction_row(subject_id, method, target, status="failed", message=one_line(message))


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a result, for the run sidecar."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def run_info(
    method: str,
    *,
    configuration: Mapping[str, Any] | None = None,
    seed: int | None = None,
    timings_s: Mapping[str, float] | None = None,
    timestamp: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """The ``run.json`` content: method, configuration, versions, seed, timings (seconds).

    ``timestamp=False`` leaves out the creation time, for outputs that must be byte-identical.
    """
    info = {
        "method": method,
        "configuration": dict(configuration or {}),
        "seed": seed,
        "timings_s": dict(timings_s or {}),
        "versions": package_versions(),
        **extra,
    }
    if timestamp:
        info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return info


@dataclass
class PredictionsTable:
    """A validated predictions table plus its run information.

    Attributes
    ----------
    frame:
        The rows, columns as in :data:`COLUMNS`.
    run:
        The sidecar content (see :func:`run_info`); may be empty for tables read without one.
    """

    frame: pd.DataFrame
    run: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frame = normalise(self.frame)
        validate(self.frame)

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]], run: Mapping[str, Any] | None = None
    ) -> PredictionsTable:
        """Build a table from row dicts (see :func:`prediction_row`)."""
        return cls(pd.DataFrame(list(rows), columns=COLUMNS), dict(run or {}))

    @classmethod
    def concat(cls, tables: Sequence[PredictionsTable]) -> PredictionsTable:
        """Stack several tables (the run info of each is kept under ``parts``)."""
        frames = [t.frame for t in tables]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
        return cls(frame, {"parts": [t.run for t in tables]})

    @classmethod
    def read(cls, path: str | Path) -> PredictionsTable:
        """Read a CSV (and its sidecar when present); raise a one-line error if malformed."""
        path = Path(path)
        if not path.is_file():
            raise PredictionsError(f"{path}: predictions table not found")
        try:
            frame = pd.read_csv(
                path, dtype={"subject_id": str, "method": str, "target": str, "status": str}
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise PredictionsError(f"{path}: not a readable CSV ({one_line(exc)})") from exc
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise PredictionsError(f"{path}: missing columns {', '.join(missing)}")
        run: dict[str, Any] = {}
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            run = json.loads(sidecar.read_text(encoding="utf-8"))
        try:
            return cls(frame[COLUMNS], run)
        except PredictionsError as exc:
            raise PredictionsError(f"{path}: {exc}") from exc

    def write(self, path: str | Path) -> Path:
        """Write the CSV and its ``<stem>.run.json`` sidecar atomically; return the CSV path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.frame.to_csv(tmp, index=False, float_format="%.10g")
        write_json_atomic(sidecar_path(path), self.run)
        return path

    # Convenience views -------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        return sorted(self.frame["method"].unique())

    @property
    def targets(self) -> list[str]:
        return sorted(self.frame["target"].unique())

    def values(self, method: str, target: str, *, usable_only: bool = True) -> pd.Series:
        """Values of one method and target indexed by subject_id (failed rows dropped).

        ``usable_only`` also drops ``flagged`` rows.
        """
        keep = ("ok",) if usable_only else ("ok", "flagged")
        rows = self.frame[
            (self.frame["method"] == method)
            & (self.frame["target"] == target)
            & self.frame["status"].isin(keep)
        ]
        return rows.set_index("subject_id")["value"].astype(float)

    def failures(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] != "ok"]


def sidecar_path(csv_path: str | Path) -> Path:
    """``dir/name.csv`` -> ``dir/name.run.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".run.json")


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes, and empty strings where text is missing."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise PredictionsError(f"missing columns {', '.join(missing)}")
    frame = frame[COLUMNS].copy()
    for col in _FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("subject_id", "method", "target", "status", "message"):
        frame[col] = frame[col].astype("string").fillna("").astype(str)
    return frame.reset_index(drop=True)


def validate(frame: pd.DataFrame) -> None:
    """Raise :class:`PredictionsError` naming the first rows that break the format."""
    problems: list[str] = []
    bad_status = ~frame["status"].isin(STATUSES)
    if bad_status.any():
        problems.append(f"unknown status {sorted(set(frame.loc[bad_status, 'status']))}")
    for col in ("subject_id", "method", "target"):
        if (frame[col] == "").any():
            problems.append(f"empty {col}")
    usable = frame["status"] != "failed"
    no_value = usable & ~np.isfinite(frame["value"])
    if no_value.any():
        problems.append(
            "ok/flagged rows without a finite value for subjects "
            + ", ".join(frame.loc[no_value, "subject_id"].head(5))
        )
    failed_without_reason = (frame["status"] != "ok") & (frame["message"] == "")
    if failed_without_reason.any():
        problems.append("failed/flagged rows must say why in 'message'")
    inverted = frame["lower"] > frame["upper"]
    if inverted.any():
        problems.append("rows with lower > upper")
    negative_std = frame["std"] < 0
    if negative_std.any():
        problems.append("rows with negative std")
    dup = frame.duplicated(_KEY, keep=False)
    if dup.any():
        first = frame.loc[dup, _KEY].iloc[0].tolist()
        problems.append(f"duplicate rows for subject/method/target {first}")
    if problems:
        raise PredictionsError("; ".join(problems))
