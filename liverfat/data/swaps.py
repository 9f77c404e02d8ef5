"""Water-fat swaps: telling from the images alone that a Dixon station's water and fat changed
places.

A phase-sensitive Dixon reconstruction can converge on the wrong solution for a whole station, so
the station's "water" image holds fat and its "fat" image water (UK Biobank: at least one swapped
station in about 1.8 % of participants). The body's outer shell is mostly subcutaneous fat and its
core mostly muscle and organs, so in a normal station the shell has the higher fat fraction. The
score is the median fat fraction of the core minus that of the shell (percentage points):

* normal station: about -50 to -90 pp (fatty shell, lean core);
* swapped station: the same magnitude, positive; exchanging water and fat negates the score
  exactly (the body mask depends on ``W + F`` only, and every fraction ``f`` becomes ``100 - f``).

:func:`swap_decision` reads a score with :data:`SWAP_SCORE_THRESHOLD` (0 pp) and a margin of
:data:`SWAP_SCORE_MARGIN` on either side, inside which (or when the score is undefined) the answer
is ``unsure``. The functions work on any (z, y, x) station or volume and are shared by ingestion
(:mod:`liverfat.data.ukbiobank`) and quality control.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from liverfat.data.dixon import fat_fraction

#: The shell: body voxels at most this far (mm, in-plane) from the body's edge.
SHELL_MM = 10.0
#: The core: body voxels more than this far (mm, in-plane) from the body's edge.
CORE_MM = 20.0
#: A score above this (percentage points) means the core is fattier than the shell: swapped.
SWAP_SCORE_THRESHOLD = 0.0
#: Scores within this distance of the threshold (pp) are ``unsure`` (no correction, a flag).
SWAP_SCORE_MARGIN = 10.0
#: Fewer shell or core voxels than this and the score is undefined (NaN).
MIN_REGION_VOXELS = 20
#: The in-plane pixel spacing assumed when none is given (mm): UK Biobank's 500 mm / 224.
DEFAULT_PIXEL_MM = (500 / 224, 500 / 224)


def edge_depth_mm(
    body_mask: np.ndarray, spacing_mm: Sequence[float] = DEFAULT_PIXEL_MM
) -> np.ndarray:
    """In-plane distance (mm) of every body voxel to the nearest voxel outside the body.

    ``body_mask`` is (z, y, x); ``spacing_mm`` is (x, y) in mm. Each axial slice is measured on
    its own; outside the body the depth is 0, and a slice without background is all ``inf``.
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(body_mask) > 0
    depth = np.zeros(mask.shape, np.float32)
    sampling = (float(spacing_mm[1]), float(spacing_mm[0]))  # rows (y), columns (x)
    for k, plane in enumerate(mask):
        if not plane.any():
            continue
        if plane.all():
            depth[k] = np.inf
            continue
        depth[k] = distance_transform_edt(plane, sampling=sampling)
    return depth


def shell_and_core(
    body_mask: np.ndarray,
    spacing_mm: Sequence[float] = DEFAULT_PIXEL_MM,
    *,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The body's shell (the outer :data:`SHELL_MM`, at least one pixel) and core (deeper than
    :data:`CORE_MM`, at least two pixels) by in-plane depth in ``body_mask``, (z, y, x) bool;
    ``keep`` (same shape) limits both to part of the body. ``spacing_mm`` is (x, y) in mm."""
    inside = np.asarray(body_mask) > 0
    depth = edge_depth_mm(inside, spacing_mm[:2])
    pixel = max(float(spacing_mm[0]), float(spacing_mm[1]))
    region = inside if keep is None else inside & keep
    shell = region & (depth <= max(SHELL_MM, pixel * 1.001))
    core = region & (depth > max(CORE_MM, 2.001 * pixel))
    return shell, core


def station_swap_score(
    water: np.ndarray,
    fat: np.ndarray,
    body_mask: np.ndarray,
    *,
    spacing_mm: Sequence[float] = DEFAULT_PIXEL_MM,
) -> float:
    """Median fat fraction of the body's core minus that of its shell (percentage points).

    Parameters
    ----------
    water, fat:
        One station's (or volume's) water and fat signal, (z, y, x), any signal unit.
    body_mask:
        1 inside the body, same shape (e.g. :func:`liverfat.data.dixon.body_mask`).
    spacing_mm:
        In-plane pixel spacing (x, y; mm): the shell is the outer :data:`SHELL_MM` of the body
        (at least one pixel), the core lies deeper than :data:`CORE_MM`.

    Returns
    -------
    float
        Negative for a normal station, positive for a swapped one (see :func:`swap_decision`);
        NaN when shell or core holds fewer than :data:`MIN_REGION_VOXELS` voxels.
    """
    water = np.asarray(water, np.float32)
    fat = np.asarray(fat, np.float32)
    if water.shape != fat.shape or water.shape != np.shape(body_mask):
        raise ValueError(
            f"water {water.shape}, fat {fat.shape} and body mask {np.shape(body_mask)} differ"
        )
    shell, core = shell_and_core(body_mask, spacing_mm)
    if shell.sum() < MIN_REGION_VOXELS or core.sum() < MIN_REGION_VOXELS:
        return float("nan")
    ff = fat_fraction(water, fat)
    return float(np.median(ff[core]) - np.median(ff[shell]))


def swap_decision(score: float) -> str:
    """``normal``, ``swapped`` or ``unsure`` for a :func:`station_swap_score` (pp).

    ``swapped`` above :data:`SWAP_SCORE_THRESHOLD` + :data:`SWAP_SCORE_MARGIN`, ``normal`` below
    the threshold minus the margin, ``unsure`` in between or when the score is NaN.
    """
    if not np.isfinite(score):
        return "unsure"
    if score > SWAP_SCORE_THRESHOLD + SWAP_SCORE_MARGIN:
        return "swapped"
    if score < SWAP_SCORE_THRESHOLD - SWAP_SCORE_MARGIN:
        return "normal"
    return "unsure"
