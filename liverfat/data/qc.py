"""Automated scan quality control from the Dixon images alone: water-fat swaps, signal voids,
background noise, and (in :mod:`liverfat.data.qc_geometry`) metal, station seams and positioning.

Every check gives one :class:`QcCheck`: a value, the threshold it is read against, a flag and a
one-line message. The checks work on (z, y, x) numpy arrays with z the superior-inferior axis and
y the anterior-posterior one (:func:`subject_qc` turns the images to LPS axes first):

* ``swap`` (:func:`slab_swap_scores`): a manifest has no station boundaries, so the volume is cut
  along z into slabs of ``slab_mm`` (default :data:`SLAB_MM`, 100 mm: shorter than a UK Biobank
  station of 130-200 mm, so a swapped station fills at least one slab on its own), starting every
  quarter slab (so a swap of part of a station, 75 mm or more, fills one too), and each slab, and
  its left and right halves (a swap of one in-plane half), on images smoothed in-plane by
  :data:`SWAP_SMOOTH_PX` (so that severe noise does not pass for a swap) and without the
  body's lateral sectors (:func:`lateral_sectors`: the arms, often swapped), is scored as
  :func:`~liverfat.data.swaps.station_swap_score` does (core-minus-shell fat fraction, pp,
  about -50 to -90 pp when normal). The value is the highest score; above
  :data:`~liverfat.data.swaps.SWAP_SCORE_THRESHOLD` + :data:`~liverfat.data.swaps.SWAP_SCORE_MARGIN`
  (10 pp) it is flagged, exactly where ingestion calls a station ``swapped``.
* ``void`` (:func:`signal_voids`): regions inside the body's outline (the body mask with its
  in-plane holes filled, slice by slice) where ``W + F`` is below :data:`VOID_SIGNAL_FRACTION` of
  the body's median signal, i.e. no signal at all, as around metal implants. The value is the
  largest connected void (mL); above :data:`VOID_THRESHOLD_ML` (20 mL, a hip-prosthesis void is
  tens to hundreds of mL) it is flagged. Components larger than :data:`VOID_MAX_ML` are taken for
  air-filled lungs and left out; bowel or stomach gas can still reach the threshold, so the flag
  asks for a look, it rejects nothing.
* ``noise`` (:func:`relative_noise`): the noise SD of the background (farther than
  :data:`NOISE_MARGIN_MM` in-plane from the body, exactly-zero padding left out), relative to the
  body's median ``W + F`` signal (%; not the water signal alone, which a swapped station or a fat
  body lowers, flagging noise that is not there). A magnitude image's background is Rayleigh-
  distributed, with maximum-likelihood SD ``sqrt(mean(x^2) / 2)``, here taken over the values up
  to their :data:`NOISE_TRIM_PERCENTILE` th percentile so that ghosts and stray bright voxels
  barely move it (a median absolute deviation moves in whole steps on integer-stored images and
  missed added noise). Above :data:`NOISE_THRESHOLD_PCT` (5 %; the phantom sits near 1 %) it is
  flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from liverfat.data.dixon import body_mask, fat_fraction
from liverfat.data.swaps import (
    MIN_REGION_VOXELS,
    SWAP_SCORE_MARGIN,
    SWAP_SCORE_THRESHOLD,
    edge_depth_mm,
    shell_and_core,
)

#: Default slab height along z (mm) for the swap check.
SLAB_MM = 100.0
#: A slab score (pp) above this is a swap: the ingestion rule's ``swapped`` bound.
SWAP_FLAG_PP = SWAP_SCORE_THRESHOLD + SWAP_SCORE_MARGIN
#: In-plane Gaussian SD (pixels) of the water and fat images the swap check reads. Severe noise
#: (3-8 times the usual) pushes lean tissue's fat fraction up and the body mask into the
#: background, which raised 10 of 25 severely noisy realistic scans above the flag (phantom seed
#: 43); smoothed, their highest scores stay below 1 pp, and swapped slabs still score +25 pp or
#: more.
SWAP_SMOOTH_PX = 1.0
#: ``W + F`` below this fraction of the body's median ``W + F`` counts as no signal.
VOID_SIGNAL_FRACTION = 0.05
#: A void larger than this (mL) is flagged.
VOID_THRESHOLD_ML = 20.0
#: Voids larger than this (mL) are taken for lungs and not counted.
VOID_MAX_ML = 1000.0
#: Background voxels nearer the body than this (mm, in-plane) are left out of the noise estimate.
NOISE_MARGIN_MM = 20.0
#: Background values above this percentile are left out of the noise SD.
NOISE_TRIM_PERCENTILE = 99.0
#: Relative noise (%) above which a scan is flagged.
NOISE_THRESHOLD_PCT = 5.0
#: Fewer background voxels than this and the noise is undefined (NaN).
MIN_BACKGROUND_VOXELS = 100
#: The checks, in the order of the output tables.
CHECKS = ("swap", "void", "noise", "metal", "seam", "position")


@dataclass(frozen=True)
class QcCheck:
    """One check of one subject: ``value`` against ``threshold`` (units in the module docstring;
    NaN when undefined, never flagged), ``flag`` when above it, and a one-line ``message``."""

    check: str
    value: float
    threshold: float
    flag: bool
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def slab_bounds(n_z: int, spacing_z_mm: float, slab_mm: float = SLAB_MM) -> list[tuple[int, int]]:
    """``(start, stop)`` slice indices of consecutive, equal z-slabs as near ``slab_mm`` as the
    volume's height allows (at least one slab; no short remnant at either end)."""
    if slab_mm <= 0 or spacing_z_mm <= 0:
        raise ValueError(f"slab height {slab_mm} mm and z spacing {spacing_z_mm} mm must be > 0")
    n_slabs = int(min(n_z, max(1, round(n_z * spacing_z_mm / slab_mm))))
    edges = np.linspace(0, n_z, n_slabs + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


#: Slabs start every this fraction of a slab's height: a swapped run of at least 75 % of a slab
#: then fills a whole slab somewhere (a partial station swap of 40 % of a 185 mm station is 74 mm).
SLAB_STRIDE_FRACTION = 0.25
#: The parts of each slab scored: all of it, and the patient's left and right halves of the field
#: of view (a swap can cover one in-plane half of a station).
SLAB_PARTS = ("whole", "left", "right")
_FF_BINS = 400  # 0.25 pp histogram bins for the medians


def _hist_median(hist: np.ndarray) -> np.ndarray:
    """Medians (pp) of fat-fraction histograms along the last axis (:data:`_FF_BINS` bins)."""
    cumulative = np.cumsum(hist, axis=-1)
    half = cumulative[..., -1:] / 2.0
    index = np.argmax(cumulative >= half, axis=-1)
    return (index + 0.5) * (100.0 / _FF_BINS)


def lateral_sectors(inside: np.ndarray) -> np.ndarray:
    """The body's left and right sectors, per axial slice: where ``|x - cx| / a > |y - cy| / b``
    about the slice's centroid ``(cx, cy)``, with ``a`` and ``b`` its half-width and half-depth
    (pixels). The arms lie there, swapped in many UK Biobank scans, often touching the trunk."""
    lateral = np.zeros(inside.shape, bool)
    ny, nx = inside.shape[1:]
    y, x = np.arange(ny, dtype=np.float32)[:, None], np.arange(nx, dtype=np.float32)[None, :]
    for k, plane in enumerate(inside):
        ys, xs = np.nonzero(plane)
        if ys.size == 0:
            continue
        cy, cx = ys.mean(), xs.mean()
        a = max(float(np.abs(xs - cx).max()), 1.0)
        b = max(float(np.abs(ys - cy).max()), 1.0)
        lateral[k] = np.abs(x - cx) / a > np.abs(y - cy) / b
    return lateral


def slab_swap_scores(
    water: np.ndarray,
    fat: np.ndarray,
    mask: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    slab_mm: float = SLAB_MM,
) -> list[tuple[int, int, str, float]]:
    """``(start, stop, part, score)`` per z-slab and part: the core-minus-shell fat fraction (pp).

    The score is :func:`~liverfat.data.swaps.station_swap_score`'s (shell and core by in-plane
    depth in the whole body mask) to 0.25 pp, for slabs of ``slab_mm`` starting every
    :data:`SLAB_STRIDE_FRACTION` of it, each as a whole and as its left and right halves
    (:data:`SLAB_PARTS`); NaN where shell or core is too small. ``spacing_mm`` is (x, y, z).
    """
    water = np.asarray(water, np.float32)
    n_z, _, n_x = water.shape
    if not n_z:
        return []
    inside = np.asarray(mask) > 0
    shell, core = shell_and_core(inside, spacing_mm[:2], keep=~lateral_sectors(inside))
    bins = np.minimum(
        (fat_fraction(water, fat) * (_FF_BINS / 100.0)).astype(np.int64), _FF_BINS - 1
    )
    left = np.zeros(water.shape, np.int64)
    left[:, :, n_x // 2 :] = 1  # +x is the patient's left
    z_index = np.broadcast_to(np.arange(n_z)[:, None, None], water.shape)
    hist = np.zeros((2, n_z, 2, _FF_BINS))  # region (shell, core), slice, half (right, left)
    for r, region in enumerate((shell, core)):
        flat = (z_index[region] * 2 + left[region]) * _FF_BINS + bins[region]
        hist[r] = np.bincount(flat, minlength=n_z * 2 * _FF_BINS).reshape(n_z, 2, _FF_BINS)
    cumulative = np.concatenate([np.zeros((2, 1, 2, _FF_BINS)), np.cumsum(hist, axis=1)], axis=1)
    height = min(n_z, max(1, int(round(slab_mm / float(spacing_mm[2])))))
    stride = max(1, int(round(height * SLAB_STRIDE_FRACTION)))
    starts = sorted(set(range(0, n_z - height + 1, stride)) | {n_z - height})
    out = []
    for a in starts:
        b = a + height
        window = cumulative[:, b] - cumulative[:, a]  # (region, half, bins)
        parts = {"whole": window.sum(axis=1), "left": window[:, 1], "right": window[:, 0]}
        for part in SLAB_PARTS:
            h = parts[part]
            if h[0].sum() < MIN_REGION_VOXELS or h[1].sum() < MIN_REGION_VOXELS:
                out.append((a, b, part, float("nan")))
                continue
            medians = _hist_median(h)
            out.append((a, b, part, float(medians[1] - medians[0])))
    return out


def swap_check(
    water: np.ndarray,
    fat: np.ndarray,
    mask: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    slab_mm: float = SLAB_MM,
) -> QcCheck:
    """The ``swap`` check: the highest :func:`slab_swap_scores` score (pp) against
    :data:`SWAP_FLAG_PP`."""
    slabs = slab_swap_scores(water, fat, mask, spacing_mm=spacing_mm, slab_mm=slab_mm)
    finite = [s for s in slabs if np.isfinite(s[3])]
    if not finite:
        return QcCheck("swap", float("nan"), SWAP_FLAG_PP, False, "no slab could be scored")
    a, b, part, score = max(finite, key=lambda s: s[3])
    dz = float(spacing_mm[2])
    half = "" if part == "whole" else f" ({part} half)"
    where = f"slices {a}-{b - 1}{half} ({a * dz:.0f}-{b * dz:.0f} mm from the inferior end)"
    flag = score > SWAP_FLAG_PP
    if flag:
        message = f"water-fat swap in {where}: core-minus-shell fat fraction {score:+.1f} pp"
    else:
        message = f"no swap; highest slab score {score:+.1f} pp in {where}"
    return QcCheck("swap", score, SWAP_FLAG_PP, flag, message)


def smooth_in_plane(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """``image`` (z, y, x) smoothed by an in-plane Gaussian of ``sigma_px`` pixels (float32)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(image, np.float32), (0.0, sigma_px, sigma_px))


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """``mask`` (z, y, x) with each axial slice's enclosed holes filled (bool)."""
    from scipy.ndimage import binary_fill_holes

    mask = np.asarray(mask) > 0
    return np.stack([binary_fill_holes(plane) for plane in mask]) if mask.size else mask


def signal_voids(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, *, spacing_mm: Sequence[float]
) -> list[float]:
    """Volumes (mL, largest first) of the connected no-signal regions inside the body's outline.

    No signal: ``W + F`` below :data:`VOID_SIGNAL_FRACTION` of the median ``W + F`` in ``mask``;
    the outline is ``mask`` with in-plane holes filled. Regions over :data:`VOID_MAX_ML` (lungs)
    are left out. ``spacing_mm`` is (x, y, z).
    """
    from scipy.ndimage import label

    signal = np.asarray(water, np.float32) + np.asarray(fat, np.float32)
    inside = np.asarray(mask) > 0
    if not inside.any():
        return []
    low = fill_holes_in_plane(inside) & (signal < VOID_SIGNAL_FRACTION * np.median(signal[inside]))
    labels, n = label(low)
    if n == 0:
        return []
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    volumes = np.bincount(labels.ravel())[1:] * voxel_ml
    return sorted((float(v) for v in volumes if v <= VOID_MAX_ML), reverse=True)


def void_check(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, *, spacing_mm: Sequence[float]
) -> QcCheck:
    """The ``void`` check: the largest :func:`signal_voids` volume (mL) against
    :data:`VOID_THRESHOLD_ML`."""
    voids = signal_voids(water, fat, mask, spacing_mm=spacing_mm)
    largest = voids[0] if voids else 0.0
    flag = largest > VOID_THRESHOLD_ML
    big = sum(v > VOID_THRESHOLD_ML for v in voids)
    if flag:
        message = f"signal void of {largest:.0f} mL inside the body ({big} over the threshold)"
    else:
        message = f"no signal void; largest {largest:.1f} mL"
    return QcCheck("void", largest, VOID_THRESHOLD_ML, flag, message)


def relative_noise(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, *, spacing_mm: Sequence[float]
) -> float:
    """Background noise relative to the body's median ``W + F`` signal (%), NaN without background.

    The Rayleigh SD ``sqrt(mean(x^2) / 2)`` of the non-zero water values farther than
    :data:`NOISE_MARGIN_MM` in-plane from the body (``mask``), up to their
    :data:`NOISE_TRIM_PERCENTILE` th percentile, divided by the median ``W + F`` inside it.
    """
    water = np.asarray(water, np.float32)
    inside = np.asarray(mask) > 0
    if not inside.any():
        return float("nan")
    distance = edge_depth_mm(~fill_holes_in_plane(inside), spacing_mm[:2])
    background = water[(distance > NOISE_MARGIN_MM) & np.isfinite(distance) & (water != 0)]
    body = float(np.median(water[inside] + np.asarray(fat, np.float32)[inside]))
    if background.size < MIN_BACKGROUND_VOXELS or body <= 0:
        return float("nan")
    background = background[background <= np.percentile(background, NOISE_TRIM_PERCENTILE)]
    sd = float(np.sqrt(np.mean(np.square(background, dtype=np.float64)) / 2))
    return 100.0 * sd / body


def noise_check(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, *, spacing_mm: Sequence[float]
) -> QcCheck:
    """The ``noise`` check: :func:`relative_noise` (%) against :data:`NOISE_THRESHOLD_PCT`."""
    value = relative_noise(water, fat, mask, spacing_mm=spacing_mm)
    if not np.isfinite(value):
        message = "noise undefined: too little non-zero background outside the body"
        return QcCheck("noise", value, NOISE_THRESHOLD_PCT, False, message)
    flag = value > NOISE_THRESHOLD_PCT
    state = "high noise" if flag else "noise ok"
    message = f"{state}: background {value:.2f} % of the body's median water + fat signal"
    return QcCheck("noise", value, NOISE_THRESHOLD_PCT, flag, message)


def array_qc(
    water: np.ndarray,
    fat: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    slab_mm: float = SLAB_MM,
) -> list[QcCheck]:
    """All checks (:data:`CHECKS` order) of (z, y, x) water and fat arrays; spacing (x, y, z) mm."""
    from liverfat.data.qc_geometry import metal_check, position_check, seam_check

    water = np.asarray(water, np.float32)
    fat = np.asarray(fat, np.float32)
    mask = body_mask(water, fat)
    smooth_water, smooth_fat = (smooth_in_plane(a, SWAP_SMOOTH_PX) for a in (water, fat))
    smooth_mask = body_mask(smooth_water, smooth_fat)
    return [
        swap_check(smooth_water, smooth_fat, smooth_mask, spacing_mm=spacing_mm, slab_mm=slab_mm),
        void_check(water, fat, mask, spacing_mm=spacing_mm),
        noise_check(water, fat, mask, spacing_mm=spacing_mm),
        metal_check(water, fat, mask, spacing_mm=spacing_mm),
        seam_check(mask, spacing_mm=spacing_mm),
        position_check(mask, spacing_mm=spacing_mm),
    ]


def coronal_projection(water: np.ndarray) -> np.ndarray:
    """Mean water signal along the anterior-posterior axis: (z, x), superior row first."""
    return np.asarray(water, np.float32).mean(axis=1)[::-1]


def lps_arrays(water: sitk.Image, fat: sitk.Image) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Water and fat as (z, y, x) float32 arrays on LPS axes, and their spacing (x, y, z; mm)."""
    water = sitk.DICOMOrient(water, "LPS")
    fat = sitk.DICOMOrient(fat, "LPS")
    return (
        sitk.GetArrayFromImage(water).astype(np.float32),
        sitk.GetArrayFromImage(fat).astype(np.float32),
        tuple(float(s) for s in water.GetSpacing()),
    )


def subject_qc(manifest, subject_id: str, *, slab_mm: float = SLAB_MM) -> dict:
    """Read one subject (:meth:`~liverfat.data.manifest.Manifest.dixon`) and run every check.

    Returns ``{"subject_id", "checks": [QcCheck as dicts], "spacing_mm", "projection"}`` where
    ``projection`` is :func:`coronal_projection` of the water image (an array) for
    subjects with a flag, else None. Unreadable images raise (one-line errors).
    """
    images = manifest.dixon(subject_id)
    water, fat, spacing = lps_arrays(images.water, images.fat)
    checks = array_qc(water, fat, spacing_mm=spacing, slab_mm=slab_mm)
    flagged = any(c.flag for c in checks)
    return {
        "subject_id": subject_id,
        "checks": [c.as_dict() for c in checks],
        "spacing_mm": list(spacing),
        "projection": coronal_projection(water) if flagged else None,
    }
