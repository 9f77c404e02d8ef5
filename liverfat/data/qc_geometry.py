"""Scan QC checks of implants and geometry: metal artefacts, station seams, positioning.

Each gives a :class:`~liverfat.data.qc.QcCheck` from (z, y, x) water and fat arrays on LPS axes
and the body mask (:func:`liverfat.data.dixon.body_mask`):

* ``metal`` (:func:`metal_check`): a void inside the body outline (``W + F`` below
  :data:`METAL_VOID_FRACTION` of the body's median) of at least :data:`METAL_MIN_VOID_ML`, with
  the susceptibility signature: a pile-up rim. The value is, for the most rimmed void, the share
  (%) of its in-plane border ring brighter than :data:`METAL_RIM_RATIO` times the brighter tissue
  just beyond the ring; flagged above :data:`METAL_RIM_PCT`. Gas and lungs have voids without a rim.
* ``seam`` (:func:`seam_check`): the largest in-plane misalignment (mm) between adjacent slices
  beyond the local trend: the integer shift that best aligns their body outlines' left-right and
  anterior-posterior profiles, minus the median shift of the neighbouring slice pairs; flagged
  above :data:`SEAM_THRESHOLD_MM`.
* ``position`` (:func:`position_check`): the trunk (each slice's largest outline component, on
  the slices where it is at least :data:`TRUNK_AREA_FRACTION` of the largest) off the field of
  view's centre left-right or anterior-posterior (mm), or rolled about the head-feet axis
  (degrees). The value is the largest of the three relative to its limit
  (:data:`POSITION_LATERAL_MM`, :data:`POSITION_AP_MM`, :data:`POSITION_ROLL_DEG`), flagged above
  1. Arms at the lateral edges are separate components and left out; a symmetric pair would not
  move the trunk's centre or roll anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from liverfat.data.qc import QcCheck, fill_holes_in_plane

#: ``W + F`` below this fraction of the body's median counts as a metal void (Rician noise only:
#: about 2.5 noise SDs, under 10 % of tissue signal even at twice the phantom's default noise).
METAL_VOID_FRACTION = 0.10
#: Voids smaller than this (mL) are not considered: a hip, knee or spinal implant leaves tens to
#: hundreds of mL; partial-volume specks at the outline are a few voxels.
METAL_MIN_VOID_ML = 10.0
#: Voids larger than this (mL) are the lungs.
METAL_MAX_VOID_ML = 1000.0
#: A ring voxel is pile-up when its ``W + F`` is above this times the tissue beyond the ring: the
#: weakest pile-up (1.5 x tissue) seen against a halo up to 12 % brighter is still 1.34; a gas
#: pocket's ring is ordinary tissue, at most the fat-to-muscle contrast (95 / 70) on the part
#: of its border that is fat.
METAL_RIM_RATIO = 1.3
#: Tissue beyond the ring, the rim's reference, has ``W + F`` above this fraction of the body's
#: median (lungs and voids left out).
METAL_TISSUE_FRACTION = 0.4
#: The tissue reference is this percentile of the tissue beyond the ring: its brighter tissue, so
#: that fat next to a gas pocket (95 against bowel's or muscle's 70-75) is not pile-up.
METAL_TISSUE_PERCENTILE = 75.0
#: Share (%) of a void's border ring that must be pile-up: implants pile up over about half their
#: border, gas and lungs over a few percent at most.
METAL_RIM_PCT = 15.0
#: Shift searched between adjacent slices (mm).
SEAM_SEARCH_MM = 60.0
#: Slice pairs on each side whose median shift is the local trend.
SEAM_TREND_PAIRS = 4
#: A jump above this (mm) is a seam misalignment. Stations move about 2 mm (SD) each in the
#: phantom (and a few mm in UK Biobank), so adjacent stations differ by about 2.8 mm (SD) per
#: axis; 12 mm is over 4 SD (about 1e-4 of seams), and still below the 2 voxels a quarter-scale
#: grid (8.9 mm pixels) needs to show any shift.
SEAM_THRESHOLD_MM = 12.0
#: Trunk slices: the largest outline component is at least this fraction of its largest area
#: (a thigh is about 40 % of the hips).
TRUNK_AREA_FRACTION = 0.6
#: Trunk centre off the field of view's centre, left-right (mm): UK Biobank centres participants
#: on the table; 40 mm is a sixth of the 500 mm field of view.
POSITION_LATERAL_MM = 40.0
#: Trunk centre off the field of view's centre, anterior-posterior (mm).
POSITION_AP_MM = 40.0
#: Roll of the trunk outline's major axis about the head-feet axis (degrees).
POSITION_ROLL_DEG = 6.0


def _ring(component: np.ndarray, width: int) -> np.ndarray:
    """In-plane dilation of ``component`` (z, y, x) by ``width`` pixels, minus itself."""
    structure = np.zeros((1, 3, 3), bool)
    structure[0, 1, :] = structure[0, :, 1] = True
    return ndimage.binary_dilation(component, structure, iterations=width) & ~component


def metal_voids(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, *, spacing_mm: Sequence[float]
) -> list[tuple[float, float]]:
    """``(void_ml, rim_pct)`` of every void inside the body outline (largest rim share first).

    ``rim_pct`` is the share (%) of the void's one-pixel in-plane border ring (inside the outline)
    whose ``W + F`` exceeds :data:`METAL_RIM_RATIO` times the :data:`METAL_TISSUE_PERCENTILE` th
    percentile ``W + F`` of the tissue three to five pixels beyond the void (above
    :data:`METAL_TISSUE_FRACTION` of the body's median).
    ``spacing_mm`` is (x, y, z).
    """
    signal = np.asarray(water, np.float32) + np.asarray(fat, np.float32)
    inside = np.asarray(mask) > 0
    if not inside.any():
        return []
    outline = fill_holes_in_plane(inside)
    body = float(np.median(signal[inside]))
    low = outline & (signal < METAL_VOID_FRACTION * body)
    labels, n = ndimage.label(low)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        size_ml = float(np.count_nonzero(labels[box] == index)) * voxel_ml
        if not METAL_MIN_VOID_ML <= size_ml <= METAL_MAX_VOID_ML:
            continue
        pad = tuple(
            slice(max(s.start - p, 0), s.stop + p) for s, p in zip(box, (0, 6, 6), strict=True)
        )
        component = labels[pad] == index
        near = signal[pad]
        ring = _ring(component, 1) & outline[pad] & ~low[pad]
        beyond = _ring(component, 5) & ~_ring(component, 2) & outline[pad]
        beyond &= near > METAL_TISSUE_FRACTION * body  # tissue, not lung or noise
        if ring.sum() < 4:
            continue
        tissue = (
            float(np.percentile(near[beyond], METAL_TISSUE_PERCENTILE))
            if beyond.sum() >= 4
            else body
        )
        bright = np.count_nonzero(near[ring] > METAL_RIM_RATIO * tissue)
        found.append((size_ml, 100.0 * bright / int(ring.sum())))
    return sorted(found, key=lambda v: v[1], reverse=True)


def metal_check(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, *, spacing_mm: Sequence[float]
) -> QcCheck:
    """The ``metal`` check: the largest rim share (%) of a void against :data:`METAL_RIM_PCT`."""
    voids = metal_voids(water, fat, mask, spacing_mm=spacing_mm)
    if not voids:
        return QcCheck("metal", 0.0, METAL_RIM_PCT, False, "no metal: no void inside the body")
    size_ml, rim = voids[0]
    flag = bool(rim > METAL_RIM_PCT)
    if flag:
        message = f"metal artefact: void of {size_ml:.0f} mL with a bright rim on {rim:.0f} %"
    else:
        message = f"no metal: {len(voids)} void(s), bright rim on {rim:.0f} % at most"
    return QcCheck("metal", float(rim), METAL_RIM_PCT, flag, message)


def _best_shift(a: np.ndarray, b: np.ndarray, max_shift: int) -> int:
    """The integer shift ``d`` maximising ``sum(a[i] * b[i + d])`` for 1-D profiles."""
    n = a.size
    full = np.correlate(np.pad(b, max_shift), a, mode="valid")  # d = -max_shift .. max_shift
    return int(np.argmax(full)) - max_shift if n else 0


def seam_jumps(mask: np.ndarray, *, spacing_mm: Sequence[float]) -> np.ndarray:
    """Per adjacent slice pair (k, k+1): the in-plane misalignment beyond the local trend (mm).

    The best integer shift aligning the two slices' outline profiles (column and row sums of the
    hole-filled mask) along x and y, minus the median of the :data:`SEAM_TREND_PAIRS` pairs on
    each side; NaN where either slice is empty. ``spacing_mm`` is (x, y, z).
    """
    outline = fill_holes_in_plane(mask).astype(np.float32)
    n_z = outline.shape[0]
    if n_z < 2:
        return np.zeros(0)
    cols = outline.sum(axis=1)  # (z, x)
    rows = outline.sum(axis=2)  # (z, y)
    shifts = np.full((n_z - 1, 2), np.nan)
    for k in range(n_z - 1):
        if cols[k].sum() == 0 or cols[k + 1].sum() == 0:
            continue
        for axis, profile, step in ((0, cols, spacing_mm[0]), (1, rows, spacing_mm[1])):
            reach = max(1, int(round(SEAM_SEARCH_MM / float(step))))
            shifts[k, axis] = _best_shift(profile[k], profile[k + 1], reach) * float(step)
    jumps = np.full(n_z - 1, np.nan)
    for k in range(n_z - 1):
        if np.isnan(shifts[k, 0]):
            continue
        near = np.r_[
            max(k - SEAM_TREND_PAIRS, 0) : k, k + 1 : min(k + 1 + SEAM_TREND_PAIRS, n_z - 1)
        ]
        trend = np.nanmedian(shifts[near], axis=0) if near.size else np.zeros(2)
        trend = np.nan_to_num(trend)
        jumps[k] = float(np.hypot(*(shifts[k] - trend)))
    return jumps


def seam_check(mask: np.ndarray, *, spacing_mm: Sequence[float]) -> QcCheck:
    """The ``seam`` check: the largest :func:`seam_jumps` value (mm) against
    :data:`SEAM_THRESHOLD_MM`."""
    jumps = seam_jumps(mask, spacing_mm=spacing_mm)
    if not np.isfinite(jumps).any():
        return QcCheck("seam", float("nan"), SEAM_THRESHOLD_MM, False, "no slice pair to align")
    k = int(np.nanargmax(jumps))
    value = float(jumps[k])
    flag = bool(value > SEAM_THRESHOLD_MM)
    where = f"between slices {k} and {k + 1} ({(k + 1) * float(spacing_mm[2]):.0f} mm)"
    state = "station misaligned" if flag else "seams aligned"
    return QcCheck(
        "seam", value, SEAM_THRESHOLD_MM, flag, f"{state}: largest jump {value:.1f} mm {where}"
    )


def trunk_pose(mask: np.ndarray, *, spacing_mm: Sequence[float]) -> dict[str, float]:
    """The trunk's centre off the field-of-view centre (mm) and roll (degrees), medians over
    the trunk slices (module docstring); also the share (%) of them touching the lateral edges.

    Roll is the angle of the outline's major axis from left-right, positive when the patient's
    left turns posterior. NaNs without trunk slices. ``spacing_mm`` is (x, y, z).
    """
    outline = fill_holes_in_plane(mask)
    n_z, n_y, n_x = outline.shape
    sx, sy = float(spacing_mm[0]), float(spacing_mm[1])
    largest = []
    for plane in outline:
        labels, n = ndimage.label(plane)
        if n == 0:
            largest.append(None)
            continue
        sizes = np.bincount(labels.ravel())[1:]
        largest.append(labels == int(np.argmax(sizes)) + 1)
    areas = np.array([0 if p is None else int(p.sum()) for p in largest])
    nan = {"lateral_mm": np.nan, "ap_mm": np.nan, "roll_deg": np.nan, "edge_pct": np.nan}
    if areas.max(initial=0) == 0:
        return nan
    trunk = np.flatnonzero(areas >= TRUNK_AREA_FRACTION * areas.max())
    xs, ys, rolls, edge = [], [], [], 0
    x_mm = (np.arange(n_x) - (n_x - 1) / 2) * sx
    y_mm = (np.arange(n_y) - (n_y - 1) / 2) * sy
    for k in trunk:
        yy, xx = np.nonzero(largest[k])
        px, py = x_mm[xx], y_mm[yy]
        cx, cy = px.mean(), py.mean()
        dx, dy = px - cx, py - cy
        angle = 0.5 * np.degrees(np.arctan2(2 * np.mean(dx * dy), np.mean(dx**2) - np.mean(dy**2)))
        xs.append(cx)
        ys.append(cy)
        rolls.append(angle)
        edge += bool(xx.min() == 0 or xx.max() == n_x - 1)
    return {
        "lateral_mm": float(np.median(xs)),
        "ap_mm": float(np.median(ys)),
        "roll_deg": float(np.median(rolls)),
        "edge_pct": 100.0 * edge / trunk.size,
    }


def position_check(mask: np.ndarray, *, spacing_mm: Sequence[float]) -> QcCheck:
    """The ``position`` check: the largest of |lateral| / :data:`POSITION_LATERAL_MM`,
    |AP| / :data:`POSITION_AP_MM` and |roll| / :data:`POSITION_ROLL_DEG` (:func:`trunk_pose`)
    against 1."""
    pose = trunk_pose(mask, spacing_mm=spacing_mm)
    if not np.isfinite(pose["lateral_mm"]):
        return QcCheck("position", float("nan"), 1.0, False, "no trunk found")
    parts = {
        "left-right": abs(pose["lateral_mm"]) / POSITION_LATERAL_MM,
        "anterior-posterior": abs(pose["ap_mm"]) / POSITION_AP_MM,
        "roll": abs(pose["roll_deg"]) / POSITION_ROLL_DEG,
    }
    worst = max(parts, key=parts.get)
    value = float(parts[worst])
    flag = bool(value > 1.0)
    detail = (
        f"trunk {pose['lateral_mm']:+.0f} mm left-right, {pose['ap_mm']:+.0f} mm anterior-"
        f"posterior, roll {pose['roll_deg']:+.1f} deg, {pose['edge_pct']:.0f} % of trunk slices "
        "at a lateral edge"
    )
    state = f"unusual positioning ({worst})" if flag else "positioning ok"
    return QcCheck("position", value, 1.0, flag, f"{state}: {detail}")
