"""Label fusion, erosion and the median fat-fraction readout.

The UK Biobank liver-fat study multiplies the warped template masks (intersection), erodes the
product with a spherical kernel of 7 voxels diameter, and takes the median fat fraction of what
remains. Majority vote, STAPLE (SimpleITK's ``STAPLEImageFilter``), a locally weighted vote and
joint label fusion are options. The weighted vote (Artaechevarria et al., IEEE TMI 2009): each
warped template votes at each voxel with a weight that grows with its local similarity to the
target, so a template that fits one part of the liver and not another is trusted only where it
fits. Joint label fusion (Wang et al., IEEE TMI 2013) also weighs the templates' correlated
errors: two templates that err the same way share one vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from liverfat.data.dixon import swap_suspicion
from liverfat.errors import LiverfatError

FUSIONS = ("intersection", "majority", "staple", "weighted", "jlf")
#: Fusions that need the warped template images beside their masks.
IMAGE_FUSIONS = ("weighted", "jlf")
#: The weighted vote's local window (Gaussian sigma, mm) and the power of its weights.
WEIGHTED_SIGMA_MM = 6.0
WEIGHTED_POWER = 4.0
#: Joint label fusion's ridge (added to the error matrix's diagonal) and the power of its
#: entries: the defaults of ANTs' antsJointFusion (alpha 0.1, beta 2).
JLF_ALPHA = 0.1
JLF_BETA = 2.0


def fuse(
    masks: Sequence[sitk.Image],
    method: str = "intersection",
    *,
    target: sitk.Image | None = None,
    warped: Sequence[sitk.Image] | None = None,
) -> sitk.Image:
    """Fuse binary masks on one grid into one uint8 mask.

    ``intersection``: voxels inside every mask (the product); ``majority``: inside more than
    half; ``staple``: STAPLE probability >= 0.5; ``weighted``: the locally weighted vote >= 0.5
    (:func:`local_weights`); ``jlf``: joint label fusion's vote >= 0.5 (:func:`joint_weights`).
    The last two need the ``target`` image and each template's ``warped`` image, all on the
    masks' grid.
    """
    if method not in FUSIONS:
        raise LiverfatError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")
    if not masks:
        raise LiverfatError("no masks to fuse")
    arrays = np.stack([sitk.GetArrayFromImage(m) > 0 for m in masks])
    if method == "intersection":
        fused = arrays.all(axis=0)
    elif method == "majority":
        fused = arrays.sum(axis=0) * 2 > len(masks)
    elif method in IMAGE_FUSIONS:
        if target is None or warped is None or len(warped) != len(masks):
            raise LiverfatError(f"{method} fusion needs the target and every warped template image")
        fused = _weighted_vote(arrays, target, warped, method)
    else:
        staple = sitk.STAPLEImageFilter()
        staple.SetForegroundValue(1)
        probability = staple.Execute([sitk.Cast(m > 0, sitk.sitkUInt8) for m in masks])
        fused = sitk.GetArrayFromImage(probability) >= 0.5
    out = sitk.GetImageFromArray(fused.astype(np.uint8))
    out.CopyInformation(masks[0])
    return out


def _weighted_vote(
    arrays: np.ndarray, target: sitk.Image, warped: Sequence[sitk.Image], method: str
) -> np.ndarray:
    """The ``weighted`` or ``jlf`` vote >= 0.5, computed only in the box of the masks' union
    grown by three window sigmas (outside it no template votes, and the box holds every window
    that matters)."""
    fused = np.zeros(arrays.shape[1:], bool)
    union = arrays.any(axis=0)
    if not union.any():
        return fused
    from liverfat.atlas.torch_registration import bounding_box

    grow = tuple(int(np.ceil(3 * WEIGHTED_SIGMA_MM / s)) for s in reversed(target.GetSpacing()))
    box = [slice(lo, hi) for lo, hi in bounding_box(union, grow)]
    index = [int(b.start) for b in reversed(box)]
    size = [int(b.stop - b.start) for b in reversed(box)]
    votes = arrays[(slice(None), *box)]
    target_box = sitk.RegionOfInterest(target, size, index)
    warped_box = [sitk.RegionOfInterest(w, size, index) for w in warped]
    if method == "weighted":
        weights = local_weights(target_box, warped_box)
    else:  # solved only where the templates disagree: elsewhere any weights give the same vote
        weights = joint_weights(target_box, warped_box, at=votes.any(axis=0) & ~votes.all(axis=0))
    fused[tuple(box)] = (weights * votes).sum(axis=0) >= 0.5
    return fused


def local_weights(
    target: sitk.Image,
    warped: Sequence[sitk.Image],
    *,
    sigma_mm: float = WEIGHTED_SIGMA_MM,
    power: float = WEIGHTED_POWER,
) -> np.ndarray:
    """Per-voxel vote weights (templates, z, y, x), summing to 1 at each voxel.

    Each template's weight is its local normalised cross-correlation with the target in a
    Gaussian window of ``sigma_mm``, clipped at 0 and raised to ``power`` (a larger power trusts
    the locally best template more); where no template correlates, every template weighs the
    same (the majority vote).
    """
    smooth = _window(target, sigma_mm)
    t, t_mean, t_var = _local_moments(target, smooth)
    scores = []
    for image in warped:
        w, w_mean, w_var = _local_moments(image, smooth)
        covariance = smooth(t * w) - t_mean * w_mean
        ncc = covariance / np.sqrt(t_var * w_var + 1e-6)
        scores.append(np.clip(ncc, 0.0, 1.0) ** power)
    scores = np.stack(scores)
    total = scores.sum(axis=0)
    uniform = np.full_like(scores, 1.0 / len(warped))
    return np.where(total > 1e-6, scores / np.maximum(total, 1e-6), uniform)


def joint_weights(
    target: sitk.Image,
    warped: Sequence[sitk.Image],
    *,
    sigma_mm: float = WEIGHTED_SIGMA_MM,
    alpha: float = JLF_ALPHA,
    beta: float = JLF_BETA,
    at: np.ndarray | None = None,
) -> np.ndarray:
    """Joint label fusion's per-voxel weights (templates, z, y, x), summing to 1 at each voxel.

    Every image is first normalised locally (Gaussian window of ``sigma_mm``: minus its local
    mean, over its local SD), so templates scanned with another gain compare by their pattern.
    With ``d_i`` the absolute difference of template ``i`` from the target, the expected joint
    error of templates ``i`` and ``j`` is ``M_ij = (window mean of d_i d_j) ** beta``; the
    weights minimise ``w' (M + alpha I) w`` subject to summing to 1:
    ``w = (M + alpha I)^-1 1 / (1' (M + alpha I)^-1 1)`` (Wang et al. 2013, without their patch
    search: the registration has placed the templates). Weights may be negative. ``at`` (bool,
    z y x): solve only there and give every template ``1 / k`` elsewhere.
    """
    smooth = _window(target, sigma_mm)

    def normalised(image: sitk.Image) -> np.ndarray:
        a, mean, var = _local_moments(image, smooth)
        # a floor on the SD (relative to the image's range) keeps flat regions, such as the
        # air outside the body, from turning noise into large errors
        return (a - mean) / (np.sqrt(var) + 1e-3 * (float(np.abs(a).max()) + 1e-6))

    t = normalised(target)
    errors = np.stack([np.abs(normalised(w) - t) for w in warped])
    k = len(warped)
    at = np.ones(t.shape, bool) if at is None else np.asarray(at, bool)
    joint = np.empty((int(at.sum()), k, k), np.float64)
    for i in range(k):
        for j in range(i, k):
            joint[:, i, j] = joint[:, j, i] = smooth(errors[i] * errors[j])[at] ** beta
    joint += alpha * np.eye(k)
    solved = np.linalg.solve(joint, np.ones((len(joint), k, 1)))[..., 0]
    weights = np.full((k, *t.shape), 1.0 / k, np.float32)
    weights[:, at] = (solved / solved.sum(axis=-1, keepdims=True)).T
    return weights


def _local_moments(image: sitk.Image, smooth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image's array (float32) with its windowed mean and variance (``smooth``'s window)."""
    a = sitk.GetArrayFromImage(image).astype(np.float32)
    mean = smooth(a)
    return a, mean, np.maximum(smooth(a * a) - mean**2, 0.0)


