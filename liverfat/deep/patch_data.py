"""The patch grader's inputs: each subject's ROI windows, normalised, read in parallel and cached.

A subject's ROIs come from the manifest's ``rois`` column
(:func:`liverfat.data.rois.subject_rois_from_manifest`); each window is the ROI square plus a
margin of context on every side (:func:`liverfat.data.rois.roi_windows`), so a shifted crop stays
on image pixels. Intensities are put on one scale across subjects: the fat fraction (%) is
divided by 100 (0-1), water and fat by the subject's median of water + fat over its ROI squares
(so a window's water + fat is about 1 whatever the scanner's gain).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverfat.data.atomic import atomic_path
from liverfat.data.fingerprint import fingerprint, subject_files
from liverfat.data.manifest import Manifest
from liverfat.data.rois import roi_windows, subject_rois_from_manifest
from liverfat.errors import ImageError, subject_message
from liverfat.parallel import map_subjects

#: Channels the grader may read: fat fraction (%), water and fat (a.u.).
PATCH_CHANNELS = ("fat_fraction", "water", "fat")
#: Bump when what :func:`subject_windows` returns changes, so cached windows are recomputed.
WINDOWS_VERSION = 1


@dataclass(frozen=True)
class WindowJob:
    """What one worker needs to cut out one subject's normalised ROI windows (picklable)."""

    subject: Manifest
    channels: tuple[str, ...]
    margin_px: int
    cache_dir: str | None = None

    @property
    def subject_id(self) -> str:
        return self.subject.subject_ids[0]

    def cache_path(self) -> Path | None:
        """Where the windows are cached (keyed by the files and settings), or None."""
        if self.cache_dir is None:
            return None
        key = fingerprint(
            {
                "files": subject_files(self.subject, self.subject_id),
                "channels": list(self.channels),
                "margin_px": self.margin_px,
                "version": WINDOWS_VERSION,
            }
        )
        return Path(self.cache_dir) / f"{self.subject_id}_{key}.npy"


def normalise_windows(
    raw: np.ndarray, read: Sequence[str], channels: Sequence[str], margin_px: int
) -> np.ndarray:
    """The ``channels`` of raw windows (n_rois, len(read), side, side), normalised.

    ``fat_fraction`` (%) / 100; ``water`` and ``fat`` / the median of water + fat over the ROI
    squares (the windows without their margins), which must be positive.
    """
    read = list(read)
    inner = slice(margin_px, raw.shape[-1] - margin_px)
    scale = 1.0
    if any(c != "fat_fraction" for c in channels):
        signal = raw[:, read.index("water")] + raw[:, read.index("fat")]
        scale = float(np.median(signal[:, inner, inner]))
        if not np.isfinite(scale) or scale <= 0:
            raise ImageError(f"the median of water + fat over the ROIs is {scale:g}, not positive")
    out = np.empty((raw.shape[0], len(channels), *raw.shape[2:]), np.float32)
    for j, channel in enumerate(channels):
        divisor = 100.0 if channel == "fat_fraction" else scale
        out[:, j] = raw[:, read.index(channel)] / divisor
    if not np.isfinite(out).all():
        raise ImageError("an ROI window holds a non-finite value")
    return out


def subject_windows(job: WindowJob) -> np.ndarray:
    """One subject's normalised windows, float32 (n_rois, n_channels, size + 2 m, size + 2 m).

    Errors name the subject; results are cached in ``job.cache_dir`` (written atomically).
    """
    cache = job.cache_path()
    if cache is not None and cache.is_file():
        return np.load(cache, allow_pickle=False)
    sid = job.subject_id
    read = job.channels
    if any(c != "fat_fraction" for c in job.channels):
        read = tuple(dict.fromkeys((*job.channels, "water", "fat")))
    try:
        rois = subject_rois_from_manifest(job.subject, sid)
        raw = roi_windows(job.subject, sid, rois, read, job.margin_px)
        windows = normalise_windows(raw, read, job.channels, job.margin_px)
    except ImageError as exc:
        raise ImageError(subject_message(sid, exc)) from exc
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
            np.save(handle, windows, allow_pickle=False)
    return windows


def read_windows(
    manifest: Manifest,
    subject_ids: Sequence[str],
    channels: Sequence[str],
    margin_px: int,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    executor: str = "serial",
    n_workers: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Normalised windows of each subject (:func:`subject_windows`), and a one-line message per
    subject that failed (the others go on)."""
    jobs = [
        WindowJob(
            manifest.select(subject_ids=[sid]),
            tuple(channels),
            int(margin_px),
            None if cache_dir is None else str(cache_dir),
        )
        for sid in subject_ids
    ]
    windows, failures = {}, {}
    label = "patch grader: ROI windows" if len(jobs) > 4 else None
    for outcome in map_subjects(
        subject_windows, jobs, executor=executor, n_workers=n_workers, progress=label
    ):
        sid = outcome.item.subject_id
        if outcome.ok:
            windows[sid] = outcome.value
        else:
            failures[sid] = subject_message(sid, outcome.error)
    return windows, failures
