"""Phantom realism: what makes the synthetic scans as hard as UK Biobank body MRI.

Off by default (:attr:`PhantomConfig.realism` ``None``), so a cohort written before realism
existed is reproduced byte for byte under its recorded settings. :func:`realistic_config` turns
every item on at its default; each item has an off value (:data:`ITEMS`), so one can be studied
alone. The items:

* **liver fat that varies in space** (``fat_field_sd``, ``fat_segment_sd``): the liver's local
  PDFF is ``PDFF * exp(field + segment offset) / mean``, a smooth random field (wavelengths
  60-160 mm) plus one offset per Couinaud-like segment (eight: left/right lobe, anterior/posterior,
  superior/inferior), normalised so that the whole-liver mean over the scan's liver parenchyma is
  exactly the true PDFF. Being multiplicative, the spread in percentage points grows with the
  mean: the defaults (log-SD 0.12 and 0.08) give a within-liver SD of about 1.4 pp at 10 % PDFF,
  of the order of the segment-to-segment spread reported for steatotic livers (roughly 1-2 pp;
  this value was not checked against a source in this project);
* **the reference as it is measured** (``reference_rois``, ``reference_roi_radius_mm``): the mean
  PDFF of three small circular ROIs (8 mm radius) on one transverse slice of the liver near its
  middle (slice drawn ``N(0, 10 mm)`` around the liver's centre), placed in the parenchyma away
  from the vessels, then the measurement noise and rare outliers of
  :func:`~liverfat.data.phantom.imaging.simulate_reference`. ROIs are sampled in millimetres, not
  voxels, so the reference is the same at every scale;
* **signal-to-noise and partial volume** (``partial_volume``; the preset also sets
  :attr:`PhantomConfig.noise_sd` to 2.0, a liver SNR of about 40): the point-spread adds, in
  quadrature, the SD of a box the size of the voxel (``voxel / sqrt(12)``), so coarse grids blur as
  their voxels average;
* **arms** (``arms``) at the field of view's lateral edges, from the shoulders to the hips, cut by
  the edge in broad subjects, with the artefacts the published study describes
  (``arm_artefacts``): the signal falls off sharply over the last 50 mm of the field of view, and
  in ``arm_swap_fraction`` of the subjects one arm is water-fat swapped;
* **gallbladder and stomach** (``gallbladder``, ``stomach``): bile (no fat, bright water) in the
  gallbladder fossa under the liver, and a stomach under the left lobe, its top filled with gas;
* **station-border deformation** (``seam_deformation_mm``): besides the rigid shift of each
  station, a smooth in-plane displacement peaking at each station border (SD of its translation
  in mm, with a linear stretch and shear of up to 4 %), which bends the liver's outline where it
  crosses a border instead of only shifting it;
* **artefact classes** (``artefact_rates``; :mod:`~liverfat.data.phantom.artefacts`): water-fat
  swap of a station or part of one, metal signal void, severe noise, unusual positioning; at most
  one per scan, 3.6 % in all by default (the share of scans the published study excluded after
  visual inspection), recorded per scan in the truth table (``artefact``, ``artefact_detail``).

Realism draws come from their own streams (:func:`anatomy_stream`, :func:`scan_stream`), so the
legacy streams, and hence the body, the noise and the reference's own noise, are unchanged by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from liverfat.data.phantom.anatomy import LABELS, LiverShape
from liverfat.data.phantom.artefacts import DEFAULT_RATES, checked_rates
from liverfat.data.phantom.grid import Grid, Waves
from liverfat.errors import LiverfatError

if TYPE_CHECKING:
    from liverfat.data.phantom.imaging import PhantomConfig

#: The artefact classes and their default rates (fraction of scans): 3.6 % in all.
DEFAULT_ARTEFACT_RATES = tuple(DEFAULT_RATES.items())
#: Body-MRI noise SD of the realistic preset (signal units; liver proton density 80).
REALISTIC_NOISE_SD = 2.0


@dataclass(frozen=True)
class Realism:
    """The realism items and their settings (module docstring); each has an off value."""

    fat_field_sd: float = 0.12
    fat_segment_sd: float = 0.08
    reference_rois: int = 3
    reference_roi_radius_mm: float = 8.0
    partial_volume: bool = True
    arms: bool = True
    arm_artefacts: bool = True
    arm_swap_fraction: float = 0.3
    gallbladder: bool = True
    stomach: bool = True
    seam_deformation_mm: float = 4.0
    artefact_rates: tuple[tuple[str, float], ...] = DEFAULT_ARTEFACT_RATES

    def __post_init__(self) -> None:
        rates = checked_rates(dict(self.artefact_rates))
        object.__setattr__(self, "artefact_rates", tuple(rates.items()))
        for name in ("fat_field_sd", "fat_segment_sd", "seam_deformation_mm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise LiverfatError(f"realism {name} must be a finite value >= 0")
        if self.reference_rois < 0 or self.reference_roi_radius_mm <= 0:
            raise LiverfatError("reference_rois must be >= 0 and the ROI radius > 0 mm")

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["artefact_rates"] = dict(self.artefact_rates)
        return record


#: Each item's name and the settings that turn it off.
ITEMS: dict[str, dict[str, Any]] = {
    "fat_field": {"fat_field_sd": 0.0},
    "fat_segments": {"fat_segment_sd": 0.0},
    "reference_rois": {"reference_rois": 0},
    "partial_volume": {"partial_volume": False},
    "arms": {"arms": False},
    "arm_artefacts": {"arm_artefacts": False},
    "organs": {"gallbladder": False, "stomach": False},
    "seam_deformation": {"seam_deformation_mm": 0.0},
    "artefacts": {"artefact_rates": ()},
}
#: The one realism item that lives on :class:`PhantomConfig` itself: its noise level.
SNR_ITEM = "snr"


def realistic_config(
    config: PhantomConfig,
    *,
    off: tuple[str, ...] = (),
    artefact_rates: Mapping[str, float] | None = None,
) -> PhantomConfig:
    """``config`` with realism on: every item at its default but those named in ``off``
    (:data:`ITEMS` or ``snr``), the body-MRI noise at :data:`REALISTIC_NOISE_SD` and the legacy
    one-station swap draw off (the artefact classes take its place)."""
    unknown = sorted(set(off) - set(ITEMS) - {SNR_ITEM})
    if unknown:
        choices = ", ".join([*ITEMS, SNR_ITEM])
        raise LiverfatError(f"unknown realism item {', '.join(unknown)}; choose from {choices}")
    realism = Realism()
    if artefact_rates is not None:
        realism = replace(realism, artefact_rates=tuple(artefact_rates.items()))
    for item in off:
        realism = replace(realism, **ITEMS.get(item, {}))
    noise = config.noise_sd if SNR_ITEM in off else REALISTIC_NOISE_SD
    return replace(config, realism=realism, noise_sd=noise, swap_fraction=0.0)


# Streams -------------------------------------------------------------------------------------

_ANATOMY_KEY, _SCAN_KEY, _REFERENCE_KEY = 1001, 1002, 1003


def anatomy_stream(seed: int, index: int, item: int) -> np.random.Generator:
    """Draws of the body that every visit shares (organs, the liver's fat pattern), one stream
    per ``item`` so that turning one item off changes no other."""
    return np.random.default_rng([seed, index, _ANATOMY_KEY, item])


def scan_stream(seed: int, index: int, visit: int, item: int) -> np.random.Generator:
    """Draws of one scan (arm swaps, seam deformation, the artefact), one stream per ``item``."""
    return np.random.default_rng([seed, index, visit, _SCAN_KEY, item])


def reference_stream(seed: int, index: int, visit: int) -> np.random.Generator:
    """Draws of one reference measurement: its slice and ROI positions."""
    return np.random.default_rng([seed, index, visit, _REFERENCE_KEY])


# Liver fat that varies in space --------------------------------------------------------------


@dataclass(frozen=True)
class FatPattern:
    """The liver's log fat-fraction pattern: a smooth field and per-segment offsets."""

    field: Waves
    field_sd: float
    segment_offsets: np.ndarray  # (8,) log units

    @classmethod
    def draw(cls, realism: Realism, rng: np.random.Generator) -> FatPattern:
        field = Waves(rng, 8, (60.0, 160.0))
        offsets = rng.standard_normal(8) * realism.fat_segment_sd
        return cls(field, realism.fat_field_sd, offsets - offsets.mean())

    def log_value(self, liver: LiverShape, z, y, x) -> np.ndarray:
        """Log relative fat fraction at anatomical points (mm, broadcastable arrays)."""
        value = self.segment_offsets[liver.segment(z, y, x)]
        if self.field_sd > 0:
            value = value + self.field_sd * self.field(z, y, x)
        return np.asarray(value, np.float64)


def liver_fat_map(
    grid: Grid,
    labels: np.ndarray,
    liver: LiverShape,
    pattern: FatPattern,
    pdff_pct: float,
    *,
    shift_z_mm: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The local PDFF (%) of each liver-parenchyma voxel of the scan: ``(indices, values,
    log_mean)``, with ``indices`` the flat voxel indices and ``values`` averaging to ``pdff_pct``.

    ``shift_z_mm`` is how far the body was moved head-feet since it was painted (a repeat
    visit), so the pattern stays with the anatomy. ``log_mean`` is the log of the normaliser,
    for :func:`roi_reference` to read the same pattern.
    """
    flat = np.flatnonzero(labels.ravel() == LABELS["liver"])
    iz, iy, ix = np.unravel_index(flat, labels.shape)
    relative = np.exp(pattern.log_value(liver, grid.z[iz] - shift_z_mm, grid.y[iy], grid.x[ix]))
    mean = float(relative.mean()) if relative.size else 1.0
    values = np.clip(pdff_pct * relative / mean, 0.0, 100.0)
    return flat, values.astype(np.float32), math.log(mean)


def roi_reference(
    liver: LiverShape,
    pattern: FatPattern | None,
    pdff_pct: float,
    log_mean: float,
    realism: Realism,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """The mean PDFF (%) of :attr:`Realism.reference_rois` ROIs on one transverse slice, and the
    slice's height (mm, anatomical), before measurement noise; without a ``pattern`` the liver is
    uniform and every ROI reads ``pdff_pct``.

    The slice is drawn ``N(0, 10 mm)`` about the liver's centre; ROI centres are drawn among
    points of that slice at least ``radius + 3 mm`` inside the parenchyma and from every vessel,
    at least two radii apart (fewer if the slice has no room).
    """
    radius = realism.reference_roi_radius_mm
    z = float(liver.centre[2] + rng.normal(0, 10.0))
    if pattern is None:
        return pdff_pct, z
    xs = np.arange(-180.0, 181.0, 2.0) + liver.centre[0]
    ys = np.arange(-150.0, 151.0, 2.0) + liver.centre[1]
    x, y = (a.ravel().astype(np.float32) for a in np.meshgrid(xs, ys))
    zz = np.full_like(x, z)
    ok = liver.clear(zz, y, x, radius + 3.0)
    candidates = np.flatnonzero(ok)
    rng.shuffle(candidates)
    centres: list[tuple[float, float]] = []
    for c in candidates:
        if all(math.hypot(x[c] - cx, y[c] - cy) >= 2 * radius for cx, cy in centres):
            centres.append((float(x[c]), float(y[c])))
        if len(centres) == realism.reference_rois:
            break
    if not centres:  # a slice with no room: the liver's centre
        centres = [(float(liver.centre[0]), float(liver.centre[1]))]
    offsets = np.arange(-radius, radius + 0.5, 1.0)
    dx, dy = (a.ravel() for a in np.meshgrid(offsets, offsets))
    disc = dx**2 + dy**2 <= radius**2
    dx, dy = dx[disc].astype(np.float32), dy[disc].astype(np.float32)
    means = []
    for cx, cy in centres:
        px, py = cx + dx, cy + dy
        log = pattern.log_value(liver, np.full_like(px, z), py, px)
        means.append(float(np.mean(pdff_pct * np.exp(log - log_mean))))
    return float(np.mean(means)), z


# Station-border deformation ------------------------------------------------------------------


def deform_seams(
    grid: Grid, labels: np.ndarray, stations: list[slice], sd_mm: float, rng: np.random.Generator
) -> list[list[float]]:
    """Bend the label map (in place) about each station border: a smooth in-plane displacement
    ``bump(z) * (t + A @ (x, y))`` with ``t ~ N(0, sd_mm)`` and ``A`` a stretch/shear of up to
    4 %, ``bump`` a Gaussian of 20 mm SD centred on the border; nearest-neighbour resampling.
    Returns each border's translation (mm, x and y)."""
    record = []
    width_mm = 20.0
    for station in stations[1:]:
        border_mm = float(grid.z[station.start]) - grid.spacing[2] / 2
        t = rng.normal(0, sd_mm, size=2)
        a = rng.uniform(-0.04, 0.04, size=(2, 2))
        record.append([round(float(t[0]), 3), round(float(t[1]), 3)])
        band = grid.index_range("z", border_mm - 2.5 * width_mm, border_mm + 2.5 * width_mm)
        bump = np.exp(-0.5 * ((grid.z[band] - border_mm) / width_mm) ** 2)[:, None, None]
        y = grid.y[None, :, None]
        x = grid.x[None, None, :]
        dx = bump * (t[0] + a[0, 0] * x + a[0, 1] * y)
        dy = bump * (t[1] + a[1, 0] * x + a[1, 1] * y)
        nz, ny, nx = labels[band].shape
        iz, iy, ix = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        coords = [
            iz.astype(np.float32),
            iy - np.broadcast_to(dy, iy.shape) / grid.spacing[1],
            ix - np.broadcast_to(dx, ix.shape) / grid.spacing[0],
        ]
        labels[band] = ndimage.map_coordinates(labels[band], coords, order=0, mode="nearest")
    return record


# Arm artefacts -------------------------------------------------------------------------------

#: Width (mm) of the band at each lateral edge of the field of view where the signal falls off.
EDGE_FALLOFF_MM = 50.0


def arm_artefacts(
    grid: Grid,
    labels: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    swap_fraction: float,
    rng: np.random.Generator,
) -> list[str]:
    """The arms' artefacts, in place: the signal falls to a fifth over the outer
    :data:`EDGE_FALLOFF_MM` of each lateral edge, and with probability ``swap_fraction`` one arm
    (its whole length in the field of view) is water-fat swapped. Returns the swapped sides."""
    half_width = float(grid.x[-1])
    depth = np.clip((np.abs(grid.x) - (half_width - EDGE_FALLOFF_MM)) / EDGE_FALLOFF_MM, 0, 1)
    falloff = (1.0 - 0.8 * depth**2).astype(np.float32)[None, None, :]
    water *= falloff
    fat *= falloff
    swapped = []
    if rng.random() < swap_fraction:
        side = "left" if rng.random() < 0.5 else "right"
        arm = np.isin(labels, (LABELS["arm_fat"], LABELS["arm_muscle"]))
        arm &= (grid.x > 0)[None, None, :] if side == "left" else (grid.x < 0)[None, None, :]
        arm = ndimage.binary_dilation(arm, iterations=1)
        water[arm], fat[arm] = fat[arm], water[arm].copy()
        swapped.append(side)
    return swapped
