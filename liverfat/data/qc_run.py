"""``liverfat qc``: the checks of :mod:`liverfat.data.qc` over a manifest, as tables and pictures.

Writes into the output folder:

* ``work/<subject>.json``: one subject's checks, written atomically as it finishes with a resume
  key (the settings and the subject's image files, :mod:`liverfat.data.fingerprint`); a rerun
  skips subjects whose key still matches;
* ``qc.csv``: the long table ``subject_id, check, value, threshold, flag, message`` (a subject
  whose images cannot be read is one row with check ``read``, flag ``failed``);
* ``qc_summary.csv``: per check, how many subjects it flagged (and ``read``: how many failed);
* ``qc_scores.csv`` (with a truth table, :func:`score_run`): sensitivity and specificity per
  artefact class (:func:`~liverfat.data.qc_scoring.score_qc`);
* ``thumbnails/<subject>.png``: for flagged subjects, the mean-intensity coronal projection of
  the water image.

The tables are rewritten only when their content changes, so a resumed run that finds nothing
new writes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from liverfat.data.atomic import atomic_path, write_json_atomic, write_text_atomic
from liverfat.data.fingerprint import fingerprint, subject_files
from liverfat.data.manifest import Manifest
from liverfat.data.qc import CHECKS, SLAB_MM, subject_qc
from liverfat.parallel import map_subjects

COLUMNS = ("subject_id", "check", "value", "threshold", "flag", "message")


@dataclass
class QcRun:
    """What a :func:`run_qc` call found: the long table and the subjects that failed to read."""

    out: Path
    table: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)

    def n_flagged(self, check: str | None = None) -> int:
        """Subjects with a flag on ``check`` (any check when None; failed reads not counted)."""
        rows = self.table[self.table["flag"] == "yes"]
        if check is not None:
            rows = rows[rows["check"] == check]
        return int(rows["subject_id"].nunique())

    def line(self, n_subjects: int) -> str:
        counts = ", ".join(f"{c} {self.n_flagged(c)}" for c in CHECKS)
        return f"{self.n_flagged()} of {n_subjects} subjects flagged ({counts}) -> {self.out}"


def _key(manifest: Manifest, subject_id: str, slab_mm: float) -> str:
    return fingerprint({"slab_mm": slab_mm, "files": subject_files(manifest, subject_id)})


def _subject_job(job: tuple) -> dict:
    """Worker: one subject's checks, its thumbnail when flagged, and its work JSON."""
    manifest, subject_id, slab_mm, out, key = job
    record = subject_qc(manifest, subject_id, slab_mm=slab_mm)
    projection = record.pop("projection")
    thumbnail = Path(out) / "thumbnails" / f"{subject_id}.png"
    if projection is None:
        thumbnail.unlink(missing_ok=True)  # flagged on an earlier run, not any more
    else:
        write_thumbnail(
            projection,
            record["spacing_mm"],
            thumbnail,
            title=f"{subject_id}: " + ", ".join(c["check"] for c in record["checks"] if c["flag"]),
        )
    record["key"] = key
    write_json_atomic(Path(out) / "work" / f"{subject_id}.json", record)
    return record


def write_thumbnail(projection: np.ndarray, spacing_mm, path: Path, *, title: str) -> None:
    """A coronal projection (z, x; superior row first) as a PNG at its physical aspect ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = projection.shape
    extent = (0, cols * spacing_mm[0], 0, rows * spacing_mm[2])
    figure, axes = plt.subplots(figsize=(3, 3 * max(rows * spacing_mm[2], 1) / max(extent[1], 1)))
    try:
        axes.imshow(projection, cmap="gray", extent=extent, interpolation="nearest")
        axes.set_title(title, fontsize=7)
        axes.set_axis_off()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    finally:
        plt.close(figure)


def _read_done(path: Path, key: str) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def _rows(record: dict) -> list[dict]:
    return [
        {
            "subject_id": record["subject_id"],
            "check": c["check"],
            "value": c["value"],
            "threshold": c["threshold"],
            "flag": "yes" if c["flag"] else "no",
            "message": c["message"],
        }
        for c in record["checks"]
    ]


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    write_text_atomic(path, text)


def run_qc(
    manifest: Manifest,
    out: str | os.PathLike[str],
    *,
    slab_mm: float = SLAB_MM,
    executor: str = "processes",
    n_workers: int | None = None,
    progress: str | None = "qc",
) -> QcRun:
    """Run every QC check on every subject of ``manifest``; write the outputs (module docstring).

    Resumable: subjects with a matching ``work/<subject>.json`` are not read again. A subject
    that fails to read is a ``read`` / ``failed`` row and the batch goes on (it is tried again
    on the next run).
    """
    if not slab_mm > 0:
        raise ValueError(f"--slab-mm must be > 0, got {slab_mm}")
    out = Path(out)
    records: dict[str, dict] = {}
    jobs = []
    for sid in manifest.subject_ids:
        key = _key(manifest, sid, slab_mm)
        done = _read_done(out / "work" / f"{sid}.json", key)
        if done is not None:
            records[sid] = done
        else:
            jobs.append((manifest.select(subject_ids=[sid]), sid, slab_mm, str(out), key))
    failures: dict[str, str] = {}
    for outcome in map_subjects(
        _subject_job, jobs, executor=executor, n_workers=n_workers, progress=progress
    ):
        sid = jobs[outcome.index][1]
        if outcome.ok:
            records[sid] = outcome.value
        else:
            failures[sid] = str(outcome.error)
    rows = []
    for sid in manifest.subject_ids:
        if sid in records:
            rows.extend(_rows(records[sid]))
        else:
            rows.append(
                dict(
                    zip(
                        COLUMNS, (sid, "read", np.nan, np.nan, "failed", failures[sid]), strict=True
                    )
                )
            )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    summary = pd.DataFrame(
        [
            {"check": c, "n_flagged": int((table["check"] == c).mul(table["flag"] == "yes").sum())}
            for c in CHECKS
        ]
        + [{"check": "read", "n_flagged": len(failures)}]
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out / "qc.csv", table.to_csv(index=False))
    _write_if_changed(out / "qc_summary.csv", summary.to_csv(index=False))
    return QcRun(out, table, failures)


def score_run(run: QcRun, truth_csv: str | os.PathLike[str]) -> list[str]:
    """Score ``run``'s table against a truth CSV: write ``qc_scores.csv``, return one line per
    artefact class (:mod:`liverfat.data.qc_scoring`). A missing or unusable truth table raises
    :class:`~liverfat.errors.LiverfatError` (one line)."""
    from liverfat.data.qc_scoring import score_lines, score_qc
    from liverfat.errors import LiverfatError

    try:
        truth = pd.read_csv(truth_csv, dtype={"subject_id": str})
        scores = score_qc(run.table, truth)
    except (OSError, ValueError, KeyError) as error:
        raise LiverfatError(f"{truth_csv}: cannot score QC against it: {error}") from None
    _write_if_changed(run.out / "qc_scores.csv", scores.to_csv(index=False))
    return score_lines(scores)
