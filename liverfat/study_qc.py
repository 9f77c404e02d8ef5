"""Scan QC as a study stage: ``liverfat qc`` on the study's manifest before any engine runs.

A study's ``qc:`` key (``slab_mm``, optional; ``policy``: per check ``exclude`` or ``mark``,
``mark`` for every check not named) runs :func:`liverfat.data.qc_run.run_qc` into ``OUT/qc/``
(resumable: subjects already checked with the same settings are not read again). Then:

* subjects flagged by a check whose policy is ``exclude`` are left out of the manifest every
  later stage sees (engines, comparison, learning curve, grading) and listed in
  ``OUT/qc/excluded.csv`` (``subject_id, check, message``);
* subjects flagged by a ``mark`` check keep their rows: each engine's predictions table gets
  ``qc: CHECK (MESSAGE)`` appended to the row's ``message`` (``; `` between notes);
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
from liverfat.data.predictions import PredictionsTable
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
        """``table`` with each marked subject's QC note appended to its rows' ``message``."""
        if not self.marks:
            return table
        frame = table.frame.copy()
        notes = frame["subject_id"].map(self.marks)
        has = notes.notna()
        old = frame.loc[has, "message"].fillna("")
        frame.loc[has, "message"] = [
            f"{m}; {n}" if m else n for m, n in zip(old, notes[has], strict=True)
        ]
        return PredictionsTable(frame, table.run)

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
