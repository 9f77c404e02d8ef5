"""ROI placement: synthetic livers with known vessels, manual ROIs, and the real CHAOS masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.errors import ImageError
from liverfat.radiomics.rois import (
    Roi,
    RoiSettings,
    load_saved_rois,
    outlier_mask,
    place_rois,
    rois_from_json,
    rois_from_label_map,
    rois_to_json,
    rois_to_label_map,
    save_rois,
)

CHAOS_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20)


def _synthetic_liver(seed: int = 0):
    """A 6-slice elliptic 'liver' (80 x 60 px) with a bright vessel along column 40."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:6, 0:64, 0:96]
    liver = ((x - 48) / 44.0) ** 2 + ((y - 32) / 30.0) ** 2 <= 1
    image = 20 + rng.normal(0, 1.0, liver.shape)
    vessel = liver & (np.abs(x - 40) <= 1)
    image[vessel] = 60.0  # e.g. blood on a water image: > 3 robust SDs from the parenchyma
    reference = sitk.GetImageFromArray(image)
    reference.SetSpacing((1.5, 1.5, 5.0))
    return image, liver, vessel, reference


def _pixels(rois, shape):
    return rois_to_label_map(rois, shape) > 0


def test_rois_inside_eroded_mask_off_vessels_and_apart():
    image, liver, vessel, reference = _synthetic_liver()
    rois = place_rois(image, liver, reference, RoiSettings(n_rois=6, n_right=4, size=12))
    covered = _pixels(rois, liver.shape)
    assert covered.sum() == 6 * 12 * 12  # six squares, no overlap
    assert liver[covered].all()
    assert not vessel[covered].any()
    # at least border_margin (5 mm = 3 px at 1.5 mm) from the liver border
    for z in {r.slice for r in rois}:
        from scipy import ndimage

        depth = ndimage.distance_transform_edt(liver[z])
        assert depth[covered[z]].min() > 3
    assert [r.lobe for r in rois].count("right") == 4
    assert [r.lobe for r in rois].count("left") == 2
    # left lobe = patient left = larger world x = larger column here (identity direction)
    right_cols = [r.column for r in rois if r.lobe == "right"]
    left_cols = [r.column for r in rois if r.lobe == "left"]
    assert min(left_cols) > max(right_cols)


def test_placement_is_deterministic():
    image, liver, _, reference = _synthetic_liver()
    settings = RoiSettings(n_rois=6, size=12)
    assert place_rois(image, liver, reference, settings) == place_rois(
        image.copy(), liver.copy(), reference, settings
    )


def test_lobes_follow_world_orientation():
    """Flipping the x axis of the direction matrix swaps which side is the left lobe."""
    image, liver, _, reference = _synthetic_liver()
    flipped = sitk.GetImageFromArray(image)
    flipped.SetSpacing(reference.GetSpacing())
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    rois = place_rois(image, liver, flipped, RoiSettings(n_rois=6, size=12))
    right_cols = [r.column for r in rois if r.lobe == "right"]
    left_cols = [r.column for r in rois if r.lobe == "left"]
    assert max(left_cols) < min(right_cols)


def test_outlier_mask_uses_robust_spread():
    values = np.array([10.0] * 50 + [11.0] * 50 + [30.0])
    liver = np.ones_like(values, bool)
    # median 10 (or 11), MAD 0.5 -> robust SD 0.74; 30 is an outlier, 10 and 11 are not
    assert outlier_mask(values, liver, 3.0).tolist() == [False] * 100 + [True]


def test_too_small_liver_fails_clearly():
    image, liver, _, reference = _synthetic_liver()
    with pytest.raises(ImageError, match="ROIs fit|square fits"):
        place_rois(image, liver, reference, RoiSettings(n_rois=6, size=40))


def test_manual_rois_round_trip(tmp_path):
    rois = [Roi(1, 10, 12, 8, "manual"), Roi(3, 20, 30, 8, "manual")]
    labels = rois_to_label_map(rois, (6, 64, 96))
    assert rois_from_label_map(labels) == rois
    path = tmp_path / "rois.json"
    path.write_text(rois_to_json(rois), encoding="utf-8")
    assert rois_from_json(path) == rois
    bad = labels.copy()
    bad[1, 10, 12] = 0  # no longer a filled square
    with pytest.raises(ImageError, match="label 1"):
        rois_from_label_map(bad)
    (tmp_path / "broken.json").write_text(json.dumps([{"slice": 1}]), encoding="utf-8")
    with pytest.raises(ImageError, match="broken.json"):
        rois_from_json(tmp_path / "broken.json")


def test_chaos_rois_inside_real_liver_masks(shared_data, tmp_path):
    """Every ROI pixel of every CHAOS T2-SPIR subject lies in the manual liver mask and off
    intensity outliers (our vessel criterion: > 3 robust SDs from the liver median)."""
    folder = shared_data / "chaos_mr_t2spir"
    settings = RoiSettings()
    for number in CHAOS_IDS:
        image = sitk.ReadImage(str(folder / f"image_{number}.nii.gz"))
        array = sitk.GetArrayFromImage(image).astype(float)
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"label_{number}.nii.gz"))) == 1
        rois = place_rois(array, liver, image, settings)
        covered = _pixels(rois, liver.shape)
        assert len(rois) == 6 and covered.sum() == 6 * 16 * 16, number
        assert liver[covered].all(), number
        assert not outlier_mask(array, liver, settings.outlier_mads)[covered].any(), number
        assert [r.lobe for r in rois].count("right") == 4, number
        path = save_rois(rois, tmp_path, f"chaos_{number}", image=array, liver=liver)
        assert load_saved_rois(path) == rois
        assert (tmp_path / f"chaos_{number}_rois.png").stat().st_size > 1000
