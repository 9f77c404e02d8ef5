"""ROI files on the data floor: both JSON forms, label maps, the manifest's ``rois`` column, and
the windows cut out around each ROI (against pixels placed by hand)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.io import write_volume
from liverfat.data.manifest import Manifest
from liverfat.data.rois import (
    Roi,
    load_saved_rois,
    roi_windows,
    rois_from_json,
    rois_from_label_map,
    rois_to_json,
    rois_to_label_map,
    subject_rois_from_manifest,
)
from liverfat.errors import ImageError
from tests.conftest import write_pdff_manifest

SHAPE = (3, 20, 24)  # (z, y, x)
ROIS = [Roi(1, 5, 6, 4, "right"), Roi(2, 0, 0, 4, "left"), Roi(0, 16, 20, 4)]


def _images():
    """Fat fraction, water and fat whose every voxel value names its position and channel."""
    z, y, x = np.indices(SHAPE)
    code = (z * 10000 + y * 100 + x).astype(np.float32)
    return {"fat_fraction": code, "water": code + 0.25, "fat": code + 0.5}


@pytest.fixture
def manifest(tmp_path) -> Manifest:
    """Two subjects: S1 with a JSON list of :data:`ROIS`, S2 with them as a label map."""
    for name, array in _images().items():
        write_volume(sitk.GetImageFromArray(array), tmp_path / f"{name}.nii.gz")
    (tmp_path / "s1_rois.json").write_text(rois_to_json(ROIS), encoding="utf-8")
    labels = sitk.GetImageFromArray(rois_to_label_map(ROIS, SHAPE))
    write_volume(labels, tmp_path / "s2_rois.nii.gz")
    images = {n: f"{n}.nii.gz" for n in ("water", "fat", "fat_fraction")}
    rows = [
        {"subject_id": "S1", **images, "rois": "s1_rois.json", "split": "A"},
        {"subject_id": "S2", **images, "rois": "s2_rois.nii.gz", "split": "A"},
        {"subject_id": "S3", **images, "rois": "", "split": "A"},
    ]
    return write_pdff_manifest(tmp_path, rows, "roi test")


def test_json_round_trip_in_both_forms(tmp_path):
    listed = tmp_path / "listed.json"
    listed.write_text(rois_to_json(ROIS), encoding="utf-8")
    assert rois_from_json(listed) == ROIS
    saved = tmp_path / "P1_rois.json"  # what ``radiomics rois --out`` writes
    payload = {"subject_id": "P1", "rois": [asdict(r) for r in ROIS], "channel_shown": "ff"}
    saved.write_text(json.dumps(payload), encoding="utf-8")
    assert rois_from_json(saved) == ROIS == load_saved_rois(saved)
    bare = tmp_path / "bare.json"  # no lobe: manual
    bare.write_text(json.dumps([{"slice": 0, "row": 1, "column": 2, "size": 3}]), "utf-8")
    assert rois_from_json(bare) == [Roi(0, 1, 2, 3, "manual")]
    for text in ('{"rois": [{"slice": 1}]}', '{"subject_id": "P1"}', '"rois"', "[{"):
        (tmp_path / "bad.json").write_text(text, encoding="utf-8")
        with pytest.raises(ImageError, match="bad.json: not a JSON list"):
            rois_from_json(tmp_path / "bad.json")


def test_label_map_round_trip():
    found = rois_from_label_map(rois_to_label_map(ROIS, SHAPE))
    assert [(r.slice, r.row, r.column, r.size) for r in found] == [
        (r.slice, r.row, r.column, r.size) for r in ROIS
    ]


def test_manifest_rois_from_json_and_label_map(manifest):
    assert subject_rois_from_manifest(manifest, "S1") == ROIS
    from_labels = subject_rois_from_manifest(manifest, "S2")
    assert [(r.slice, r.row, r.column) for r in from_labels] == [
        (r.slice, r.row, r.column) for r in ROIS
    ]


def test_manifest_roi_errors_are_one_line_naming_the_subject(manifest, tmp_path):
    with pytest.raises(ImageError, match="subject S3: no rois file"):
        subject_rois_from_manifest(manifest, "S3")
    one = manifest.select(subject_ids=["S1"])
    no_column = Manifest(
        card=one.card, subjects=one.subjects.drop(columns="rois"), path=one.path, root=one.root
    )
    with pytest.raises(ImageError, match="subject S1: no rois file"):
        subject_rois_from_manifest(no_column, "S1")
    manifest.subjects.loc[0, "rois"] = "missing.json"
    with pytest.raises(ImageError, match="subject S1: rois: .*missing.json") as missing:
        subject_rois_from_manifest(manifest, "S1")
    assert "\n" not in str(missing.value)
    (tmp_path / "far.json").write_text(rois_to_json([Roi(1, 18, 0, 4)]), encoding="utf-8")
    manifest.subjects.loc[0, "rois"] = "far.json"
    with pytest.raises(ImageError, match="subject S1: .*outside the image grid \\(3, 20, 24\\)"):
        subject_rois_from_manifest(manifest, "S1")
    with pytest.raises(ImageError, match="outside"):
        subject_rois_from_manifest(manifest, "S1", shape_zyx=(3, 20, 24))
    assert subject_rois_from_manifest(manifest, "S1", shape_zyx=(3, 40, 40)) == [Roi(1, 18, 0, 4)]


def test_roi_windows_are_the_image_pixels_with_edge_padding(manifest):
    images = _images()
    windows = roi_windows(manifest, "S1", ROIS, ("water", "fat_fraction"), margin_px=2)
    assert windows.shape == (3, 2, 8, 8) and windows.dtype == np.float32
    # ROIS[0] lies wholly inside: the image's own pixels, margin included
    assert np.array_equal(windows[0, 0], images["water"][1, 3:11, 4:12])
    assert np.array_equal(windows[0, 1], images["fat_fraction"][1, 3:11, 4:12])
    for i, roi in enumerate(ROIS):  # at the borders: numpy's edge padding of the slice
        padded = np.pad(images["fat_fraction"][roi.slice], 2, mode="edge")
        expected = padded[roi.row : roi.row + 8, roi.column : roi.column + 8]
        assert np.array_equal(windows[i, 1], expected), roi
    corner = windows[1, 1]  # ROI at (0, 0): two padded rows and columns repeat pixel (0, 0)
    assert (corner[:3, :3] == images["fat_fraction"][2, 0, 0]).all()
    assert np.array_equal(corner[2:6, 2:6], images["fat_fraction"][2, 0:4, 0:4])
    assert np.array_equal(
        roi_windows(manifest, "S1", ROIS, margin_px=0)[:, 0],
        [images["fat_fraction"][r.window()] for r in ROIS],
    )


def test_roi_windows_refuse_mixed_sizes_unknown_channels_and_rois_off_the_grid(manifest):
    with pytest.raises(ImageError, match="one size"):
        roi_windows(manifest, "S1", [Roi(0, 0, 0, 4), Roi(0, 5, 5, 6)])
    with pytest.raises(ImageError, match="channels"):
        roi_windows(manifest, "S1", ROIS, ("t2",))
    with pytest.raises(ImageError, match="subject S1: .*outside"):
        roi_windows(manifest, "S1", [Roi(3, 0, 0, 4)])
