"""The report section of a segmentation method: mask metrics over subjects and overlay figures.

A segmentation engine's predictions table carries, in its run information, ``segmentation``
(a list of per-subject records: ``subject_id`` plus the dict of
:func:`~liverfat.evaluation.segmentation.segmentation_metrics`) and ``masks`` (subject id ->
absolute path of the predicted mask). :func:`segmentation_run` collects them from a run (or the
``parts`` of a stacked one); :func:`segmentation_section` turns them into a report section.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from liverfat.data.manifest import Manifest
from liverfat.data.preview import mask_overlay_volumes
from liverfat.errors import LiverfatError, one_line
from liverfat.evaluation.overlays import mask_overlay_figure
from liverfat.evaluation.report import ExtraSection, FigureItem
from liverfat.evaluation.segmentation import metrics_table, summarise_metrics

#: The metrics of the section's summary table.
SUMMARY_METRICS = ("dice", "jaccard", "hd95_mm", "assd_mm", "ravd_pct")
_LISTED = 10  # subject ids named in a note before "and N more"


def _runs(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A run and, depth first in order, the runs of its ``parts`` (stacked tables nest)."""
    found = [run]
    for part in run.get("parts") or []:
        if isinstance(part, Mapping):
            found += _runs(part)
    return found


def segmentation_run(run: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The per-subject mask records and predicted mask paths in a predictions table's run.

    Parameters
    ----------
    run:
        A table's run information. Its own ``segmentation`` and ``masks`` come first, then
        those of its ``parts`` (depth first, in order: a study's out-of-fold stage before its
        fitted one, as the study's table keeps the out-of-fold value); a subject already found
        keeps its first record and that record's mask.

    Returns
    -------
    tuple
        The records (a list of dicts) and subject id -> mask path; both empty when the run
        holds no segmentation.
    """
    records: list[dict[str, Any]] = []
    masks: dict[str, str] = {}
    seen: set[str] = set()
    for part in _runs(run):
        part_masks = part.get("masks") or {}
        for record in part.get("segmentation") or []:
            sid = str(record.get("subject_id", ""))
            if sid in seen:
                continue
            seen.add(sid)
            records.append(dict(record))
            if sid in part_masks:
                masks[sid] = str(part_masks[sid])
    return records, masks


def has_segmentation(run: Mapping[str, Any]) -> bool:
    """Whether a run (or a run among its nested ``parts``) carries a ``segmentation`` key."""
    return any("segmentation" in part for part in _runs(run))


def _listed(ids: list[str]) -> str:
    more = f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else ""
    return ", ".join(ids[:_LISTED]) + more


def _with_reference(
    records: list[Mapping[str, Any]], manifest: Manifest
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The records of subjects with a reference mask in the manifest, and the other ids."""
    known = set(manifest.subject_ids)
    kept, left_out = [], []
    for record in records:
        sid = str(record.get("subject_id", ""))
        if sid in known and manifest.has(sid, "liver_mask"):
            kept.append(record)
        else:
            left_out.append(sid)
    return kept, left_out


def shown_subjects(table: pd.DataFrame) -> list[tuple[str, str]]:
    """``(label, subject_id)`` of the worst and the median subject by Dice.

    ``table`` is a :func:`~liverfat.evaluation.segmentation.metrics_table` (Dice ascending,
    subjects without a Dice last). The median subject is the ``(n - 1) // 2``-th of the ``n``
    with a Dice (the lower of the middle two for even ``n``); one subject is shown once.
    """
    ids = table.loc[table["dice"].notna(), "subject_id"].tolist()
    if not ids:
        return []
    shown = [("worst", ids[0])]
    median = ids[(len(ids) - 1) // 2]
    if median != ids[0]:
        shown.append(("median", median))
    return shown


def _number(value: float) -> str:
    """One decimal, or ``n/a`` (e.g. the surface distances of an empty predicted mask)."""
    return f"{value:.1f}" if math.isfinite(value) else "n/a"


def _figure(
    row: pd.Series,
    label: str,
    manifest: Manifest,
    mask: str | os.PathLike[str],
    method: str,
    column: str | None,
) -> FigureItem:
    sid = str(row["subject_id"])
    volumes = mask_overlay_volumes(manifest, sid, mask, column=column)
    figure = mask_overlay_figure(
        volumes.image,
        volumes.reference,
        volumes.predicted,
        spacing_mm=volumes.spacing_mm,
        title=f"{method}, {label} subject {sid}",
    )
    caption = (
        f"{method}: {label} subject by Dice, {sid} (Dice {row['dice']:.3f}, HD95 "
        f"{_number(row['hd95_mm'])} mm, RAVD {_number(row['ravd_pct'])} %), on its "
        f"{volumes.column} image; reference solid cyan, predicted dashed orange"
    )
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{method}_{label}_{sid}")
    return FigureItem(f"segmentation_{slug}", caption, figure)


def segmentation_section(
    records: Iterable[Mapping[str, Any]],
    manifest: Manifest,
    *,
    method: str,
    masks: Mapping[str, str | os.PathLike[str]] | None = None,
    image_column: str | None = None,
) -> ExtraSection:
    """A report section on a method's liver masks against the manifest's reference masks.

    Parameters
    ----------
    records:
        Per-subject records: ``subject_id`` and the keys of
        :func:`~liverfat.evaluation.segmentation.segmentation_metrics`. Subjects the manifest
        lacks or has no ``liver_mask`` for are left out, and the text names them.
    manifest:
        Gives each subject's reference mask and the image the figures are drawn on.
    method:
        The method's name, in the title and captions.
    masks:
        Subject id -> path of the predicted mask (a run's ``masks``); without it, or without a
        subject's path, that subject gets no figure (the text says so).
    image_column:
        The image the masks are drawn on; default the manifest's ``water``, else ``image``.

    Returns
    -------
    ExtraSection
        Summary table (median, mean, SD, min, max of Dice, Jaccard, HD95 and ASSD in mm, RAVD
        in %), the per-subject table worst Dice first, and overlay figures of the worst and the
        median subject by Dice.
    """
    kept, left_out = _with_reference(list(records), manifest)
    notes = []
    if left_out:
        notes.append(
            f"{len(left_out)} subject(s) without a reference liver mask in the manifest are "
            f"left out: {_listed(left_out)}."
        )
    title = f"Segmentation: {method}"
    if not kept:
        return ExtraSection(title, " ".join(["No subject with a reference liver mask.", *notes]))
    table = metrics_table(kept)
    summary = summarise_metrics(table, SUMMARY_METRICS)
    figures = []
    for label, sid in shown_subjects(table):
        path = (masks or {}).get(sid)
        if path is None:
            notes.append(f"No predicted mask path for {sid}, so no figure.")
            continue
        row = table.loc[table["subject_id"] == sid].iloc[0]
        try:
            figures.append(_figure(row, label, manifest, path, method, image_column))
        except LiverfatError as exc:
            notes.append(f"No figure for {sid}: {one_line(exc)}.")
    text = (
        f"Liver masks of {method} against the manifest's reference masks on {len(table)} "
        "subject(s). Dice and Jaccard are overlaps (1 is perfect); HD95 (larger of the two "
        "directed 95th percentiles), ASSD (average symmetric) and MSSD (maximum) surface "
        "distances in mm; RAVD, the relative absolute volume difference, in %. Each summary "
        "counts the subjects with a finite value (n)."
    )
    return ExtraSection(
        title,
        " ".join([text, *notes]),
        summary,
        figures,
        tables=[("Per subject, worst Dice first", table)],
    )


def segmentation_sections(
    runs: Mapping[str, Mapping[str, Any]], manifest: Manifest, *, image_column: str | None = None
) -> list[ExtraSection]:
    """A :func:`segmentation_section` for each method whose run carries ``segmentation``.

    Parameters
    ----------
    runs:
        Method name -> its predictions table's run information (e.g. every engine of a study);
        methods without mask metrics are passed over.
    manifest:
        Gives the reference masks and images.
    image_column:
        The image the masks are drawn on (default ``water``, else ``image``).
    """
    sections = []
    for method, run in runs.items():
        if has_segmentation(run):
            records, masks = segmentation_run(run)
            sections.append(
                segmentation_section(
                    records, manifest, method=method, masks=masks, image_column=image_column
                )
            )
    return sections
