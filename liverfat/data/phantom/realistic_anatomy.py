"""Anatomy painted only with realism (:mod:`~liverfat.data.phantom.realism`): arms at the field
of view's lateral edges, the gallbladder in its fossa under the liver, and a stomach under the
left lobe with gas at its top. Each paints only into the labels it may replace, so the trunk's
organs keep their shapes; the gallbladder takes its place out of the liver, as real masks leave
it out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from liverfat.data.phantom.anatomy import (
    LABELS,
    Landmarks,
    LiverShape,
    _girth,
    _paint_ellipsoid,
    _trunk_profile,
)
from liverfat.data.phantom.grid import Grid

if TYPE_CHECKING:
    from liverfat.data.phantom.cohort import Subject

#: Gap (mm) between the trunk's outline and each arm.
ARM_GAP_MM = 8.0


def paint_arms(grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray) -> None:
    """Two arms beside the trunk, shoulder to hip: circles of fat around muscle, radius 45 mm
    (upper arm) narrowing to 30 mm (wrist) times ``sqrt(girth)``, placed ``ARM_GAP_MM`` outside
    the trunk's outline, so broad subjects' arms run past the field of view's edge."""
    zz, a_z, _ = _trunk_profile(subject, marks)
    rows = grid.index_range("z", marks.crotch + 30.0, marks.shoulder - 10.0)
    if rows.stop <= rows.start:
        return
    z = grid.z[rows]
    s = math.sqrt(_girth(subject))
    radius = np.interp(z, [marks.crotch, marks.liver_bottom, marks.shoulder], [30, 38, 45]) * s
    centre = np.interp(z, zz, a_z) + ARM_GAP_MM + radius
    fat_mm = 0.5 * subject.sat_thickness_mm
    x = grid.x[None, None, :]
    y = grid.y[None, :, None]
    r = radius.astype(np.float32)[:, None, None]
    view = labels[rows]
    free = view == 0
    for side in (-1, 1):
        cx = (side * centre).astype(np.float32)[:, None, None]
        d2 = (x - cx) ** 2 + (y - 10.0) ** 2
        view[free & (d2 <= r**2)] = LABELS["arm_fat"]
        view[free & (d2 <= np.maximum(r - fat_mm, 5.0) ** 2)] = LABELS["arm_muscle"]


def paint_gallbladder(grid: Grid, labels: np.ndarray, liver: LiverShape, rng) -> float:
    """A gallbladder (bile) in the fossa on the liver's inferior surface, 20-80 mL; returns its
    intended volume (mL)."""
    volume_ml = float(rng.uniform(20.0, 80.0))
    scale = (volume_ml / 42.2) ** (1 / 3)  # 42.2 mL at radii 18 x 16 x 35 mm
    k = liver.k
    centre = liver.centre + np.array([35.0, -35.0, -50.0], np.float32) * k
    radii = np.array([18.0, 16.0, 35.0], np.float32) * scale
    soft = (LABELS["liver"], LABELS["bowel"], LABELS["vat"], LABELS["muscle"])
    _paint_ellipsoid(grid, labels, LABELS["gallbladder"], centre, radii, into=soft)
    return volume_ml


def paint_stomach(grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, rng) -> None:
    """A stomach under the left lobe and the diaphragm, the top 12-35 % of its height gas."""
    s = _girth(subject)
    centre = np.array([70.0 * s, -25.0, marks.diaphragm - 75.0], np.float32)
    radii = np.array([45.0, 36.0, 60.0], np.float32) * np.float32(rng.uniform(0.8, 1.15))
    soft = (LABELS["bowel"], LABELS["vat"], LABELS["muscle"])
    _paint_ellipsoid(grid, labels, LABELS["stomach"], centre, radii, into=soft)
    gas_from = centre[2] + radii[2] * np.float32(rng.uniform(0.3, 0.75))
    top = grid.index_range("z", float(gas_from), float(centre[2] + radii[2]))
    view = labels[top]
    view[view == LABELS["stomach"]] = LABELS["gas"]
