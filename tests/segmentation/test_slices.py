"""Volumes to network slices and back: geometry kept, masks round-trip, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.evaluation.segmentation import dice
from liverfat.segmentation.slices import (
    context_indices,
    normalise,
    padded_size,
    prepare_mask,
    prepare_volume,
)


def _volume(shape_zyx=(6, 40, 50), spacing=(2.0, 3.0, 5.0)) -> tuple[sitk.Image, sitk.Image]:
    """A ramp image and an ellipse mask with a non-trivial origin and direction."""
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    image = sitk.GetImageFromArray((x + 2 * y + 3 * z).astype(np.float32))
    inside = ((x - 24) / 14.0) ** 2 + ((y - 19) / 10.0) ** 2 <= 1
    mask = sitk.GetImageFromArray((inside & (z > 0) & (z < 5)).astype(np.uint8))
    for im in (image, mask):
        im.SetSpacing(spacing)
        im.SetOrigin((-100.0, 20.0, 300.0))
        im.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image, mask


# x spacing 2 mm, y 3 mm: resampled to 1.5 x 2 mm the 50 x 40 px slice is 67 x 60 px
@pytest.mark.parametrize(
    "size, window",
    [
        ((64, 80), (slice(None), slice(None))),  # padded: everything comes back
        ((32, 48), (slice(12, 28), slice(10, 40))),  # cropped to 64 x 72 mm around the centre
    ],
)
def test_mask_comes_back_on_the_subject_grid(size, window):
    image, mask = _volume()
    prepared = prepare_volume([image], pixel_spacing_mm=(1.5, 2.0), slice_size=size)
    assert prepared.slices.shape == (6, 1, *size)
    assert prepared.resampled_size == (67, 60)
    labels = prepare_mask(mask, prepared)
    back = prepared.to_subject_grid(labels.astype(np.float32))
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(back, attribute)() == pytest.approx(getattr(image, attribute)())
    original = sitk.GetArrayFromImage(mask)[(slice(None), *window)]
    restored = sitk.GetArrayFromImage(back) >= 0.5
    assert dice(original, restored[(slice(None), *window)]) > 0.97
    if size == (32, 48):  # outside the kept 64 mm (y) x 72 mm (x) window nothing comes back
        assert not restored[:, :8].any() and not restored[:, 32:].any()
        assert restored[:, 12:28, 10:40].any()


def test_normalise_matches_numpy_percentiles():
    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 50.0, size=(4, 10, 12)).astype(np.float32)
    low, high = np.percentile(volume, [0.5, 99.5])
    expected = np.clip((volume - low) / (high - low), 0, 1)
    np.testing.assert_allclose(normalise(volume, "volume"), expected, rtol=1e-5, atol=1e-6)
    per_slice = normalise(volume, "slice")
    for k in range(4):
        lo, hi = np.percentile(volume[k], [0.5, 99.5])
        np.testing.assert_allclose(per_slice[k], np.clip((volume[k] - lo) / (hi - lo), 0, 1), 1e-5)
    np.testing.assert_array_equal(normalise(volume, "none"), volume)


def test_context_repeats_edges_and_sizes_are_multiples_of_16():
    np.testing.assert_array_equal(
        context_indices(4, 1), [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    )
    assert [padded_size(n) for n in (1, 16, 17, 87, 112)] == [16, 16, 32, 96, 112]


def test_nan_voxels_fail_with_the_subject_named():
    image, _ = _volume()
    array = sitk.GetArrayFromImage(image)
    array[2, 5, 5] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    with pytest.raises(Exception, match="subject S7: channel 0 has NaN"):
        prepare_volume([bad], pixel_spacing_mm=(3, 3), slice_size=(16, 32), subject_id="S7")
