"""Dixon arithmetic and the body mask."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.dixon import (
    body_mask,
    body_mask_threshold,
    fat_fraction,
    fat_fraction_image,
    two_point_dixon,
)
from liverfat.data.phantom import LABELS, PhantomConfig, build_subject
from liverfat.errors import GeometryError


def test_fat_fraction_formula_and_zero_signal() -> None:
    rng = np.random.default_rng(0)
    water = rng.uniform(1, 100, size=(4, 5, 6))
    fat = rng.uniform(0, 100, size=(4, 5, 6))
    water[0, 0, 0] = fat[0, 0, 0] = 0.0  # no signal: 0, not NaN
    expected = 100 * fat / np.where(water + fat > 0, water + fat, 1)
    ff = fat_fraction(water, fat, floor=0.0)
    assert np.allclose(ff, expected, atol=1e-4)
    assert ff[0, 0, 0] == 0 and np.isfinite(ff).all()
    assert ff.dtype == np.float32 and ff.min() >= 0 and ff.max() <= 100


def test_fat_fraction_negative_inputs_clipped() -> None:
    ff = fat_fraction(np.array([10.0, -5.0, 50.0]), np.array([-3.0, 10.0, 50.0]), floor=0.0)
    assert np.allclose(ff, [0.0, 100.0, 50.0])


def test_two_point_dixon_recovers_water_dominant_and_swaps_fat_dominant() -> None:
    water = np.array([80.0, 60.0, 30.0])
    fat = np.array([5.0, 40.0, 70.0])
    in_phase = water + fat
    opposed = np.abs(water - fat)
    w, f = two_point_dixon(in_phase, opposed)
    assert np.allclose(w[:2], water[:2]) and np.allclose(f[:2], fat[:2])
    # Fat-dominant voxel: magnitude data cannot tell, the signals come back swapped (docstring).
    assert w[2] == pytest.approx(70.0) and f[2] == pytest.approx(30.0)
    # Noise can make OP exceed IP: fat is clipped at zero, never negative.
    w, f = two_point_dixon(np.array([10.0]), np.array([12.0]))
    assert f[0] == 0.0 and w[0] == pytest.approx(11.0)


def test_fat_fraction_image_checks_geometry() -> None:
    a = sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))
    b = sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))
    b.SetSpacing((1.0, 1.0, 2.0))
    with pytest.raises(GeometryError, match="water and fat differ in geometry: spacing"):
        fat_fraction_image(a, b)
    a.SetSpacing((2.0, 2.0, 3.0))
    b.SetSpacing((2.0, 2.0, 3.0))
    image = fat_fraction_image(a, b)
    assert image.GetSpacing() == (2.0, 2.0, 3.0)
    assert np.allclose(sitk.GetArrayViewFromImage(image), 50.0)


def test_body_mask_threshold_is_mean_of_coronal_otsu() -> None:
    rng = np.random.default_rng(1)
    signal = rng.uniform(0, 5, size=(12, 6, 10)).astype(np.float32)
    signal[:, :, 3:7] += 100
    thresholds = []
    for j in range(signal.shape[1]):
        f = sitk.OtsuThresholdImageFilter()
        f.Execute(sitk.GetImageFromArray(np.ascontiguousarray(signal[:, j, :])))
        thresholds.append(f.GetThreshold())
    assert body_mask_threshold(signal) == pytest.approx(np.mean(thresholds))
    # Independent check: a two-class histogram's Otsu threshold lies between the classes.
    assert 5 < body_mask_threshold(signal) < 100


def test_body_mask_matches_phantom_body() -> None:
    arrays, _ = build_subject(2, 5, "quarter", PhantomConfig(), "A")
    mask = body_mask(arrays["water"], arrays["fat"]).astype(bool)
    labels = arrays["labels"]
    body = (labels > 0) & (
        labels != LABELS["lung"]
    )  # air-filled lungs are outside, as in the study
    dice = 2 * (mask & body).sum() / (mask.sum() + body.sum())
    assert dice > 0.97