def _window(image: sitk.Image, sigma_mm: float):
    """A Gaussian smoothing (sigma in mm) on ``image``'s (z, y, x) array grid."""
    from scipy import ndimage

    sigma = [sigma_mm / s for s in reversed(image.GetSpacing())]

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="nearest")

    return smooth


def median_pairwise_dice(masks: Sequence[sitk.Image]) -> float | None:
    """Agreement of the warped templates: their median Dice over pairs (None for one mask).

    The median, not the mean: one template registered astray (Dice about 0.2 with the others,
    which a majority outvotes) drags a mean over 10 pairs below the flag's threshold, while
    a target where the registrations go different ways keeps a low median (CHAOS: docs/atlas.md).
    """
    from liverfat.evaluation.segmentation import dice

    arrays = [sitk.GetArrayViewFromImage(m) > 0 for m in masks]
    dices = [dice(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :]]
    return float(np.median(dices)) if dices else None


def ball(radius_voxels: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element (z, y, x) with the given radii in voxels (x, y, z)."""
    rx, ry, rz = (max(float(r), 0.0) for r in radius_voxels)
    half = [int(np.floor(r)) for r in (rz, ry, rx)]
    z, y, x = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]

    def term(d, r):
        return (d / r) ** 2 if r > 0 else np.where(d == 0, 0.0, np.inf)

    return (term(z, rz) + term(y, ry) + term(x, rx)) <= 1.0


def erosion_radius_voxels(
    spacing_mm: Sequence[float],
    *,
    diameter_voxels: float | None = 7,
    diameter_mm: float | None = None,
) -> tuple[float, float, float]:
    """Radius (voxels, x y z) of the erosion ball.

    ``diameter_voxels`` gives the same radius on every axis (the study's 7-voxel ball);
    ``diameter_mm`` (which wins when given) a sphere in physical space, so fewer voxels along a
    coarsely sampled axis.
    """
    if diameter_mm is not None:
        return tuple(diameter_mm / 2.0 / float(s) for s in spacing_mm)
    if diameter_voxels is None:
        return (0.0, 0.0, 0.0)
    return (diameter_voxels / 2.0,) * 3


def erode(
    mask: sitk.Image, *, diameter_voxels: float | None = 7, diameter_mm: float | None = None
) -> sitk.Image:
    """Binary erosion of ``mask`` by a ball (see :func:`erosion_radius_voxels`)."""
    from scipy import ndimage

    radius = erosion_radius_voxels(
        mask.GetSpacing(), diameter_voxels=diameter_voxels, diameter_mm=diameter_mm
    )
    array = sitk.GetArrayFromImage(mask) > 0
    if max(radius) < 1:
        eroded = array
    else:
        eroded = ndimage.binary_erosion(array, structure=ball(radius), border_value=0)
    out = sitk.GetImageFromArray(eroded.astype(np.uint8))
    out.CopyInformation(mask)
    return out


@dataclass(frozen=True)
class Readout:
    """Median fat fraction (%) in the eroded fused mask, with status and reason."""

    value: float | None
    status: str
    message: str
    fused_voxels: int
    eroded_voxels: int


def median_readout(
    fat_fraction: sitk.Image,
    fused: sitk.Image,
    eroded: sitk.Image,
    *,
    min_voxels: int = 20,
    fallback: sitk.Image | None = None,
) -> Readout:
    """Median of ``fat_fraction`` (%) inside ``eroded``; a probable water-fat swap
    (:func:`liverfat.data.dixon.swap_suspicion`), flagged.

    Fewer than ``min_voxels`` eroded voxels: the median over the un-eroded ``fused`` mask,
    ``flagged``; ``fused`` empty too: the median over ``fallback`` (e.g. the union of warped
    masks), ``flagged``; nothing at all: ``failed``.
    """
    ff = sitk.GetArrayFromImage(fat_fraction)
    fused_a = sitk.GetArrayFromImage(fused) > 0
    eroded_a = sitk.GetArrayFromImage(eroded) > 0
    n_fused, n_eroded = int(fused_a.sum()), int(eroded_a.sum())
    if n_eroded >= min_voxels:
        value = float(np.median(ff[eroded_a]))
        message = swap_suspicion(value)
        if message:
            return Readout(value, "flagged", message, n_fused, n_eroded)
        return Readout(value, "ok", "", n_fused, n_eroded)
    if n_fused > 0:
        return Readout(
            float(np.median(ff[fused_a])),
            "flagged",
            f"eroded liver mask has {n_eroded} voxels (< {min_voxels}); median over the "
            f"un-eroded fused mask of {n_fused} voxels",
            n_fused,
            n_eroded,
        )
    if fallback is not None and np.any(sitk.GetArrayFromImage(fallback)):
        union = sitk.GetArrayFromImage(fallback) > 0
        return Readout(
            float(np.median(ff[union])),
            "flagged",
            "fused liver mask is empty; median over the union of warped masks "
            f"({union.sum()} voxels)",
            0,
            0,
        )
    return Readout(None, "failed", "every warped liver mask is empty", 0, 0)
