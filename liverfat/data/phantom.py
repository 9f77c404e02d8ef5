"""The built-in synthetic cohort: two-point Dixon neck-to-knee scans with known ground truth.

Each subject is drawn from a seeded generator and painted on the UK Biobank body-MRI grid
(full scale: 224 left-right x 174 anterior-posterior x 370 head-feet voxels of 2.23 x 2.23 x 3 mm;
``half`` and ``quarter`` halve and quarter the voxel counts over the same field of view). The
anatomy is defined continuously in millimetres, so one seed gives the same body at every scale.

Array order is (z, y, x) with an identity direction: +x is the patient's left, +y posterior and +z
superior (LPS), so the liver sits at negative x, and z = 0 is the knee end of the scan.

Imaging model (all configurable in :class:`PhantomConfig`):

* body-MRI fat fraction departs from true PDFF non-linearly: a noise-floor bias
  ``sqrt(PDFF^2 + floor^2)`` at low fat fraction, then a proportional factor (single-peak fat
  models underestimate fat, so the default is below 1);
* Rician magnitude noise on water and fat, a smooth multiplicative coil field, partial-volume
  blur, in-plane motion offsets between the six stations, and water-fat swaps of one station in
  a small fraction of subjects;
* a simulated reference (a dedicated liver-MRI PDFF read from three manual ROIs): true PDFF plus
  measurement noise plus rare spurious outliers, recorded in the truth table.

The truth table (``truth/truth.csv``) is written apart from the manifest; no engine reads it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import ndimage

from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.io import array_to_image, write_volume
from liverfat.data.manifest import write_subject_table
from liverfat.data.predictions import PredictionsTable, prediction_row, run_info
from liverfat.errors import LiverfatError
from liverfat.parallel import map_subjects

#: Voxel counts (x, y, z) and spacing (mm) of the UK Biobank neck-to-knee Dixon grid.
FULL_SIZE = (224, 174, 370)
FULL_SPACING_MM = (2.23, 2.23, 3.0)
SCALES = {"full": 1, "half": 2, "quarter": 4}
N_STATIONS = 6

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
}
LIVER_LABELS = (LABELS["liver"], LABELS["hepatic_vessel"])

#: Proton density (signal units) and true fat fraction (%) of each tissue; liver FF is per subject.
TISSUE = {
    "sat": (95.0, 92.0),
    "muscle": (70.0, 3.0),
    "vat": (95.0, 88.0),
    "liver": (80.0, None),
    "spleen": (82.0, 1.0),
    "kidney": (85.0, 1.0),
    "bone_marrow": (65.0, 45.0),
    "lung": (6.0, 2.0),
    "heart": (85.0, 1.0),
    "hepatic_vessel": (95.0, 0.0),
    "bowel": (75.0, 4.0),
}

TARGETS = {
    "liver_pdff_pct": {
        "meaning": "liver proton density fat fraction from the (simulated) dedicated liver MRI",
        "unit": "%",
        "range": [0, 100],
    },
    "liver_volume_ml": {
        "meaning": "liver volume from the liver label",
        "unit": "mL",
        "range": [0, 5000],
    },
    "vat_volume_ml": {
        "meaning": "visceral adipose tissue volume from the labels",
        "unit": "mL",
        "range": [0, 20000],
    },
    "asat_volume_ml": {
        "meaning": "abdominal subcutaneous adipose tissue volume (diaphragm to pelvic floor)",
        "unit": "mL",
        "range": [0, 30000],
    },
}


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the phantom cohort; every field is recorded in the dataset card.

    Attributes
    ----------
    noise_floor_pct:
        Noise-floor bias of body-MRI fat fraction: observed ``sqrt(PDFF^2 + floor^2)`` (%).
    proportional_bias:
        Multiplicative factor on body-MRI fat fraction after the floor (1 = none).
    noise_sd:
        Standard deviation of the complex Gaussian noise behind the Rician magnitude (signal units;
        tissue proton density is about 60-95).
    coil_field_amplitude:
        Standard deviation of the log of the smooth multiplicative coil sensitivity field.
    motion_sd_mm:
        Standard deviation of the in-plane offset of each station (mm).
    swap_fraction:
        Fraction of subjects with a water-fat swap in one station.
    reference_noise_sd_pct, reference_noise_slope:
        Reference noise SD = ``sd + slope * PDFF`` (%).
    reference_outlier_fraction:
        Fraction of reference measurements with a spurious error of 4-12 % (absolute).
    fraction_a:
        Fraction of subjects in split A (with reference); the rest are B, half of which are C.
    blur_sigma_mm:
        Partial-volume point-spread (Gaussian SD, mm).
    """

    noise_floor_pct: float = 1.5
    proportional_bias: float = 0.95
    noise_sd: float = 0.8
    coil_field_amplitude: float = 0.15
    motion_sd_mm: float = 2.0
    swap_fraction: float = 0.02
    reference_noise_sd_pct: float = 0.3
    reference_noise_slope: float = 0.04
    reference_outlier_fraction: float = 0.03
    fraction_a: float = 0.6
    fraction_c_of_b: float = 0.5
    blur_sigma_mm: float = 2.0

    def body_ff(self, pdff_pct: np.ndarray | float) -> np.ndarray:
        """Expected body-MRI fat fraction (%) for a true PDFF (%), before noise."""
        pdff = np.asarray(pdff_pct, dtype=np.float64)
        return np.clip(self.proportional_bias * np.sqrt(pdff**2 + self.noise_floor_pct**2), 0, 100)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (x, y, z), spacing (mm), origin (mm) and 1-D voxel-centre coordinates."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)

    @classmethod
    def at_scale(cls, scale: str) -> Grid:
        if scale not in SCALES:
            raise LiverfatError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        factor = SCALES[scale]
        size = tuple(int(round(n / factor)) for n in FULL_SIZE)
        extent = [n * s for n, s in zip(FULL_SIZE, FULL_SPACING_MM, strict=True)]
        spacing = tuple(e / n for e, n in zip(extent, size, strict=True))
        # x, y centred on the body axis; z from the knee end (0 mm) upwards.
        x = (np.arange(size[0]) - (size[0] - 1) / 2) * spacing[0]
        y = (np.arange(size[1]) - (size[1] - 1) / 2) * spacing[1]
        z = (np.arange(size[2]) + 0.5) * spacing[2]
        return cls(size, spacing, x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))

    @property
    def origin(self) -> tuple[float, float, float]:
        return (float(self.x[0]), float(self.y[0]), float(self.z[0]))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return (self.size[2], self.size[1], self.size[0])

    def index_range(self, axis: str, low_mm: float, high_mm: float) -> slice:
        """Voxel slice along ``axis`` covering ``[low_mm, high_mm]`` (clipped to the grid)."""
        coords = getattr(self, axis)
        lo = int(np.searchsorted(coords, low_mm, side="left"))
        hi = int(np.searchsorted(coords, high_mm, side="right"))
        return slice(max(lo, 0), min(hi, coords.size))

    def box(self, centre: np.ndarray, half_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """(z, y, x) slices of the box ``centre +- half_mm`` (mm, in x, y, z order)."""
        return (
            self.index_range("z", centre[2] - half_mm[2], centre[2] + half_mm[2]),
            self.index_range("y", centre[1] - half_mm[1], centre[1] + half_mm[1]),
            self.index_range("x", centre[0] - half_mm[0], centre[0] + half_mm[0]),
        )

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays (mm) of a box."""
        return (
            self.z[box[0]][:, None, None],
            self.y[box[1]][None, :, None],
            self.x[box[2]][None, None, :],
        )


# Subject parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """Covariates and latent anatomy parameters of one phantom subject."""

    subject_id: str
    sex: int  # 0 female, 1 male (UK Biobank field 31 coding)
    age: float
    height_cm: float
    weight_kg: float
    bmi: float
    pdff_pct: float
    vat_fraction: float  # fraction of the abdominal cavity that is fat
    sat_thickness_mm: float
    liver_volume_target_ml: float


def draw_subject(rng: np.random.Generator, subject_id: str) -> Subject:
    """Covariates and liver fat, correlated through a shared metabolic latent variable.

    Liver fat is log-normal with median 2 % and mean about 4 % (about 20 % of subjects above
    5.5 %), as in UK Biobank; it rises with BMI and with visceral fat.
    """
    metabolic, e_bmi, e_vat, e_fat, e_sat, e_liver = rng.standard_normal(6)
    sex = int(rng.random() < 0.5)
    age = float(rng.uniform(45, 82))
    height = float(rng.normal(176.0, 7.0) if sex else rng.normal(163.0, 6.5))
    bmi = float(np.clip(26.5 * math.exp(0.15 * (0.8 * metabolic + 0.6 * e_bmi)), 17, 50))
    weight = bmi * (height / 100) ** 2
    vat_logit = -0.7 + 0.7 * sex + 0.9 * (0.7 * metabolic + 0.7 * e_vat)
    pdff = float(np.clip(2.0 * math.exp(1.177 * (0.6 * metabolic + 0.8 * e_fat)), 0.0, 45.0))
    sat = (6.0 + 2.6 * (bmi - 18.0)) * (1.35 if sex == 0 else 1.0) * math.exp(0.15 * e_sat)
    liver_volume = float(
        np.clip(1600 * math.exp(0.15 * e_liver + 0.01 * (weight - 78)), 1000, 2500)
    )
    return Subject(
        subject_id=subject_id,
        sex=sex,
        age=round(age, 1),
        height_cm=round(height, 1),
        weight_kg=round(weight, 1),
        bmi=round(bmi, 2),
        pdff_pct=round(pdff, 3),
        vat_fraction=float(1 / (1 + math.exp(-vat_logit))),
        sat_thickness_mm=float(np.clip(sat, 4, 70)),
        liver_volume_target_ml=liver_volume,
    )


class Waves:
    """A smooth random field in mm coordinates: a sum of plane waves with random directions."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]):
        directions = rng.standard_normal((n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=n)
        self.k = (2 * np.pi * directions / wavelengths[:, None]).astype(np.float32)  # (n, xyz)
        self.phase = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
        self.norm = np.float32(math.sqrt(2.0 / n))  # unit standard deviation

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        total = None
        for (kx, ky, kz), phase in zip(self.k, self.phase, strict=True):
            term = np.sin(kx * x + ky * y + kz * z + phase)
            total = term if total is None else total + term
        return total * self.norm


# Anatomy -------------------------------------------------------------------------------------


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


def _trunk_profile(subject: Subject, marks: Landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmark z (mm) and semi-axes a (left-right), b (anterior-posterior) of the outer contour."""
    s = math.sqrt(subject.bmi / 25.0)
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
    zz, a_z, b_z = _trunk_profile(subject, marks)
    t = subject.sat_thickness_mm
    trunk = grid.index_range("z", marks.crotch, np.inf)
    legs = grid.index_range("z", -np.inf, marks.crotch)
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

    # Thighs: two circles that meet at the crotch.
    if legs.stop > legs.start:
        s = math.sqrt(subject.bmi / 25.0)
        r_top = 92 * s * (1.0 if subject.sex else 1.08)
        r = np.interp(grid.z[legs], [marks.knee - 50, marks.crotch], [55 * s, r_top])
        r = r.astype(np.float32)[:, None, None]
        leg_sat = np.float32(0.55 * t)
        cx = r
        view = labels[legs]
        ax = np.abs(x) - cx
        view[_ellipse_rho(ax, y, r, r) <= 1] = LABELS["sat"]
        view[_ellipse_rho(ax, y, r - leg_sat, r - leg_sat) <= 1] = LABELS["muscle"]
        view[_ellipse_rho(ax, y - 5, np.float32(14), np.float32(14)) <= 1] = LABELS["bone_marrow"]

    # Abdominal cavity: inside the muscle wall, pushed forward by the paraspinal muscles.
    cavity_z = grid.index_range("z", marks.pelvic_floor, marks.diaphragm + 10)
    z_c = grid.z[cavity_z]
    wall = 14.0
    a_c = (
        np.interp(z_c, zz, a_z)
        - np.interp(z_c, [marks.crotch, marks.diaphragm], [t, 0.8 * t])
        - wall
    )
    b_c = (
        np.interp(z_c, zz, b_z)
        - np.interp(z_c, [marks.crotch, marks.diaphragm], [t, 0.8 * t])
        - wall
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

    # Thoracic cavity for lungs and heart.
    thorax_z = grid.index_range("z", marks.diaphragm - 30, marks.lung_apex)
    z_t = grid.z[thorax_z]
    a_t = np.maximum(np.interp(z_t, zz, a_z) - 0.8 * t - wall - 8, 30)
    b_t = np.maximum(np.interp(z_t, zz, b_z) - 0.8 * t - wall - 18, 30)
    return {"cavity": (cavity_z, a_c, b_c), "thorax": (thorax_z, a_t, b_t), "sat_mm": t}


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
    s = math.sqrt(subject.bmi / 25.0)
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


def paint_liver(
    grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, rng: np.random.Generator
) -> None:
    """The liver (right upper abdomen, under the right lung) with branching hepatic vessels."""
    warp = [Waves(rng, 3, (140.0, 320.0)) for _ in range(3)]
    amplitude = np.float32(rng.uniform(6.0, 12.0))
    for w in warp:
        w.norm = w.norm * amplitude
    centre = np.array(
        [
            -62.0 * math.sqrt(subject.bmi / 25.0) + rng.normal(0, 6),
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
    _paint_vessels(grid, labels, box, inside, centre, k, warp, rng)


def _paint_vessels(grid, labels, box, inside, centre, k, warp, rng) -> None:
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
        seg = end - start
        t = ((x - start[0]) * seg[0] + (y - start[1]) * seg[1] + (z - start[2]) * seg[2]) / float(
            seg @ seg
        )
        t = np.clip(t, 0, 1)
        d2 = (
            (x - start[0] - t * seg[0]) ** 2
            + (y - start[1] - t * seg[1]) ** 2
            + (z - start[2] - t * seg[2]) ** 2
        )
        view[(d2 <= radius**2) & inside] = LABELS["hepatic_vessel"]


# Imaging -------------------------------------------------------------------------------------


def _station_slices(n_z: int) -> list[slice]:
    edges = np.linspace(0, n_z, N_STATIONS + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def apply_motion(
    grid: Grid, labels: np.ndarray, rng: np.random.Generator, sd_mm: float
) -> list[list[float]]:
    """Shift each station in-plane by a random whole-voxel offset; return offsets (mm, x and y)."""
    offsets = []
    for station in _station_slices(labels.shape[0]):
        shift_mm = rng.normal(0, sd_mm, size=2)
        shift_vox = np.round(shift_mm / np.array(grid.spacing[:2])).astype(int)
        if shift_vox.any():
            labels[station] = ndimage.shift(
                labels[station], (0, shift_vox[1], shift_vox[0]), order=0, mode="constant", cval=0
            )
        offsets.append(
            [float(shift_vox[0] * grid.spacing[0]), float(shift_vox[1] * grid.spacing[1])]
        )
    return offsets


def synthesise_signal(
    grid: Grid,
    labels: np.ndarray,
    subject: Subject,
    config: PhantomConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat magnitude images (float32) from the label map and the imaging model."""
    n_labels = max(LABELS.values()) + 1
    pd_lut = np.zeros(n_labels, np.float32)
    ff_lut = np.zeros(n_labels, np.float32)
    for name, (pd_, ff) in TISSUE.items():
        pd_lut[LABELS[name]] = pd_
        ff_lut[LABELS[name]] = subject.pdff_pct if ff is None else ff
    ff_lut = config.body_ff(ff_lut).astype(np.float32) / 100
    proton = pd_lut[labels]
    ffrac = ff_lut[labels]
    water = proton * (1 - ffrac)
    fat = proton * ffrac
    sigma = [config.blur_sigma_mm / s for s in (grid.spacing[2], grid.spacing[1], grid.spacing[0])]
    if max(sigma) > 0.3:
        water = ndimage.gaussian_filter(water, sigma, truncate=2.0)
        fat = ndimage.gaussian_filter(fat, sigma, truncate=2.0)
    # Smooth coil sensitivity, separable so it costs three 1-D evaluations.
    coil = None
    for axis_coords, shape in ((grid.z, (-1, 1, 1)), (grid.y, (1, -1, 1)), (grid.x, (1, 1, -1))):
        w = Waves(rng, 2, (600.0, 1500.0))
        log_sd = config.coil_field_amplitude / math.sqrt(3)  # three axes add up to the set SD
        profile = np.exp(log_sd * w(axis_coords, axis_coords * 0, axis_coords * 0))
        profile = profile.reshape(shape).astype(np.float32)
        coil = profile if coil is None else coil * profile
    water *= coil
    fat *= coil
    return _rician(water, config.noise_sd, rng), _rician(fat, config.noise_sd, rng)


def _rician(signal: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sd)
    imag = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sd)
    return np.hypot(real, imag)


def simulate_reference(
    pdff_pct: float, config: PhantomConfig, rng: np.random.Generator
) -> tuple[float, bool]:
    """A dedicated liver-MRI PDFF reading (%): noise, and rarely a spurious outlier."""
    value = pdff_pct + rng.normal(
        0, config.reference_noise_sd_pct + config.reference_noise_slope * pdff_pct
    )
    outlier = bool(rng.random() < config.reference_outlier_fraction)
    if outlier:
        value += rng.choice([-1, 1]) * rng.uniform(4, 12)
    return round(float(max(value, 0.0)), 2), outlier


# One subject ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectJob:
    index: int
    seed: int
    scale: str
    out: str
    config: PhantomConfig
    split: str


def subject_id_for(index: int) -> str:
    return f"P{index + 1:04d}"


def image_paths(subject_id: str) -> dict[str, str]:
    """Image paths of a subject relative to the cohort folder."""
    return {
        "water": f"images/{subject_id}_water.nii.gz",
        "fat": f"images/{subject_id}_fat.nii.gz",
        "liver_mask": f"images/{subject_id}_liver_mask.nii.gz",
        "labels": f"truth/labels/{subject_id}_labels.nii.gz",
    }


def generate_subject(job: SubjectJob) -> dict[str, Any]:
    """Generate and write one subject; return its truth record. Idempotent (skips if written)."""
    sid = subject_id_for(job.index)
    out = Path(job.out)
    record_path = out / "truth" / "subjects" / f"{sid}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    arrays, record = build_subject(job.index, job.seed, job.scale, job.config, job.split)
    grid = Grid.at_scale(job.scale)
    paths = image_paths(sid)
    volumes = {
        "water": np.round(arrays["water"] * 10).clip(0, 65535).astype(np.uint16),
        "fat": np.round(arrays["fat"] * 10).clip(0, 65535).astype(np.uint16),
        "liver_mask": np.isin(arrays["labels"], LIVER_LABELS).astype(np.uint8),
        "labels": arrays["labels"],
    }
    for key, array in volumes.items():
        image = array_to_image(array, spacing=grid.spacing, origin=grid.origin)
        write_volume(image, out / paths[key])
    write_json_atomic(record_path, record)  # written last: its presence marks the subject done
    return record


def build_subject(
    index: int, seed: int, scale: str, config: PhantomConfig, split: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (water, fat signal x1; labels) and the truth record of subject ``index``."""
    # Independent streams, so anatomy, reference and swaps do not depend on the grid's noise draws.
    rng, rng_noise, rng_reference = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(3)
    )
    sid = subject_id_for(index)
    subject = draw_subject(rng, sid)
    grid = Grid.at_scale(scale)
    marks = Landmarks.for_height(subject.height_cm, shift_mm=float(rng.normal(0, 15)))
    labels = np.zeros(grid.shape, np.uint8)
    body = paint_body(grid, subject, marks, labels, rng)
    paint_organs(grid, subject, marks, labels, body)
    paint_liver(grid, subject, marks, labels, rng)
    motion = apply_motion(grid, labels, rng, config.motion_sd_mm)
    water, fat = synthesise_signal(grid, labels, subject, config, rng_noise)
    swap = bool(rng.random() < config.swap_fraction)
    swap_station = -1
    if swap:
        liver_rows = np.flatnonzero(np.isin(labels, LIVER_LABELS).any(axis=(1, 2)))
        stations = _station_slices(grid.shape[0])
        liver_station = next(
            (i for i, s in enumerate(stations) if s.start <= int(np.median(liver_rows)) < s.stop), 3
        )
        swap_station = liver_station if rng.random() < 0.5 else int(rng.integers(N_STATIONS))
        s = stations[swap_station]
        water[s], fat[s] = fat[s].copy(), water[s].copy()
    reference, outlier = simulate_reference(subject.pdff_pct, config, rng_reference)
    volumes = measure_volumes(labels, grid, marks)
    record = {
        "subject_id": sid,
        "split": split,
        "sex": subject.sex,
        "age": subject.age,
        "height": subject.height_cm,
        "weight": subject.weight_kg,
        "bmi": subject.bmi,
        "liver_pdff_pct": subject.pdff_pct,
        "liver_body_ff_expected_pct": round(float(config.body_ff(subject.pdff_pct)), 4),
        **volumes,
        "reference_pdff_pct": reference,
        "reference_outlier": int(outlier),
        "water_fat_swap": int(swap),
        "swap_station": swap_station,
        "motion_offsets_mm": motion,
        "diaphragm_z_mm": round(marks.diaphragm, 2),
    }
    return {"water": water, "fat": fat, "labels": labels}, record


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


# The cohort ----------------------------------------------------------------------------------


def assign_splits(n: int, seed: int, config: PhantomConfig) -> list[str]:
    """Split A (reference), B (none) and C (a random subset of B), fixed by the seed."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    order = rng.permutation(n)
    n_a = int(round(config.fraction_a * n))
    splits = np.array(["B"] * n, dtype=object)
    splits[order[:n_a]] = "A"
    rest = order[n_a:]
    n_c = int(round(config.fraction_c_of_b * rest.size))
    splits[rest[:n_c]] = "C"
    return splits.tolist()


def generate_cohort(
    n: int,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    scale: str = "quarter",
    config: PhantomConfig | None = None,
    executor: str = "processes",
    n_workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate (or finish generating) a phantom cohort; return the dataset card path.

    Subjects already written are kept (the command resumes). Output for one seed, scale and
    configuration is byte-identical across runs.
    """
    if n < 1:
        raise LiverfatError(f"--n must be at least 1, got {n}")
    Grid.at_scale(scale)  # validates the scale
    config = config or PhantomConfig()
    out = Path(out)
    card_path = out / "manifest.yaml"
    _check_existing(card_path, n, seed, scale, config)
    splits = assign_splits(n, seed, config)
    jobs = [SubjectJob(i, seed, scale, str(out), config, splits[i]) for i in range(n)]
    if executor == "processes" and (n_workers == 1 or n == 1):
        executor = "serial"
    records: dict[int, dict] = {}
    errors = []
    for outcome in map_subjects(
        generate_subject,
        jobs,
        executor=executor,
        n_workers=n_workers,
        progress="phantom" if progress else None,
    ):
        if outcome.ok:
            records[outcome.index] = outcome.value
        else:
            errors.append(f"{subject_id_for(outcome.index)}: {outcome.error}")
    if errors:
        raise LiverfatError(
            f"phantom generation failed for {len(errors)} subject(s): {'; '.join(errors[:3])}"
        )
    ordered = [records[i] for i in range(n)]
    _write_tables(out, ordered, seed, scale, config)
    return card_path


def _check_existing(card_path: Path, n: int, seed: int, scale: str, config: PhantomConfig) -> None:
    """Refuse to mix subjects of different settings in one folder."""
    settings_path = card_path.parent / "truth" / "settings.json"
    settings = {"seed": seed, "scale": scale, "config": asdict(config)}
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(settings)):
            raise LiverfatError(
                f"{card_path.parent}: holds a phantom cohort with other settings "
                f"(seed {previous.get('seed')}, scale {previous.get('scale')}); "
                "choose another --out"
            )
    else:
        write_json_atomic(settings_path, settings)


def _write_tables(
    out: Path, records: list[dict], seed: int, scale: str, config: PhantomConfig
) -> None:
    covariates = ["age", "sex", "height", "weight", "bmi"]
    volumes = ["liver_volume_ml", "vat_volume_ml", "asat_volume_ml"]
    rows = []
    for r in records:
        paths = image_paths(r["subject_id"])
        has_reference = r["split"] == "A"
        rows.append(
            {
                "subject_id": r["subject_id"],
                "water": paths["water"],
                "fat": paths["fat"],
                "liver_mask": paths["liver_mask"],
                "split": r["split"],
                **{c: r[c] for c in covariates},
                "liver_pdff_pct": r["reference_pdff_pct"] if has_reference else np.nan,
                **{v: r[v] if has_reference else np.nan for v in volumes},
            }
        )
    write_subject_table(pd.DataFrame(rows), out / "subjects.csv")
    truth = pd.DataFrame(records)
    truth["motion_offsets_mm"] = truth["motion_offsets_mm"].map(json.dumps)
    truth["labels"] = [image_paths(r["subject_id"])["labels"] for r in records]
    write_subject_table(truth, out / "truth" / "truth.csv")
    truth_rows = [
        prediction_row(r["subject_id"], "truth", target, r[target])
        for r in records
        for target in ("liver_pdff_pct", *volumes)
    ]
    PredictionsTable.from_rows(
        truth_rows,
        run_info(
            "truth",
            configuration={"seed": seed, "scale": scale, **asdict(config)},
            seed=seed,
            timestamp=False,
        ),
    ).write(out / "truth" / "truth_predictions.csv")
    write_text_atomic(
        out / "manifest.yaml", yaml.safe_dump(_card(seed, scale, config), sort_keys=False)
    )


def _card(seed: int, scale: str, config: PhantomConfig) -> dict[str, Any]:
    grid = Grid.at_scale(scale)
    return {
        "name": "liverfat-phantom",
        "description": (
            "Synthetic two-point Dixon neck-to-knee body MRI with known liver fat, made by "
            "`liverfat phantom`. Ground truth (true PDFF, label maps, swaps, reference outliers) "
            "is in truth/, which no engine reads."
        ),
        "source": f"liverfat phantom, seed {seed}, scale {scale}",
        "licence": "CC0-1.0",
        "subjects": "subjects.csv",
        "units": {
            "fat_fraction": "%",
            "signal": "arbitrary (x10 in the stored uint16)",
            "length": "mm",
            "volume": "mL",
        },
        "grid": {"size_xyz": list(grid.size), "spacing_mm": [round(s, 4) for s in grid.spacing]},
        "targets": TARGETS,
        "covariates": {
            "age": {"unit": "years", "range": [18, 100]},
            "sex": {"coding": "0 female, 1 male (UK Biobank field 31)", "range": [0, 1]},
            "height": {"unit": "cm", "range": [100, 230]},
            "weight": {"unit": "kg", "range": [30, 250]},
            "bmi": {"unit": "kg/m^2", "range": [10, 80]},
        },
        "splits": {
            "A": {"meaning": "subjects with reference values (training and validation)"},
            "B": {"meaning": "subjects without reference values"},
            "C": {
                "meaning": "a random subset of B (the atlas-versus-network comparison set)",
                "subset_of": "B",
            },
        },
        "phantom": {"seed": seed, "scale": scale, **asdict(config)},
    }
