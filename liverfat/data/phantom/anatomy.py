"""The phantom's anatomy as a label map, defined continuously in millimetres.

Body contour, subcutaneous fat, muscle, abdominal cavity with visceral fat and bowel, spine,
lungs, heart, kidneys, spleen, and the liver with branching hepatic vessels are painted onto a
:class:`~liverfat.data.phantom.grid.Grid` at head-feet positions scaled to the subject's height,
so one seed gives the same body at every scale. :func:`measure_volumes` counts the truth volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from liverfat.data.phantom.grid import Grid, Waves

if TYPE_CHECKING:
    from liverfat.data.phantom.cohort import Subject

#: Label map values of the truth label image.
LABELS = {
    "background": 0,
    "sat": 1,
    "muscle": 2,
    "vat": 3,
    "liver": 4,
    "spleen": 5,
    "kidney": 6,
    "bone_marrow": 7,
    "lung": 8,
    "heart": 9,
    "hepatic_vessel": 10,
    "bowel": 11,
    # Painted only with realism (liverfat.data.phantom.realism).
    "gallbladder": 12,
    "stomach": 13,
    "gas": 14,
    "arm_fat": 15,
    "arm_muscle": 16,
}
LIVER_LABELS = (LABELS["liver"], LABELS["hepatic_vessel"])
#: Thickness of the muscle wall around the abdominal and thoracic cavities (mm).
_WALL_MM = 14.0


@dataclass
class Landmarks:
    """Head-feet positions (mm on the grid's z axis) scaled to the subject's height."""

    knee: float
    crotch: float
    pelvic_floor: float
    liver_bottom: float
    diaphragm: float
    lung_apex: float
    shoulder: float
    chin: float

    @classmethod
    def for_height(cls, height_cm: float, shift_mm: float) -> Landmarks:
        def at(fraction: float) -> float:
            return (fraction - 0.27) * height_cm * 10 + shift_mm

        return cls(
            knee=at(0.285),
            crotch=at(0.47),
            pelvic_floor=at(0.50),
            liver_bottom=at(0.615),
            diaphragm=at(0.705),
            lung_apex=at(0.815),
            shoulder=at(0.82),
            chin=at(0.87),
        )


def _girth(subject: Subject) -> float:
    """The subject's girth relative to a BMI-25 body: ``sqrt(BMI / 25)``."""
    return math.sqrt(subject.bmi / 25.0)


def _trunk_profile(subject: Subject, marks: Landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmark z (mm) and semi-axes a (left-right), b (anterior-posterior) of the outer contour."""
    s = _girth(subject)
    male = subject.sex == 1
    hips_a = (172 if male else 182) * s
    waist_a = (158 if male else 145) * s
    chest_a = (168 if male else 150) * s
    shoulder_a = (190 if male else 168) * math.sqrt(s)
    z = [
        marks.crotch,
        marks.pelvic_floor + 40,
        marks.liver_bottom,
        marks.diaphragm,
        marks.shoulder,
        marks.shoulder + 25,
        marks.chin,
    ]
    a = [hips_a * 0.95, hips_a, waist_a, chest_a, shoulder_a, 62 * math.sqrt(s), 58 * math.sqrt(s)]
    b = [
        110 * s,
        115 * s,
        (118 if male else 108) * s * s**0.5,
        112 * s,
        100 * s,
        60 * math.sqrt(s),
        58 * math.sqrt(s),
    ]
    return np.array(z), np.array(a), np.array(b)


def _ellipse_rho(x, y, a, b, y0=0.0):
    """Normalised elliptical radius (< 1 inside) for broadcast coordinates."""
    return (x / a) ** 2 + ((y - y0) / b) ** 2


def paint_body(grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, rng) -> dict:
    """Body contour, subcutaneous fat, muscle, abdominal cavity with visceral fat and bowel.

    Returns geometric quantities (cavity semi-axes per slice) that organ placement needs.
    """
    profile = _trunk_profile(subject, marks)
    _paint_trunk(grid, subject, marks, labels, profile)
    _paint_thighs(grid, subject, marks, labels)
    cavity = _paint_abdomen(grid, subject, marks, labels, profile, rng)
    thorax = _thorax(grid, subject, marks, profile)
    return {"cavity": cavity, "thorax": thorax, "sat_mm": subject.sat_thickness_mm}


def _paint_trunk(
    grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, profile: tuple
) -> None:
    """The trunk's outer contour as subcutaneous fat, and the muscle inside it."""
    zz, a_z, b_z = profile
    t = subject.sat_thickness_mm
    trunk = grid.index_range("z", marks.crotch, np.inf)
    z_trunk = grid.z[trunk]
    a = np.interp(z_trunk, zz, a_z).astype(np.float32)[:, None, None]
    b = np.interp(z_trunk, zz, b_z).astype(np.float32)[:, None, None]
    # SAT is thinner over the chest and neck than over the abdomen and hips.
    sat = (
        t
        * np.interp(
            z_trunk,
            [marks.crotch, marks.diaphragm, marks.shoulder, marks.chin],
            [1.0, 0.8, 0.35, 0.15],
        )
    ).astype(np.float32)[:, None, None]
    x = grid.x[None, None, :]
    y = grid.y[None, :, None]
    view = labels[trunk]
    view[_ellipse_rho(x, y, a, b) <= 1] = LABELS["sat"]
    view[_ellipse_rho(x, y, a - sat, b - sat) <= 1] = LABELS["muscle"]


def _paint_thighs(grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray) -> None:
    """Thighs: two circles that meet at the crotch, each with fat, muscle and a femur."""
    legs = grid.index_range("z", -np.inf, marks.crotch)
    if legs.stop <= legs.start:
        return
    x = grid.x[None, None, :]
    y = grid.y[None, :, None]
    s = _girth(subject)
    r_top = 92 * s * (1.0 if subject.sex else 1.08)
    r = np.interp(grid.z[legs], [marks.knee - 50, marks.crotch], [55 * s, r_top])
    r = r.astype(np.float32)[:, None, None]
    leg_sat = np.float32(0.55 * subject.sat_thickness_mm)
    cx = r
    view = labels[legs]
    ax = np.abs(x) - cx
    view[_ellipse_rho(ax, y, r, r) <= 1] = LABELS["sat"]
    view[_ellipse_rho(ax, y, r - leg_sat, r - leg_sat) <= 1] = LABELS["muscle"]
    view[_ellipse_rho(ax, y - 5, np.float32(14), np.float32(14)) <= 1] = LABELS["bone_marrow"]


def _paint_abdomen(
    grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, profile: tuple, rng
) -> tuple[slice, np.ndarray, np.ndarray]:
    """The abdominal cavity as bowel with visceral fat; returns its z range and semi-axes (mm).

    The cavity lies inside the muscle wall, pushed forward by the paraspinal muscles.
    """
    zz, a_z, b_z = profile
    t = subject.sat_thickness_mm
    x = grid.x[None, None, :]
    y = grid.y[None, :, None]
    cavity_z = grid.index_range("z", marks.pelvic_floor, marks.diaphragm + 10)
    z_c = grid.z[cavity_z]
    a_c = (
        np.interp(z_c, zz, a_z)
        - np.interp(z_c, [marks.crotch, marks.diaphragm], [t, 0.8 * t])
        - _WALL_MM
    )
    b_c = (
        np.interp(z_c, zz, b_z)
        - np.interp(z_c, [marks.crotch, marks.diaphragm], [t, 0.8 * t])
        - _WALL_MM
        - 22
    )
    a_c = np.maximum(a_c, 30).astype(np.float32)[:, None, None]
    b_c = np.maximum(b_c, 30).astype(np.float32)[:, None, None]
    inside = _ellipse_rho(x, y, a_c, b_c, y0=-18.0) <= 1
    # Visceral fat: the highest part of a smooth random field, filling vat_fraction of the cavity.
    field_ = Waves(rng, 6, (35.0, 90.0))(grid.z[cavity_z][:, None, None], y, x)
    field_ = np.broadcast_to(field_, inside.shape)
    threshold = np.quantile(field_[inside], 1 - subject.vat_fraction) if inside.any() else np.inf
    view = labels[cavity_z]
    view[inside] = LABELS["bowel"]
    view[inside & (field_ >= threshold)] = LABELS["vat"]
    return cavity_z, a_c, b_c


def _thorax(
    grid: Grid, subject: Subject, marks: Landmarks, profile: tuple
) -> tuple[slice, np.ndarray, np.ndarray]:
    """The thoracic cavity for lungs and heart: its z range and semi-axes per slice (mm)."""
    zz, a_z, b_z = profile
    t = subject.sat_thickness_mm
    thorax_z = grid.index_range("z", marks.diaphragm - 30, marks.lung_apex)
    z_t = grid.z[thorax_z]
    a_t = np.maximum(np.interp(z_t, zz, a_z) - 0.8 * t - _WALL_MM - 8, 30)
    b_t = np.maximum(np.interp(z_t, zz, b_z) - 0.8 * t - _WALL_MM - 18, 30)
    return thorax_z, a_t, b_t


def _paint_ellipsoid(
    grid: Grid, labels: np.ndarray, label: int, centre, radii, *, into=None
) -> None:
    centre = np.asarray(centre, np.float32)
    radii = np.asarray(radii, np.float32)
    box = grid.box(centre, radii)
    z, y, x = grid.coords(box)
    inside = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (z - centre[2]) / radii[2]
    ) ** 2 <= 1
    view = labels[box]
    if into is not None:
        inside &= np.isin(view, into)
    view[inside] = label


def paint_organs(
    grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, body: dict
) -> None:
    """Spine, lungs, heart, kidneys and spleen."""
    s = _girth(subject)
    soft = (LABELS["muscle"], LABELS["bowel"], LABELS["vat"])
    # Spine: a vertebral column behind the cavity, from the sacrum to the neck.
    spine_z = grid.index_range("z", marks.pelvic_floor + 20, marks.chin)
    y_spine = (
        0.45 * float(np.interp(marks.liver_bottom, [marks.crotch, marks.chin], [115 * s, 60])) + 30
    )
    z, y, x = grid.coords((spine_z, slice(None), slice(None)))
    view = labels[spine_z]
    view[((x / 17.0) ** 2 + ((y - y_spine) / 16.0) ** 2 <= 1) & (view > 0)] = LABELS["bone_marrow"]

    thorax_z, a_t, b_t = body["thorax"]
    if thorax_z.stop > thorax_z.start:
        a_mid = float(np.median(a_t))
        b_mid = float(np.median(b_t))
        half_height = (marks.lung_apex - marks.diaphragm) / 2 + 10
        for side, dome in ((-1, marks.diaphragm), (1, marks.diaphragm - 15)):
            _paint_ellipsoid(
                grid,
                labels,
                LABELS["lung"],
                (side * 0.5 * a_mid, 5.0, dome + half_height),
                (0.46 * a_mid, 0.85 * b_mid, half_height),
                into=soft,
            )
        _paint_ellipsoid(
            grid,
            labels,
            LABELS["heart"],
            (0.18 * a_mid, -0.35 * b_mid, marks.diaphragm + 45),
            (55.0, 45.0, 55.0),
            into=(*soft, LABELS["lung"]),
        )
    kidney_z = marks.liver_bottom - 20
    for side, dz in ((-1, -10.0), (1, 10.0)):
        _paint_ellipsoid(
            grid,
            labels,
            LABELS["kidney"],
            (side * 62 * s, 48.0, kidney_z + dz),
            (28.0, 24.0, 55.0),
            into=soft,
        )
    _paint_ellipsoid(
        grid,
        labels,
        LABELS["spleen"],
        (88 * s, 40.0, marks.diaphragm - 55),
        (32.0, 48.0, 55.0),
        into=(*soft, LABELS["lung"]),
    )


def _liver_implicit(z, y, x, centre, k, warp):
    """Negative inside the liver: a right lobe and a left lobe, smoothly deformed (mm)."""
    dx = warp[0](z, y, x)
    dy = warp[1](z, y, x)
    dz = warp[2](z, y, x)
    px = (x + dx - centre[0]) / k
    py = (y + dy - centre[1]) / k
    pz = (z + dz - centre[2]) / k
    right = (px / 88.0) ** 2 + (py / 82.0) ** 2 + (pz / 72.0) ** 2
    # The right lobe is flatter underneath (the inferior surface slopes down laterally).
    right = right + np.where(pz < 0, 0.35 * (px / 88.0) * (pz / 72.0), 0.0)
    left = ((px - 92.0) / 62.0) ** 2 + ((py + 28.0) / 44.0) ** 2 + ((pz - 18.0) / 38.0) ** 2
    return np.minimum(right, left) - 1.0


@dataclass(frozen=True)
class LiverShape:
    """The painted liver's geometry in mm: centre, scale ``k``, warp and vessel segments."""

    centre: np.ndarray  # (x, y, z) mm
    k: float
    warp: list
    vessels: list[tuple[np.ndarray, np.ndarray, float]]  # (start, end, radius) in mm

    def implicit(self, z, y, x) -> np.ndarray:
        """Negative inside the liver (:func:`_liver_implicit`)."""
        return _liver_implicit(z, y, x, self.centre, self.k, self.warp)

    def segment(self, z, y, x) -> np.ndarray:
        """One of eight Couinaud-like segments (0-7) of anatomical points: right lobe anterior
        or posterior, left lobe lateral or medial, each superior or inferior."""
        px = (np.asarray(x) - self.centre[0]) / self.k
        py = (np.asarray(y) - self.centre[1]) / self.k
        pz = (np.asarray(z) - self.centre[2]) / self.k
        left = px > 45.0
        second = np.where(left, px > 92.0, py > 0.0)
        upper = np.where(left, pz > 18.0, pz > 0.0)
        return (4 * left + 2 * second + upper).astype(np.intp)

    def clear(self, z, y, x, margin_mm: float) -> np.ndarray:
        """Points of one transverse plane whose in-plane disc of ``margin_mm`` lies inside the
        liver (tested at the centre and eight points on the rim) and off every vessel."""
        ok = self.implicit(z, y, x) <= 0
        for angle in np.arange(8) * np.pi / 4:
            ok &= (
                self.implicit(z, y + margin_mm * np.sin(angle), x + margin_mm * np.cos(angle)) <= 0
            )
        for start, end, radius in self.vessels:
            ok &= _segment_distance2(z, y, x, start, end) >= (radius + margin_mm) ** 2
        return ok


def paint_liver(
    grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, rng: np.random.Generator
) -> LiverShape:
    """The liver (right upper abdomen, under the right lung) with branching hepatic vessels."""
    warp = [Waves(rng, 3, (140.0, 320.0)) for _ in range(3)]
    amplitude = np.float32(rng.uniform(6.0, 12.0))
    for w in warp:
        w.norm = w.norm * amplitude
    centre = np.array(
        [
            -62.0 * _girth(subject) + rng.normal(0, 6),
            -8.0 + rng.normal(0, 5),
            (marks.diaphragm + marks.liver_bottom) / 2 + rng.normal(0, 8),
        ],
        np.float32,
    )
    # Base volume of the undeformed shape at k = 1 is about 2.3 L; scale to the target volume.
    k = (subject.liver_volume_target_ml / 2300.0) ** (1 / 3)
    for attempt in range(2):  # paint, then once more with the scale corrected by the painted volume
        half = np.array([160.0, 120.0, 110.0], np.float32) * k
        box = grid.box(centre + np.array([25.0 * k, 0, 0], np.float32), half)
        z, y, x = grid.coords(box)
        inside = _liver_implicit(z, y, x, centre, k, warp) <= 0
        volume = inside.sum() * grid.voxel_ml
        if attempt == 1 or volume <= 0:
            break
        k *= (subject.liver_volume_target_ml / volume) ** (1 / 3)
    view = labels[box]
    view[inside & (view != LABELS["bone_marrow"])] = LABELS["liver"]
    vessels = _paint_vessels(grid, labels, box, inside, centre, k, warp, rng)
    return LiverShape(centre, float(k), warp, vessels)


def _paint_vessels(grid, labels, box, inside, centre, k, warp, rng) -> list:
    """A branching tree of tubes from the hilum, kept inside the liver."""
    hilum = centre + np.array([35.0, 12.0, -30.0], np.float32) * k

    def in_liver(point) -> bool:
        p = [np.float32(v) for v in point]
        return float(_liver_implicit(p[2], p[1], p[0], centre, k, warp)) < -0.15

    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    stack = [(hilum, np.array([-0.8, -0.1, 0.6]), 48.0 * k, 6.0, 0)]
    while stack:
        start, direction, length, radius, depth = stack.pop()
        direction = direction / np.linalg.norm(direction)
        end = start + direction * length
        if not in_liver(end):
            continue
        segments.append((start, end, radius))
        if depth < 3:
            for sign in (-1, 1):
                turn = rng.standard_normal(3) * 0.35
                turn += (
                    sign
                    * np.cross(
                        direction, [0.0, 0.0, 1.0] if abs(direction[2]) < 0.9 else [1.0, 0, 0]
                    )
                    * 0.6
                )
                stack.append((end, direction + turn, length * 0.72, radius * 0.68, depth + 1))
    z, y, x = grid.coords(box)
    view = labels[box]
    for start, end, radius in segments:
        view[(_segment_distance2(z, y, x, start, end) <= radius**2) & inside] = LABELS[
            "hepatic_vessel"
        ]
    return segments


def _segment_distance2(z, y, x, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Squared distance (mm²) of points (broadcastable z, y, x in mm) to the segment
    ``start``-``end`` (x, y, z in mm)."""
    seg = end - start
    t = ((x - start[0]) * seg[0] + (y - start[1]) * seg[1] + (z - start[2]) * seg[2]) / float(
        seg @ seg
    )
    t = np.clip(t, 0, 1)
    return (
        (x - start[0] - t * seg[0]) ** 2
        + (y - start[1] - t * seg[1]) ** 2
        + (z - start[2] - t * seg[2]) ** 2
    )


def measure_volumes(labels: np.ndarray, grid: Grid, marks: Landmarks) -> dict[str, float]:
    """Liver, VAT and abdominal SAT volumes (mL) counted on the label map."""
    counts = np.bincount(labels.ravel(), minlength=max(LABELS.values()) + 1)
    abdomen = grid.index_range("z", marks.pelvic_floor, marks.diaphragm)
    asat = int(np.count_nonzero(labels[abdomen] == LABELS["sat"]))
    return {
        "liver_volume_ml": round(float(counts[list(LIVER_LABELS)].sum()) * grid.voxel_ml, 2),
        "vat_volume_ml": round(float(counts[LABELS["vat"]]) * grid.voxel_ml, 2),
        "asat_volume_ml": round(asat * grid.voxel_ml, 2),
    }
