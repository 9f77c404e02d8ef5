"""Dixon water/fat arithmetic and the body mask of the UK Biobank liver-fat study.

Fat fraction is in percent (0-100) everywhere in liverfat.

Two-point magnitude Dixon and its ambiguity
-------------------------------------------
From magnitude in-phase (IP = |W + F|) and opposed-phase (OP = |W - F|) images,
``W = (IP + OP) / 2`` and ``F = (IP - OP) / 2`` hold only while water dominates (W > F). Where fat
dominates, ``|W - F| = F - W`` and the same formulas return the two signals swapped: a voxel with
70 % fat reads as 30 %. Magnitude data alone cannot tell the two cases apart, so two-point fat
fractions are confined to 0-50 %. Liver fat in practice stays below 50 %, but subcutaneous and
visceral fat then read as water-dominant. Phase-sensitive reconstructions (UK Biobank's Dixon
water and fat series) do not have this limit.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from liverfat.data.geometry import check_same_geometry

#: Liver fat fractions above this (%) do not occur in practice (UK Biobank's maximum is about
#: 45 %); a liver readout above it almost always means water and fat were swapped in the scan.
SWAP_SUSPECT_PCT = 50.0


def swap_suspicion(liver_ff_pct: float) -> str:
    """The one-line reason a liver fat readout (%) suggests a water-fat swap, or ""."""
    if liver_ff_pct > SWAP_SUSPECT_PCT:
        return (
            f"median liver fat fraction {liver_ff_pct:.1f} % > {SWAP_SUSPECT_PCT:g} %: "
            "probable water-fat swap"
        )
    return ""


#: W + F below this fraction of the 99th percentile of W + F is treated as no signal (FF = 0).
SIGNAL_FLOOR_FRACTION = 1e-3


def fat_fraction(water: np.ndarray, fat: np.ndarray, *, floor: float | None = None) -> np.ndarray:
    """Fat fraction ``100 * F / (W + F)`` in percent, float32, 0 where ``W + F <= floor``.

    Negative inputs are clipped at zero first. ``floor`` defaults to
    :data:`SIGNAL_FLOOR_FRACTION` of the 99th percentile of ``W + F``, so background noise does not
    produce random fractions and nothing divides by zero.
    """
    water = np.clip(np.asarray(water, np.float32), 0, None)
    fat = np.clip(np.asarray(fat, np.float32), 0, None)
    total = water + fat
    if floor is None:
        floor = SIGNAL_FLOOR_FRACTION * float(np.percentile(total, 99)) if total.size else 0.0
    out = np.zeros_like(total)
    signal = total > max(floor, np.finfo(np.float32).tiny)
    np.divide(fat, total, out=out, where=signal)
    return np.clip(out * 100.0, 0.0, 100.0)


def fat_fraction_image(water: sitk.Image, fat: sitk.Image, **kwargs) -> sitk.Image:
    """:func:`fat_fraction` on images of one geometry (checked), keeping that geometry."""
    check_same_geometry(water, fat, names=("water", "fat"))
    ff = fat_fraction(sitk.GetArrayViewFromImage(water), sitk.GetArrayViewFromImage(fat), **kwargs)
    image = sitk.GetImageFromArray(ff)
    image.CopyInformation(water)
    return image


def two_point_dixon(
    in_phase: np.ndarray, opposed_phase: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat from magnitude in-phase / opposed-phase images (module docstring: ambiguity).

    Returns ``(water, fat)`` with ``W = (IP + OP) / 2`` and ``F = (IP - OP) / 2``, both clipped at
    zero (noise can make OP exceed IP), float32.
    """
    ip = np.asarray(in_phase, np.float32)
    op = np.asarray(opposed_phase, np.float32)
    if ip.shape != op.shape:
        raise ValueError(f"in-phase shape {ip.shape} differs from opposed-phase shape {op.shape}")
    water = np.clip((ip + op) / 2, 0, None)
    fat = np.clip((ip - op) / 2, 0, None)
    return water, fat


def two_point_dixon_images(
    in_phase: sitk.Image, opposed_phase: sitk.Image
) -> tuple[sitk.Image, sitk.Image]:
    """:func:`two_point_dixon` on images of one geometry (checked), keeping that geometry."""
    check_same_geometry(in_phase, opposed_phase, names=("in-phase", "opposed-phase"))
    water, fat = two_point_dixon(
        sitk.GetArrayViewFromImage(in_phase), sitk.GetArrayViewFromImage(opposed_phase)
    )
    out = []
    for array in (water, fat):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(in_phase)
        out.append(image)
    return out[0], out[1]


def body_mask_threshold(signal: np.ndarray, *, coronal_axis: int = 1) -> float:
    """Mean of the Otsu thresholds of all coronal slices of ``signal`` (W + F).

    ``coronal_axis`` is the anterior-posterior axis of the (z, y, x) array: a coronal slice holds
    one AP position. Constant slices have no Otsu threshold and are skipped.
    """
    signal = np.asarray(signal, np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    thresholds = []
    for index in range(signal.shape[coronal_axis]):
        plane = np.take(signal, index, axis=coronal_axis)
        if plane.max() <= plane.min():
            continue
        otsu.Execute(sitk.GetImageFromArray(np.ascontiguousarray(plane)))
        thresholds.append(otsu.GetThreshold())
    if not thresholds:
        raise ValueError("cannot compute a body mask: every coronal slice is constant")
    return float(np.mean(thresholds))


def body_mask(water: np.ndarray, fat: np.ndarray, *, coronal_axis: int = 1) -> np.ndarray:
    """Body mask of the UK Biobank liver-fat study: ``W + F`` above :func:`body_mask_threshold`.

    Returns a uint8 array (1 inside the body). Air-filled lungs fall outside it, as in the study.
    """
    total = np.asarray(water, np.float32) + np.asarray(fat, np.float32)
    return (total > body_mask_threshold(total, coronal_axis=coronal_axis)).astype(np.uint8)
