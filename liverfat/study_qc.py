"""Scan QC as a study stage: ``liverfat qc`` on the study's manifest before any engine runs.

A study's ``qc:`` key (``slab_mm``, optional; ``policy``: per check ``exclude`` or ``mark``,
``mark`` for every check not named) runs :func:`liverfat.data.qc_run.run_qc` into ``OUT/qc/``
(resumable: subjects already checked with the same settings are not read again). Then:

* subjects flagged by a check whose policy is ``exclude`` are left out of the manifest every
  later stage sees (engines, comparison, learning curve, grading) and listed in
  ``OUT/qc/excluded.csv`` (``subject_id, check, message``);
* subjects flagged by a ``mark`` check keep their rows: every predictions table of the study's
  engines gets ``qc: CHECK (MESSAGE)`` appended to the row's ``message`` (``; `` between notes):
  ``predictions/NAME.csv``, the stage tables beside it (``NAME.cv.csv``, ``NAME.fit.csv``), the
  engines' own tables under ``engines/NAME/`` (e.g. the network's finished folds) and the
  learning curve's cells. Marking is idempotent: notes from an earlier run are replaced, never
  doubled, and a table is rewritten (atomically) only when its messages change, so a resumed
  study reuses its stages as before;
* the report gets a "Scan QC" section: subjects flagged per check and policy, and the flagged
  subjects.

A subject whose images cannot be read (check ``read``) is neither excluded nor marked: its
engines give it failed rows of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, PositiveFloat

from liverfat.data.atomic import write_text_atomic
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsError, PredictionsTable, sidecar_path
from liverfat.data.qc import CHECKS, SLAB_MM
from liverfat.errors import LiverfatError
from liverfat.study_schema import stage_options

#: What a study may do with the subjects a check flags.
POLICIES = ("exclude", "mark")
DEFAULT_POLICY = "mark"


class QcOptions(BaseModel):
    """A study's ``qc:`` key."""

    model_config = ConfigDict(extra="forbid")
    slab_mm: PositiveFloat = SLAB_MM  # swap-check slab height along z (mm)
    policy: dict[str, str] = {}  # check -> exclude | mark

    def policy_of(self, check: str) -> str:
        return self.policy.get(check, DEFAULT_POLICY)


def parse_qc(raw: dict[str, Any], where: str) -> QcOptions | None:
    """The study's ``qc:`` options (None without the key), or one line that starts with
    ``where`` (e.g. ``study.yaml: study key``) and names the wrong key."""
    if "qc" not in raw:
        return None
    options = stage_options(QcOptions, raw["qc"], where, "qc")
    for check, policy in options.policy.items():
        if check not in CHECKS:
            raise LiverfatError(
                f"{where} qc.policy.{check}: unknown check (known: {', '.join(CHECKS)})"
            )
        if policy not in POLICIES:
            raise LiverfatError(
                f"{where} qc.policy.{check}: must be {' or '.join(POLICIES)}, got {policy!r}"
            )
    return options


