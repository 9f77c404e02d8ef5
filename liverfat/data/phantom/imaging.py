"""The phantom's imaging model: Dixon signal, noise, coil field, motion, swaps, and the reference.

All configurable in :class:`PhantomConfig`:

* body-MRI fat fraction departs from true PDFF non-linearly: a noise-floor bias
  ``sqrt(PDFF^2 + floor^2)`` at low fat fraction, then a proportional factor (single-peak fat
  models underestimate fat, so the default is below 1);
* Rician magnitude noise on water and fat, a smooth multiplicative coil field, partial-volume
  blur, in-plane motion offsets between the six stations, and water-fat swaps of one station in
  a small fraction of subjects;
* a simulated reference (a dedicated liver-MRI PDFF read from three manual ROIs): true PDFF plus
  measurement noise plus rare spurious outliers, recorded in the truth table.

The model holds over the whole 0-100 % range of liver PDFF (the fixed bins of
:attr:`PhantomConfig.pdff_bins` may reach beyond the default draw's 45 %): water and fat are
written as separate phase-sensitive signals, so a fat-dominant liver is not confined to 0-50 % as
in magnitude two-point Dixon, and the body fat fraction and the reference stay within 0-100 %.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from liverfat.data.phantom.anatomy import LABELS, LIVER_LABELS
from liverfat.data.phantom.grid import Grid, Waves
from liverfat.errors import LiverfatError

if TYPE_CHECKING:
    from liverfat.data.phantom.cohort import Subject
    from liverfat.data.phantom.realism import Realism

N_STATIONS = 6

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
    "gallbladder": (95.0, 0.0),
    "stomach": (80.0, 3.0),
    "gas": (1.0, 0.0),
    "arm_fat": (95.0, 92.0),
    "arm_muscle": (70.0, 3.0),
}


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the phantom cohort; every field is recorded in the dataset card.

    ``pdff_bins``, ``repeat_fraction`` and ``repeat_change_pp`` are recorded only when set, so a
    cohort with the default settings records (and is) exactly what it was before those fields
    existed (see :meth:`as_record`).

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
    pdff_bins:
        ``None`` (the default): liver PDFF is log-normal (median 2 %, at most 45 %), as in UK
        Biobank. Otherwise fixed bins ``((low_pct, high_pct, count), ...)``: exactly ``count``
        subjects get a liver PDFF in ``[low_pct, high_pct)`` (%), and the counts must add up to
        the cohort's size. Bins lie within 0-100 % and do not overlap; they are kept in
        increasing order (so the order they are given in does not matter). Which subject falls
        in which bin is fixed by the cohort seed
        (:func:`~liverfat.data.phantom.cohort.assign_pdff_bins`); within its bin a subject's
        PDFF keeps the rank its metabolic latent gives it
        (:func:`~liverfat.data.phantom.cohort.draw_subject`).
    repeat_fraction:
        Fraction of subjects (participants) given a second imaging visit (0-1; 0 = none): a new
        scan of the same anatomy and liver fat with new positioning, noise, coil field, station
        motion, swap draw and reference measurement
        (:func:`~liverfat.data.phantom.cohort.build_subject`, ``visit=3``).
    repeat_change_pp:
        Standard deviation of a true change in liver PDFF between the visits (percentage points;
        0 = the same liver fat at both), drawn per repeated participant.
    realism:
        ``None`` (the default): the phantom as it was before realism. Otherwise a
        :class:`~liverfat.data.phantom.realism.Realism`: spatially varying liver fat, the
        three-ROI reference, arms, gallbladder and stomach, station-border deformation and
        artefact classes (:func:`~liverfat.data.phantom.realism.realistic_config` turns it on).
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
    pdff_bins: tuple[tuple[float, float, int], ...] | None = None
    repeat_fraction: float = 0.0
    repeat_change_pp: float = 0.0
    realism: Realism | None = None

    def __post_init__(self) -> None:
        if self.pdff_bins is not None:
            object.__setattr__(self, "pdff_bins", _checked_bins(self.pdff_bins))
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise LiverfatError(f"repeat_fraction must be in [0, 1], got {self.repeat_fraction}")
        if not (math.isfinite(self.repeat_change_pp) and self.repeat_change_pp >= 0):
            raise LiverfatError(
                f"repeat_change_pp must be a finite SD >= 0 (pp), got {self.repeat_change_pp}"
            )

    def as_record(self) -> dict[str, Any]:
        """The settings as recorded in ``truth/settings.json`` and the dataset card (JSON/YAML).

        ``pdff_bins`` appears only when set (as ``[[low, high, count], ...]``), and the repeat
        settings only when non-zero, so the record of the default settings, and the resume check
        of a cohort written before those fields existed, are unchanged.
        """
        record = asdict(self)
        bins = record.pop("pdff_bins")
        if bins is not None:
            record["pdff_bins"] = [list(b) for b in bins]
        for key in ("repeat_fraction", "repeat_change_pp"):
            if not record[key]:
                del record[key]
        realism = record.pop("realism")
        if realism is not None:
            record["realism"] = self.realism.as_record()
        return record

    def body_ff(self, pdff_pct: np.ndarray | float) -> np.ndarray:
        """Expected body-MRI fat fraction (%) for a true PDFF (%), before noise."""
        pdff = np.asarray(pdff_pct, dtype=np.float64)
        return np.clip(self.proportional_bias * np.sqrt(pdff**2 + self.noise_floor_pct**2), 0, 100)


def _checked_bins(bins: Any) -> tuple[tuple[float, float, int], ...]:
    """``pdff_bins`` as sorted ``(low, high, count)`` tuples; a one-line error if unusable."""
    try:
        items = [tuple(b) for b in bins]
    except TypeError:
        raise LiverfatError(
            f"pdff_bins must be (low_pct, high_pct, count) triples, got {bins!r}"
        ) from None
    if not items:
        raise LiverfatError("pdff_bins must hold at least one (low_pct, high_pct, count) bin")
    checked = []
    for item in items:
        if len(item) != 3:
            raise LiverfatError(f"pdff bin {item!r} is not (low_pct, high_pct, count)")
        low, high, count = item
        numeric = all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (low, high, count)
        )
        if not numeric or not (math.isfinite(low) and math.isfinite(high)):
            raise LiverfatError(f"pdff bin {item!r}: low, high and count must be numbers")
        if not 0 <= low < high <= 100:
            raise LiverfatError(f"pdff bin {low:g}-{high:g} %: needs 0 <= low < high <= 100")
        if not (math.isfinite(count) and count == int(count) and count >= 0):
            raise LiverfatError(
                f"pdff bin {low:g}-{high:g} %: count {count!r} is not an integer >= 0"
            )
        checked.append((float(low), float(high), int(count)))
    checked.sort()
    for (low_a, high_a, _), (low_b, high_b, _) in zip(checked[:-1], checked[1:], strict=True):
        if low_b < high_a:
            raise LiverfatError(
                f"pdff bins {low_a:g}-{high_a:g} % and {low_b:g}-{high_b:g} % overlap"
            )
    return tuple(checked)


def _station_slices(n_z: int) -> list[slice]:
    edges = np.linspace(0, n_z, N_STATIONS + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def liver_station(labels: np.ndarray) -> int:
    """The station holding the liver's median slice (station 3 if there is no liver)."""
    liver_rows = np.flatnonzero(np.isin(labels, LIVER_LABELS).any(axis=(1, 2)))
    if not liver_rows.size:
        return 3
    median_row = int(np.median(liver_rows))
    stations = _station_slices(labels.shape[0])
    return next((i for i, s in enumerate(stations) if s.start <= median_row < s.stop), 3)


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
    *,
    liver_fat: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat magnitude images (float32) from the label map and the imaging model.

    ``liver_fat`` is ``(flat voxel indices, PDFF %)`` of the liver parenchyma where its fat
    varies in space (:func:`~liverfat.data.phantom.realism.liver_fat_map`); without it the
    liver is one PDFF.
    """
    n_labels = max(LABELS.values()) + 1
    pd_lut = np.zeros(n_labels, np.float32)
    ff_lut = np.zeros(n_labels, np.float32)
    for name, (pd_, ff) in TISSUE.items():
        pd_lut[LABELS[name]] = pd_
        ff_lut[LABELS[name]] = subject.pdff_pct if ff is None else ff
    ff_lut = config.body_ff(ff_lut).astype(np.float32) / 100
    proton = pd_lut[labels]
    ffrac = ff_lut[labels]
    if liver_fat is not None:
        ffrac.ravel()[liver_fat[0]] = config.body_ff(liver_fat[1]).astype(np.float32) / 100
    water = proton * (1 - ffrac)
    fat = proton * ffrac
    partial_volume = config.realism is not None and config.realism.partial_volume
    sigma = blur_sigma_voxels(grid, config.blur_sigma_mm, partial_volume)
    if max(sigma) > 0.3:
        water = ndimage.gaussian_filter(water, sigma, truncate=2.0)
        fat = ndimage.gaussian_filter(fat, sigma, truncate=2.0)
    coil = coil_field(grid, config.coil_field_amplitude, rng)
    water *= coil
    fat *= coil
    return rician(water, config.noise_sd, rng), rician(fat, config.noise_sd, rng)


def blur_sigma_voxels(grid: Grid, blur_sigma_mm: float, partial_volume: bool) -> list[float]:
    """The point-spread's Gaussian SD per (z, y, x) axis in voxels; with ``partial_volume`` (a
    realism item) the voxel's own box SD (``spacing / sqrt(12)``) is added in quadrature."""
    spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    box = [s / math.sqrt(12.0) if partial_volume else 0.0 for s in spacing]
    return [math.hypot(blur_sigma_mm, b) / s for b, s in zip(box, spacing, strict=True)]


