"""Mask post-processing and readout against constructed truth."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.segmentation.readout import erode_mm, largest_component, read_liver

SPACING = (4.0, 4.0, 6.0)  # x, y, z in mm: a voxel is 0.096 mL


def _image(array: np.ndarray, dtype=np.uint8) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing(SPACING)
    return image


def _cube_with_rim(ff_inside: float, ff_rim: float) -> tuple[sitk.Image, sitk.Image]:
    """A 10 x 14 x 14 voxel liver whose outer voxel layer reads ``ff_rim`` (partial volume)."""
    mask = np.zeros((14, 20, 20), np.uint8)
    mask[2:12, 3:17, 3:17] = 1
    ff = np.where(mask > 0, ff_rim, 0.0)
    ff[3:11, 4:16, 4:16] = ff_inside
    return _image(mask), _image(ff, np.float32)


def test_volume_and_eroded_median_against_construction():
    mask, ff = _cube_with_rim(ff_inside=12.0, ff_rim=40.0)
    readout = read_liver(mask, ff, erosion_mm=5.0, min_volume_ml=10)
    assert readout.liver_volume_ml == pytest.approx(10 * 14 * 14 * 0.096)
    assert readout.mask_voxels == 1960
    # 5 mm erodes one voxel in x and y (4 mm) and none in z (6 mm): 10 x 12 x 12 voxels
    assert readout.eroded_voxels == 10 * 12 * 12
    assert readout.liver_pdff_pct == pytest.approx(12.0)
    assert readout.status == "ok" and readout.message == ""
    # without erosion the rim (1960 - 8*12*12 = 808 voxels of 40 %) pulls the mean up
    whole = read_liver(mask, ff, erosion_mm=0.0, min_volume_ml=10)
    assert whole.mean_ff_pct == pytest.approx((1152 * 12 + 808 * 40) / 1960)


def test_flags_empty_tiny_and_huge_masks():
    empty = read_liver(_image(np.zeros((4, 5, 5))), None)
    assert empty.status == "flagged" and "empty" in empty.message
    mask, ff = _cube_with_rim(5.0, 5.0)
    tiny = read_liver(mask, ff)  # 188 mL < 300 mL
    assert tiny.status == "flagged" and "implausibly small" in tiny.message
    huge = read_liver(mask, ff, min_volume_ml=1, max_volume_ml=100)
    assert huge.status == "flagged" and "implausibly large" in huge.message
    thin = read_liver(mask, ff, erosion_mm=30.0, min_volume_ml=1)  # nothing left after erosion
    assert thin.liver_pdff_pct == pytest.approx(5.0) and "whole mask" in thin.message


def test_a_swapped_scan_flags_the_fat_fraction_not_the_volume():
    mask, ff = _cube_with_rim(ff_inside=96.0, ff_rim=96.0)  # water and fat images swapped
    readout = read_liver(mask, ff, min_volume_ml=10)
    assert readout.status == "flagged" and "probable water-fat swap" in readout.message
    assert readout.volume_status == "ok" and readout.volume_message == ""


def test_largest_component_keeps_the_bigger_blob():
    array = np.zeros((6, 12, 12), np.uint8)
    array[1:5, 1:6, 1:6] = 1  # 100 voxels
    array[1:3, 8:11, 8:11] = 1  # 18 voxels
    kept = sitk.GetArrayFromImage(largest_component(_image(array)))
    assert kept.sum() == 100 and kept[1, 2, 2] == 1 and kept[1, 9, 9] == 0


def test_erosion_follows_spacing():
    mask, _ = _cube_with_rim(1.0, 1.0)
    eroded = sitk.GetArrayFromImage(erode_mm(mask, 8.0))  # 2 voxels in x, y; 1 in z
    assert eroded.sum() == 8 * 10 * 10