@dataclass
class StudyQc:
    """What the study's QC stage found; without a ``qc:`` key, a stage that does nothing."""

    options: QcOptions | None = None
    flagged: pd.DataFrame | None = None  # qc.csv rows with flag yes, plus their policy
    n_subjects: int = 0
    n_failed: int = 0
    marks: dict[str, str] = field(default_factory=dict)  # subject -> "qc: CHECK (...); ..."
    folder: Path | None = None  # OUT/qc/, with thumbnails/<subject>.png of flagged subjects

    @property
    def excluded(self) -> list[str]:
        if self.flagged is None:
            return []
        rows = self.flagged[self.flagged["policy"] == "exclude"]
        return sorted(rows["subject_id"].unique())

    def mark(self, table: PredictionsTable) -> PredictionsTable:
        """``table`` with each marked subject's QC note appended to its rows' ``message``.

        Idempotent: QC notes already in a message (an earlier run's, or a reused engine
        table's) are dropped first, so each row carries exactly the current notes, once.
        """
        frame = table.frame
        message = frame["message"].fillna("").astype(str)
        notes = frame["subject_id"].map(self.marks)
        touch = notes.notna() | message.str.contains("qc: ", regex=False)
        if not touch.any():
            return table
        frame = frame.copy()
        frame["message"] = frame["message"].astype(object)
        frame.loc[touch, "message"] = [
            with_note(m, n) for m, n in zip(message[touch], notes[touch], strict=True)
        ]
        return PredictionsTable(frame, table.run)

    def mark_outputs(self, out: Path, log: Callable[[str], None] = lambda m: None) -> list[Path]:
        """Mark every predictions table the study's engines wrote under ``out`` (see
        :data:`MARKED_FOLDERS`; a table is a CSV with its ``.run.json`` sidecar), rewriting
        atomically only those whose messages change; return the rewritten paths."""
        changed = []
        for folder in MARKED_FOLDERS:
            for csv in sorted((out / folder).rglob("*.csv")):
                if not sidecar_path(csv).is_file():
                    continue
                try:
                    table = PredictionsTable.read(csv)
                except PredictionsError:
                    continue  # a CSV of another kind that happens to have a sidecar
                marked = self.mark(table)
                if marked is not table and not _same_messages(marked, table):
                    marked.write(csv)
                    changed.append(csv)
        if changed:
            log(f"[qc] QC notes brought up to date in {len(changed)} predictions table(s)")
        return changed

    def sections(self) -> list[Any]:
        """The report's "Scan QC" section (none without a ``qc:`` key)."""
        if self.options is None or self.flagged is None:
            return []
        from liverfat.evaluation.report import ExtraSection

        counts = pd.DataFrame(
            [
                {
                    "check": c,
                    "policy": self.options.policy_of(c),
                    "n_flagged": int(
                        self.flagged.loc[self.flagged["check"] == c, "subject_id"].nunique()
                    ),
                }
                for c in CHECKS
            ]
        )
        text = (
            f"Automated scan QC of the study's {self.n_subjects} subjects (swap slab "
            f"{self.options.slab_mm:g} mm): {len(self.excluded)} subject(s) excluded from every "
            f"stage by an 'exclude' check; subjects flagged by a 'mark' check keep their rows, "
            f"with the flag in each predictions table's message. {self.n_failed} subject(s) "
            "could not be read. Tables and thumbnails of flagged subjects are in qc/."
        )
        columns = ["subject_id", "check", "policy", "value", "threshold", "message"]
        flagged = self.flagged[columns].round({"value": 2, "threshold": 2})
        section = ExtraSection("Scan QC", text, counts, tables=[("Flagged subjects", flagged)])
        section.figures = self._thumbnails()
        return [section]

    def _thumbnails(self, most: int = 24) -> list[Any]:
        """The flagged subjects' coronal thumbnails (the first ``most``) as one figure."""
        if self.folder is None or self.flagged is None:
            return []
        from liverfat.evaluation.plots import image_grid
        from liverfat.evaluation.report import FigureItem

        checks = self.flagged.groupby("subject_id")["check"].agg(", ".join)
        ids = [s for s in checks.index if (self.folder / "thumbnails" / f"{s}.png").is_file()]
        if not ids:
            return []
        shown = ids[:most]
        paths = [self.folder / "thumbnails" / f"{s}.png" for s in shown]
        figure = image_grid(paths, [f"{s}: {checks[s]}" for s in shown])
        caption = (
            f"Mean-intensity coronal projections of the flagged subjects ({len(shown)} of "
            f"{len(ids)}), titled with their flags; all are in qc/thumbnails/."
        )
        return [FigureItem("qc_thumbnails", caption, figure)]


#: The folders below a study's output folder whose predictions tables carry the QC notes.
MARKED_FOLDERS = ("predictions", "engines", "learning_curve/predictions")


def _is_note(part: str) -> bool:
    return part.endswith(")") and any(part.startswith(f"qc: {c} (") for c in CHECKS)


def with_note(message: Any, note: Any) -> str:
    """``message`` without its QC notes, then ``note`` (if any) appended after ``; ``."""
    text = "" if pd.isna(message) else str(message)
    parts = [p for p in text.split("; ") if p and not _is_note(p)]
    if isinstance(note, str) and note:
        parts.append(note)
    return "; ".join(parts)


def _same_messages(a: PredictionsTable, b: PredictionsTable) -> bool:
    return (
        a.frame["message"].fillna("").astype(str).equals(b.frame["message"].fillna("").astype(str))
    )


def scan_qc(study: Any, manifest: Manifest, log: Callable[[str], None]) -> tuple[Manifest, StudyQc]:
    """Run the study's QC into ``OUT/qc/`` (nothing without a ``qc:`` key); return the manifest
    the later stages see (``exclude``-flagged subjects left out) and the stage's findings."""
    options = study.qc
    if options is None:
        return manifest, StudyQc()
    from liverfat.data.qc_run import run_qc

    log("[qc] running ...")
    kind = study.executor.get("kind", "serial")
    result = run_qc(
        manifest,
        study.out / "qc",
        slab_mm=options.slab_mm,
        executor="processes" if kind == "dask" else kind,
        n_workers=study.executor.get("workers") or 2,
        progress="qc",
    )
    table = result.table
    flagged = table[(table["flag"] == "yes") & table["check"].isin(CHECKS)].copy()
    flagged["policy"] = flagged["check"].map(options.policy_of)
    marks: dict[str, str] = {}
    for row in flagged[flagged["policy"] == "mark"].itertuples(index=False):
        note = f"qc: {row.check} ({row.message})"
        marks[row.subject_id] = (
            f"{marks[row.subject_id]}; {note}" if row.subject_id in marks else note
        )
    qc = StudyQc(options, flagged.reset_index(drop=True), len(manifest), len(result.failures))
    qc.folder = study.out / "qc"
    excluded = set(qc.excluded)
    qc.marks = {s: m for s, m in marks.items() if s not in excluded}
    listed = flagged[flagged["policy"] == "exclude"][["subject_id", "check", "message"]]
    write_text_atomic(study.out / "qc" / "excluded.csv", listed.to_csv(index=False))
    log(f"[qc] {result.line(len(manifest))}; {len(excluded)} excluded, {len(qc.marks)} marked")
    if excluded:
        manifest = manifest.select(
            subject_ids=[s for s in manifest.subject_ids if s not in excluded]
        )
    return manifest, qc