def coil_field(grid: Grid, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative coil sensitivity (float32, broadcastable to the grid's shape).

    Separable, so it costs three 1-D evaluations; ``amplitude`` is the standard deviation of its
    log over the three axes together.
    """
    coil = None
    for axis_coords, shape in ((grid.z, (-1, 1, 1)), (grid.y, (1, -1, 1)), (grid.x, (1, 1, -1))):
        w = Waves(rng, 2, (600.0, 1500.0))
        log_sd = amplitude / math.sqrt(3)  # three axes add up to the set SD
        profile = np.exp(log_sd * w(axis_coords, axis_coords * 0, axis_coords * 0))
        profile = profile.reshape(shape).astype(np.float32)
        coil = profile if coil is None else coil * profile
    return coil


def rician(signal: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """The magnitude of ``signal`` plus complex Gaussian noise of SD ``sd`` per channel."""
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sd)
    imag = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sd)
    return np.hypot(real, imag)


def simulate_reference(
    pdff_pct: float, config: PhantomConfig, rng: np.random.Generator
) -> tuple[float, bool]:
    """A dedicated liver-MRI PDFF reading (%): noise, and rarely a spurious outlier; in 0-100 %."""
    value = pdff_pct + rng.normal(
        0, config.reference_noise_sd_pct + config.reference_noise_slope * pdff_pct
    )
    outlier = bool(rng.random() < config.reference_outlier_fraction)
    if outlier:
        value += rng.choice([-1, 1]) * rng.uniform(4, 12)
    # The upper bound only matters for a PDFF near 100 % (the default draw stops at 45 %).
    return round(float(min(max(value, 0.0), 100.0)), 2), outlier


def apply_swap(
    grid: Grid,
    labels: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    rng: np.random.Generator,
    fraction: float,
) -> tuple[bool, int]:
    """With probability ``fraction``, swap water and fat (in place) in one station.

    Half the swaps hit the station holding the liver's median slice, the rest a random station.
    Returns whether a swap happened and the swapped station's index (-1 for none).
    """
    swap = bool(rng.random() < fraction)
    if not swap:
        return False, -1
    stations = _station_slices(grid.shape[0])
    swap_station = liver_station(labels) if rng.random() < 0.5 else int(rng.integers(N_STATIONS))
    s = stations[swap_station]
    water[s], fat[s] = fat[s].copy(), water[s].copy()
    return True, swap_station
