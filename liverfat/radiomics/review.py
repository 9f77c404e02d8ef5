"""ROIs of every subject of a manifest, written for review: ``<subject>_rois.json`` and an overlay
``<subject>_rois.png`` per subject (``liverfat radiomics rois``).

Dixon subjects get their ROIs placed on the fat fraction (%) and water images, as the engine does;
a non-Dixon scan (a single ``image`` column, e.g. CHAOS T2-SPIR) on the image's own intensity.
Manual ROIs from the manifest's ``rois`` column are checked and written as they are. Resumable:
subjects whose JSON exists are skipped; a subject that fails costs only itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from liverfat.data.manifest import Manifest
from liverfat.errors import ImageError, subject_message
from liverfat.parallel import map_subjects
from liverfat.radiomics.features import liver_array, subject_rois
from liverfat.radiomics.rois import RoiSettings, save_rois


@dataclass(frozen=True)
class RoiReview:
    """What :func:`write_subject_rois` did: subject ids placed now, already there, and failed
    (subject id -> one-line error)."""

    folder: Path
    placed: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _subject_rois(job: tuple[Manifest, RoiSettings, str]) -> str:
    subject, settings, out = job
    sid = subject.subject_ids[0]
    try:
        liver = liver_array(subject, sid)
        if subject.has(sid, "water") or subject.has(sid, "in_phase"):
            dixon = subject.dixon(sid)
            reference = dixon.fat_fraction
            shown = sitk.GetArrayFromImage(dixon.fat_fraction).astype(float)
            intensities = [shown, sitk.GetArrayFromImage(dixon.water).astype(float)]
            channel = "fat_fraction (%) and water"
        else:  # a non-Dixon scan (e.g. CHAOS T2-SPIR): place on the image's own intensity
            reference = subject.read_image(sid, "image")
            shown = sitk.GetArrayFromImage(reference).astype(float)
            intensities = [shown]
            channel = "image"
        if shown.shape != liver.shape:
            raise ImageError(
                f"liver mask grid {liver.shape} differs from the image's {shown.shape}"
            )
        rois = subject_rois(subject, sid, intensities, liver, reference, settings)
    except ImageError as exc:
        raise ImageError(subject_message(sid, exc)) from exc
    save_rois(rois, out, sid, image=shown, liver=liver, extra={"placement_channels": channel})
    return sid


def write_subject_rois(
    manifest: Manifest,
    folder: str | os.PathLike[str],
    settings: RoiSettings | None = None,
    *,
    executor: str = "processes",
    n_workers: int | None = 2,
    progress: str | None = "radiomics rois",
) -> RoiReview:
    """Place (or read) each subject's ROIs and write them with an overlay PNG into ``folder``.

    Parameters
    ----------
    manifest:
        The subjects; each needs a liver mask and a Dixon series or an ``image``.
    folder:
        Where ``<subject>_rois.json`` / ``.png`` go; subjects whose JSON is there are skipped.
    settings:
        ROI count, size (pixels), border margin (mm) and outlier rule; default :class:`RoiSettings`.
    executor, n_workers, progress:
        How subjects are mapped (:func:`liverfat.parallel.map_subjects`) and the progress label.
    """
    settings = settings or RoiSettings()
    out = Path(folder)
    done = {sid for sid in manifest.subject_ids if (out / f"{sid}_rois.json").is_file()}
    existing = [sid for sid in manifest.subject_ids if sid in done]
    todo = [sid for sid in manifest.subject_ids if sid not in done]
    jobs = [(manifest.select(subject_ids=[sid]), settings, str(out)) for sid in todo]
    review = RoiReview(out, existing=existing)
    for outcome in map_subjects(
        _subject_rois, jobs, executor=executor, n_workers=n_workers, progress=progress
    ):
        if outcome.ok:
            review.placed.append(todo[outcome.index])
        else:
            review.failures[todo[outcome.index]] = str(outcome.error)
    return review
