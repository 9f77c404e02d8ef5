"""The review previews: the coronal fat-fraction slice through the liver (or body) centre, and
the volumes a predicted liver mask is drawn on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from liverfat.data.io import write_volume
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.data.preview import coronal_slice, mask_overlay_volumes
from liverfat.errors import ImageError

SHAPE = (12, 10, 8)  # z, y, x
SPACING = (2.0, 2.5, 3.0)  # x, y, z (mm)


def _truth_ff() -> np.ndarray:
    """A fat fraction (%) that differs in every voxel, so a slice can only be one slice."""
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    return 2.0 + 4.0 * y + 0.5 * x + 0.03 * z


def _lps_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((-10.0, 20.0, 300.0))
    return image


def _cohort(tmp_path: Path, *, orientation: str, liver: bool, body_y=(2, 9)) -> Manifest:
    """One subject whose body occupies y in [body_y) and liver y 6-8, stored in ``orientation``."""
    ff = _truth_ff()
    body = np.zeros(SHAPE, bool)
    body[:, body_y[0] : body_y[1], 1:7] = True
    total = np.where(body, 100.0, 0.0).astype(np.float32)
    fat = total * ff / 100.0
    liver_mask = np.zeros(SHAPE, np.uint8)
    liver_mask[3:9, 6:9, 2:6] = 1
    row = {"subject_id": "S1", "split": "A", "liver_pdff_pct": 5.0}
    for column, array in {"water": total - fat, "fat": fat, "liver_mask": liver_mask}.items():
        if column == "liver_mask" and not liver:
            continue
        image = sitk.DICOMOrient(_lps_image(array), orientation)
        write_volume(image, tmp_path / f"{column}.nii.gz")
        row[column] = f"{column}.nii.gz"
    pd.DataFrame([row]).to_csv(tmp_path / "subjects.csv", index=False)
    card = {
        "name": "preview",
        "subjects": "subjects.csv",
        "targets": {"liver_pdff_pct": {"meaning": "liver PDFF", "unit": "%"}},
        "splits": {"A": {"meaning": "all"}},
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return Manifest.load(tmp_path / "manifest.yaml")


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIL"])
def test_slice_through_the_liver_centre_whatever_the_stored_orientation(tmp_path, orientation):
    manifest = _cohort(tmp_path, orientation=orientation, liver=True)
    preview = coronal_slice(manifest, "S1")
    assert preview.centre == "liver" and preview.index == 7  # liver spans y 6-8
    inside = _truth_ff()[:, 7, :][::-1]  # superior row first, patient right (low x) first
    body = np.zeros(SHAPE, bool)
    body[:, 2:9, 1:7] = True
    expected = np.where(body[:, 7, :][::-1], inside, 0.0)
    assert preview.image_pct.shape == (SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(preview.image_pct, expected, atol=1e-4)
    assert preview.pixel_mm == (SPACING[2], SPACING[0])


def test_without_liver_mask_the_slice_goes_through_the_body_centre(tmp_path):
    manifest = _cohort(tmp_path, orientation="RAS", liver=False, body_y=(1, 6))
    preview = coronal_slice(manifest, "S1")
    assert preview.centre == "body" and preview.index == 3  # body spans y 1-5
    assert preview.image_pct[0, 1] == pytest.approx(_truth_ff()[-1, 3, 1], abs=1e-4)


def test_non_dixon_subject_is_a_one_line_error(tmp_path):
    manifest = _cohort(tmp_path, orientation="LPS", liver=True)
    manifest.subjects.loc[0, "water"] = ""
    with pytest.raises(ImageError, match="no water/fat"):
        coronal_slice(manifest, "S1")


def test_phantom_liver_reads_its_known_fat_fraction(tmp_path):
    card = generate_cohort(3, tmp_path / "ph", seed=1, scale="quarter", executor="serial",
                           progress=False)  # fmt: skip
    manifest = Manifest.load(card)
    truth = pd.read_csv(tmp_path / "ph" / "truth" / "truth.csv", dtype={"subject_id": str})
    truth = truth[truth["water_fat_swap"] == 0]
    assert len(truth) == 3 and truth["liver_body_ff_expected_pct"].max() > 10  # 1.6 to 15.5 %
    for _, subject in truth.iterrows():
        sid = subject["subject_id"]
        preview = coronal_slice(manifest, sid)
        liver = sitk.DICOMOrient(manifest.liver_mask(sid), "LPS")
        in_slice = sitk.GetArrayFromImage(liver)[:, preview.index, :][::-1] > 0
        assert in_slice.sum() > 20
        measured = float(np.median(preview.image_pct[in_slice]))
        assert measured == pytest.approx(subject["liver_body_ff_expected_pct"], abs=1.0)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIL"])
def test_overlay_volumes_are_lps_whatever_the_stored_orientation(tmp_path, orientation):
    manifest = _cohort(tmp_path, orientation=orientation, liver=True)
    predicted = np.zeros(SHAPE, np.uint8)
    predicted[4:9, 6:9, 2:5] = 1  # stored LPS; one x column less and one z slice less
    path = write_volume(
        sitk.DICOMOrient(_lps_image(predicted), orientation), tmp_path / "predicted.nii.gz"
    )
    volumes = mask_overlay_volumes(manifest, "S1", path)
    assert volumes.column == "water" and volumes.spacing_mm == (SPACING[2], SPACING[1], SPACING[0])
    np.testing.assert_array_equal(volumes.predicted, predicted > 0)
    reference = np.zeros(SHAPE, bool)
    reference[3:9, 6:9, 2:6] = True
    np.testing.assert_array_equal(volumes.reference, reference)
    water = 100.0 - _truth_ff()  # body voxels hold a total of 100
    assert volumes.image[5, 7, 3] == pytest.approx(water[5, 7, 3], abs=1e-3)
    with pytest.raises(ImageError, match="no fat_fraction image"):
        mask_overlay_volumes(manifest, "S1", path, column="fat_fraction")


def test_overlay_volumes_refuse_a_mask_on_another_grid(tmp_path):
    manifest = _cohort(tmp_path, orientation="LPS", liver=True)
    other = _lps_image(np.ones((12, 10, 7), np.uint8))
    path = write_volume(other, tmp_path / "predicted.nii.gz")
    with pytest.raises(ImageError, match="S1: water and predicted mask differ in geometry: size"):
        mask_overlay_volumes(manifest, "S1", path)
