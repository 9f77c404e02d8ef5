"""The segmentation engine: contract, learning, masks on disk, resumption, bad subjects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from liverfat.data.io import read_volume
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.evaluation.segmentation import segmentation_metrics
from liverfat.segmentation.engine import SegmentationEngine
from liverfat.testing import check_engine
from tests.segmentation.conftest import tiny_engine

TARGETS = ["liver_volume_ml", "liver_pdff_pct"]


def test_conformance(phantom_manifest, tmp_path):
    check_engine(lambda: tiny_engine(iterations=20), phantom_manifest, tmp_path, targets=TARGETS)


def test_tiny_unet_segments_held_out_phantoms(tiny_engine_dir, phantom_manifest, tmp_path):
    """150 steps of a 4-channel U-Net already find the phantom's liver on unseen subjects,
    and the readout follows from the written masks."""
    engine = SegmentationEngine.load(tiny_engine_dir)
    test = phantom_manifest.select(split="B")
    derived, table = engine.predict_masks(test, tmp_path / "out")
    records = pd.DataFrame(table.run["segmentation"]).set_index("subject_id")
    assert records["dice"].median() > 0.75, records["dice"]
    for sid in test.subject_ids[:2]:  # the records are the metrics of the files on disk
        mask = derived.liver_mask(sid)
        assert mask.GetSize() == test.liver_mask(sid).GetSize()
        expected = segmentation_metrics(
            sitk.GetArrayFromImage(test.liver_mask(sid)),
            sitk.GetArrayFromImage(mask),
            mask.GetSpacing()[::-1],
        )
        assert records.loc[sid, "dice"] == pytest.approx(expected["dice"])
        volume = table.frame.query("subject_id == @sid and target == 'liver_volume_ml'")
        assert volume["value"].iloc[0] == pytest.approx(expected["predicted_volume_ml"])
        # at 8.9 x 8.9 x 12 mm a 5 mm margin erodes no voxel: the median over the whole mask
        ff = sitk.GetArrayFromImage(test.dixon(sid).fat_fraction)
        inside = sitk.GetArrayFromImage(mask) > 0
        pdff = table.frame.query("subject_id == @sid and target == 'liver_pdff_pct'")
        assert pdff["value"].iloc[0] == pytest.approx(np.median(ff[inside]), abs=1e-4)
    assert derived.card.get("liver_label") is None
    assert Manifest.load(tmp_path / "out" / "manifest.yaml").has(test.subject_ids[0], "liver_mask")


def test_predictions_resume_from_finished_subjects(tiny_engine_dir, phantom_manifest, tmp_path):
    engine = SegmentationEngine.load(tiny_engine_dir).set_params(work_dir=str(tmp_path / "w"))
    test = phantom_manifest.select(split="C")
    first = engine.predict(test)
    paths = list(first.run["masks"].values())
    stamps = [p.stat().st_mtime_ns for p in map(Path, paths)]
    again = engine.predict(test)
    assert [p.stat().st_mtime_ns for p in map(Path, paths)] == stamps
    pd.testing.assert_frame_equal(first.frame, again.frame)
    assert read_volume(paths[0]).GetPixelID() == sitk.sitkUInt8
    # another network writing to the same folder does not take the first one's results
    other = tiny_engine(iterations=2, seed=5).fit(phantom_manifest.select(split="A"))
    again = other.set_params(mask_dir=str(Path(paths[0]).parent)).predict(test)
    assert [p.stat().st_mtime_ns for p in map(Path, paths)] != stamps


def test_a_mask_on_another_grid_fails_that_subject_only(phantom_manifest, tmp_path):
    train = phantom_manifest.select(split="A")
    table = train.subjects.copy()
    sid = table["subject_id"].iloc[0]
    mask = train.liver_mask(sid)
    mask.SetOrigin([o + 30.0 for o in mask.GetOrigin()])
    path = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(mask, str(path))
    table.loc[0, "liver_mask"] = str(path)
    shifted = Manifest(card=dict(train.card), subjects=table, path=train.path, root=train.root)
    engine = tiny_engine(iterations=5).fit(shifted)
    assert sid in engine.training_failures_ and "origin" in engine.training_failures_[sid]
    assert sid not in engine.training_subjects_


def test_single_channel_scans_and_bad_settings(phantom_manifest):
    with pytest.raises(LiverfatError, match="slice_size"):
        SegmentationEngine(slice_size=(50, 64))
    with pytest.raises(LiverfatError, match="unknown segmentation model"):
        SegmentationEngine(model="nope")
    with pytest.raises(LiverfatError, match="features"):
        SegmentationEngine(features=(8, 16))
    with pytest.raises(LiverfatError, match="targets"):
        SegmentationEngine(targets=["liver_fat"])
    train = phantom_manifest.select(split="A")
    engine = tiny_engine(iterations=3, channels=["water"], targets=["liver_volume_ml"]).fit(train)
    assert engine.channels_ == ("water",) and engine.in_channels_ == 3  # 1 channel x 3 slices
    assert set(engine.predict(train).frame["target"]) == {"liver_volume_ml"}


def test_worker_processes_give_the_serial_predictions(tiny_engine_dir, phantom_manifest):
    test = phantom_manifest.select(split="C")
    serial = SegmentationEngine.load(tiny_engine_dir).predict(test)
    engine = SegmentationEngine.load(tiny_engine_dir).set_params(executor="processes", n_workers=2)
    pooled = engine.predict(test)
    pd.testing.assert_frame_equal(serial.frame, pooled.frame)
    assert serial.run["segmentation"] == pooled.run["segmentation"]


def test_derived_manifest_feeds_atlas_templates_and_radiomics_rois(
    tiny_engine_dir, phantom_manifest, tmp_path
):
    """The masks the U-Net wrote are what the other engines' CLI steps read from its manifest:
    templates are chosen among its subjects and every radiomics ROI lies inside the predicted
    liver."""
    from liverfat.cli import main

    test = phantom_manifest.select(split="B")
    derived, _ = SegmentationEngine.load(tiny_engine_dir).predict_masks(test, tmp_path / "unet")
    card = str(tmp_path / "unet" / "manifest.yaml")
    templates = tmp_path / "templates.json"
    assert main(["atlas", "templates", card, "--n", "2", "--out", str(templates)]) == 0
    chosen = json.loads(templates.read_text(encoding="utf-8"))["templates"]
    assert len(chosen) == 2 and set(chosen) <= set(test.subject_ids)
    rois = ["--n-rois", "2", "--n-right", "1", "--roi-size", "2", "--border-margin-mm", "0"]
    out = tmp_path / "rois"
    assert main(["radiomics", "rois", card, *rois, "--out", str(out), "--executor", "serial"]) == 0
    for sid in test.subject_ids:
        placed = json.loads((out / f"{sid}_rois.json").read_text(encoding="utf-8"))["rois"]
        predicted = sitk.GetArrayFromImage(derived.liver_mask(sid)) > 0
        assert len(placed) == 2
        for roi in placed:
            window = predicted[
                roi["slice"], roi["row"] : roi["row"] + 2, roi["column"] : roi["column"] + 2
            ]
            assert window.all(), (sid, roi)
