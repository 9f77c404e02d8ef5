"""Scan artefacts of the phantom: the classes UK Biobank's visual inspection excluded scans for.

One subject gets at most one artefact, drawn by :func:`draw_artefact` against per-class rates
(:data:`DEFAULT_RATES`, 3.6 % in all: the share of scans the published UK Biobank liver-fat study
excluded after visual inspection):

* ``swap`` (:func:`apply_swap_region`): water and fat exchanged in a whole station, in a
  contiguous z part of one (at least 40 % of it) or in one left-right half of one;
* ``metal`` (:func:`apply_metal`): an implant (hip prosthesis, knee, spinal rods) leaving a signal
  void of 30-300 mL with a partial hyperintense pile-up rim and a distorted halo around it;
* ``noise`` (:func:`apply_severe_noise`): total noise 3-8 times the scan's usual SD;
* ``positioning`` (:func:`apply_positioning`): the body far off centre left-right (cut by the
  field-of-view edge), off centre anterior-posterior, or rolled 10-25 degrees about the head-feet
  axis; applied to the label map before the signal is made.

Every function is seeded only by the generator passed in and returns a JSON-able detail record
(mm, mL, degrees). Arrays are (z, y, x) on a :class:`~liverfat.data.phantom.grid.Grid`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from liverfat.data.phantom.anatomy import LABELS
from liverfat.data.phantom.grid import Grid, Waves
from liverfat.data.phantom.imaging import N_STATIONS, _station_slices, liver_station, rician
from liverfat.errors import LiverfatError

ARTEFACT_CLASSES = ("swap", "metal", "noise", "positioning")
#: Per-class rates (fractions of subjects), 3.6 % in all as in UK Biobank's visual exclusions.
DEFAULT_RATES = {"swap": 0.012, "metal": 0.008, "noise": 0.008, "positioning": 0.008}
#: A partial z swap covers at least this fraction of its station's slices.
MIN_Z_PART = 0.4
#: Void volume range of a metal implant (mL).
METAL_VOID_ML = (30.0, 300.0)
#: Pile-up rim signal relative to the tissue under it (factor range).
METAL_RIM_FACTOR = (1.5, 3.0)
#: Total noise SD of a severe-noise scan relative to its usual SD (factor range).
NOISE_FACTOR = (3.0, 8.0)
#: Roll of a rolled subject about the head-feet axis (degrees, either sign).
ROLL_DEG = (10.0, 25.0)
#: Anterior-posterior offset of a subject lying far off (mm, either sign).
AP_SHIFT_MM = (55.0, 85.0)
#: How far a laterally shifted body reaches beyond the field-of-view edge (mm).
LATERAL_CUT_MM = (15.0, 50.0)


def checked_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """``rates`` as ``{class: fraction}`` in their given order; a one-line error for an unknown
    class or rates that are negative or add up to more than 1."""
    unknown = set(rates) - set(ARTEFACT_CLASSES)
    if unknown:
        raise LiverfatError(
            f"unknown artefact class(es) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(ARTEFACT_CLASSES)}"
        )
    checked = {str(k): float(v) for k, v in rates.items()}
    values = checked.values()
    if any(not (math.isfinite(v) and v >= 0) for v in values) or sum(values) > 1 + 1e-12:
        raise LiverfatError(f"artefact rates must be >= 0 and add up to at most 1, got {rates}")
    return checked


def draw_artefact(rates: Mapping[str, float], rng: np.random.Generator) -> str:
    """``"none"`` or one of :data:`ARTEFACT_CLASSES`, from one ``rng.random()`` draw.

    The classes are mutually exclusive: the draw is read against the cumulative ``rates``
    (fractions, in :data:`ARTEFACT_CLASSES` order; missing classes have rate 0).
    """
    rates = checked_rates(rates)
    values = [rates.get(c, 0.0) for c in ARTEFACT_CLASSES]
    u = rng.random()
    for name, edge in zip(ARTEFACT_CLASSES, np.cumsum(values), strict=True):
        if u < edge:
            return name
    return "none"


def apply_positioning(grid: Grid, labels: np.ndarray, rng: np.random.Generator) -> dict:
    """Move the body (label map, uint8, in place) into an unusual position; before the signal.

    One of three modes, equally likely: ``lateral`` (shifted left or right so that the widest part
    of the body reaches :data:`LATERAL_CUT_MM` beyond the field-of-view edge), ``anterior-
    posterior`` (shifted by :data:`AP_SHIFT_MM`) or ``roll`` (rotated :data:`ROLL_DEG` about the
    head-feet axis through the body's centre). Nearest-neighbour resampling in mm.

    Returns ``{"mode", "shift_x_mm", "shift_y_mm", "roll_deg"}``.
    """
    mode = ("lateral", "anterior-posterior", "roll")[int(rng.integers(3))]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    shift_x = shift_y = roll = 0.0
    # The trunk, without the arms (realism), which already reach the field of view's edges.
    body = (labels > 0) & ~np.isin(labels, (LABELS["arm_fat"], LABELS["arm_muscle"]))
    columns = np.flatnonzero(body.any(axis=(0, 1)))
    if mode == "lateral":
        half_width = float(np.max(np.abs(grid.x[columns]))) if columns.size else 0.0
        fov_half = float(grid.x[-1]) + grid.spacing[0] / 2
        shift_x = sign * (fov_half - half_width + float(rng.uniform(*LATERAL_CUT_MM)))
    elif mode == "anterior-posterior":
        shift_y = sign * float(rng.uniform(*AP_SHIFT_MM))
    else:
        roll = sign * float(rng.uniform(*ROLL_DEG))
    # Output voxel (y, x) in mm maps back to input mm by the inverse rotation about the centre.
    centre = np.array([0.0, 0.0])
    if body.any():
        _, yy, xx = np.nonzero(body[:: max(1, body.shape[0] // 40)])
        centre = np.array([grid.y[yy].mean(), grid.x[xx].mean()], float)
    theta = math.radians(roll)
    c, s = math.cos(theta), math.sin(theta)
    inverse = np.array([[c, -s], [s, c]])  # (y, x): rotation by -theta
    sy, sx = grid.spacing[1], grid.spacing[0]
    # index -> mm: p = origin + spacing * i; out mm q -> in mm p = R^-1 (q - t - centre) + centre
    to_mm = np.diag([sy, sx])
    matrix2 = np.linalg.inv(to_mm) @ inverse @ to_mm
    origin = np.array([grid.y[0], grid.x[0]], float)
    t = np.array([shift_y, shift_x])
    offset2 = np.linalg.inv(to_mm) @ (inverse @ (origin - t - centre) + centre - origin)
    matrix = np.eye(3)
    matrix[1:, 1:] = matrix2
    offset = np.array([0.0, *offset2])
    labels[...] = ndimage.affine_transform(labels, matrix, offset, order=0, mode="constant", cval=0)
    return {
        "mode": mode,
        "shift_x_mm": round(shift_x, 2),
        "shift_y_mm": round(shift_y, 2),
        "roll_deg": round(roll, 2),
    }


def apply_swap_region(
    grid: Grid,
    labels: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    rng: np.random.Generator,
) -> dict:
    """Swap water and fat (in place) in a whole station, a z part of one, or one half of one.

    The station is the liver's (the one holding the liver's median slice) half the time, as in
    :func:`~liverfat.data.phantom.imaging.apply_swap`, else a random one. ``partial`` is
    ``whole``, ``z-part`` (a contiguous run of at least :data:`MIN_Z_PART` of the station's
    slices) or ``half`` (the patient's left or right half of the field of view), equally likely.

    Returns ``{"station", "partial", "z_slices": [start, stop), "side"}`` (``side`` is ``left``,
    ``right`` or None).
    """
    stations = _station_slices(grid.shape[0])
    station = liver_station(labels) if rng.random() < 0.5 else int(rng.integers(N_STATIONS))
    partial = ("whole", "z-part", "half")[int(rng.integers(3))]
    s = stations[station]
    start, stop = s.start, s.stop
    columns = slice(None)
    side = None
    if partial == "z-part":
        n = stop - start
        length = int(np.clip(round(rng.uniform(MIN_Z_PART, 0.9) * n), math.ceil(MIN_Z_PART * n), n))
        start = start + int(rng.integers(n - length + 1))
        stop = start + length
    elif partial == "half":
        side = "left" if rng.random() < 0.5 else "right"
        middle = int(np.searchsorted(grid.x, 0.0))
        columns = slice(middle, None) if side == "left" else slice(None, middle)  # +x is left
    region = (slice(start, stop), slice(None), columns)
    water[region], fat[region] = fat[region].copy(), water[region].copy()
    return {"station": station, "partial": partial, "z_slices": [start, stop], "side": side}


def _metal_site(grid: Grid, labels: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """An implant site and its centre (mm, x y z): hip, knee or spine, from the bone marrow."""
    marrow = labels == LABELS["bone_marrow"]
    zs, ys, xs = np.nonzero(marrow)
    site = ("hip", "knee", "spine")[int(rng.integers(3))]
    legs = np.abs(grid.x[xs]) > 40.0
    if site != "spine" and legs.any():
        side = 1.0 if rng.random() < 0.5 else -1.0
        pick = legs & (np.sign(grid.x[xs]) == side)
        if not pick.any():
            pick = legs
        leg_z = grid.z[zs[pick]]
        z = leg_z.max() - 25.0 if site == "hip" else leg_z.min() + 45.0
        near = pick & (np.abs(grid.z[zs] - z) < 2 * grid.spacing[2])
        near = near if near.any() else pick
        return site, np.array([grid.x[xs[near]].mean(), grid.y[ys[near]].mean(), z])
    spine = ~legs
    if not spine.any():
        return "spine", np.array([0.0, 0.0, float(grid.z.mean())])
    z_spine = grid.z[zs[spine]]
    z = float(np.quantile(z_spine, 0.2))  # lumbar
    near = spine & (np.abs(grid.z[zs] - z) < 2 * grid.spacing[2])
    return "spine", np.array([grid.x[xs[near]].mean(), grid.y[ys[near]].mean(), z])


def apply_metal(
    grid: Grid,
    labels: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    rng: np.random.Generator,
    noise_sd: float,
) -> dict:
    """A metal implant's susceptibility artefact on water and fat (in place), after the signal.

    A distorted blob of :data:`METAL_VOID_ML` (spinal rods: elongated along z) at a hip, a knee or
    the lumbar spine becomes a void: both signals pure Rician noise of SD ``noise_sd``. Over part
    of the void's border (about half of it) a pile-up rim a voxel or more thick carries
    :data:`METAL_RIM_FACTOR` times the tissue's signal, and a halo beyond it is smoothly
    distorted in intensity (x 0.88-1.12). The void is kept inside the body (labels > 0).

    Returns ``{"site", "centre_mm": [x, y, z], "void_ml", "rim_factor"}``; ``void_ml`` is the
    void's volume on the grid.
    """
    site, centre = _metal_site(grid, labels, rng)
    target_ml = float(np.exp(rng.uniform(*np.log(METAL_VOID_ML))))
    if site == "spine":
        radii = np.array([rng.uniform(24, 32), rng.uniform(12, 16), 1.0])
        radii[2] = target_ml * 1000 / (4 / 3 * math.pi * radii[0] * radii[1])
    else:
        r = (target_ml * 1000 / (4 / 3 * math.pi)) ** (1 / 3)
        radii = r * rng.uniform(0.8, 1.25, size=3)
    rim_mm = max(6.0, 1.5 * max(grid.spacing))
    box = grid.box(centre, radii * 1.6 + 3 * rim_mm)
    z, y, x = grid.coords(box)
    warp = Waves(rng, 3, (40.0, 120.0))
    rho = np.sqrt(
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    ) * (1 + 0.12 * warp(z, y, x))
    inside_body = labels[box] > 0
    n_void = max(1, int(round(target_ml / grid.voxel_ml)))
    candidates = np.sort(rho[inside_body])
    level = candidates[min(n_void, candidates.size) - 1] if candidates.size else -1.0
    void = (rho <= level) & inside_body
    sampling = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    distance = ndimage.distance_transform_edt(~void, sampling=sampling)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    facing = (
        (x - centre[0]) * direction[0]
        + (y - centre[1]) * direction[1]
        + (z - centre[2]) * direction[2]
    ) / np.maximum(
        np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2), 1e-3
    )
    rim = (distance > 0) & (distance <= rim_mm) & (facing > -0.1) & inside_body
    halo = (distance > rim_mm) & (distance <= 3 * rim_mm) & inside_body
    rim_factor = float(rng.uniform(*METAL_RIM_FACTOR))
    modulation = (1 + 0.12 * np.clip(Waves(rng, 3, (20.0, 60.0))(z, y, x), -1, 1)).astype(
        np.float32
    )
    for image in (water, fat):
        view = image[box]
        view[rim] *= np.float32(rim_factor)
        view[halo] *= np.broadcast_to(modulation, halo.shape)[halo]
        view[void] = rician(np.zeros(int(void.sum()), np.float32), noise_sd, rng)
    return {
        "site": site,
        "centre_mm": [round(float(v), 2) for v in centre],
        "void_ml": round(float(void.sum()) * grid.voxel_ml, 2),
        "rim_factor": round(rim_factor, 3),
    }


def apply_severe_noise(
    water: np.ndarray, fat: np.ndarray, rng: np.random.Generator, noise_sd: float
) -> dict:
    """Raise the noise (in place) so that its total SD is :data:`NOISE_FACTOR` x ``noise_sd``.

    The magnitudes are treated as signals with complex noise of SD ``noise_sd`` already in them:
    complex noise of SD ``noise_sd * sqrt(factor^2 - 1)`` is added and the magnitude taken again,
    so the result is Rician with SD ``factor * noise_sd``. Returns ``{"noise_factor"}``.
    """
    factor = float(rng.uniform(*NOISE_FACTOR))
    extra = noise_sd * math.sqrt(factor**2 - 1)
    for image in (water, fat):
        image[...] = rician(image, extra, rng)
    return {"noise_factor": round(factor, 4)}
