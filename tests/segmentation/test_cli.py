"""``liverfat segmentation``: fit, predict (masks + derived manifest), cv and adapt, in-process."""

from __future__ import annotations

import pandas as pd
import pytest

from liverfat.cli import main
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.segmentation.adapt import adaptation_table, rename_columns
from liverfat.segmentation.engine import SegmentationEngine
from tests.segmentation.conftest import TINY, tiny_engine

TINY_ARGS = [
    "--features", *map(str, TINY["features"]),
    "--iterations", "60",
    "--batch-size", str(TINY["batch_size"]),
    "--learning-rate", str(TINY["learning_rate"]),
    "--device", "cpu",
]  # fmt: skip


def test_fit_then_predict_writes_masks_and_a_manifest(phantom_dir, tmp_path, capsys):
    manifest = str(phantom_dir / "manifest.yaml")
    assert main(["segmentation", "fit", manifest, "--split", "A", *TINY_ARGS, "--out",
                 str(tmp_path / "unet")]) == 0  # fmt: skip
    out = tmp_path / "pred"
    assert main(["segmentation", "predict", manifest, "--split", "B", "--engine",
                 str(tmp_path / "unet"), "--out", str(out)]) == 0  # fmt: skip
    table = PredictionsTable.read(out / "predictions.csv")
    derived = Manifest.load(out / "manifest.yaml")
    b = Manifest.load(manifest).select(split="B").subject_ids
    assert set(table.frame["subject_id"]) == set(b) == set(derived.subject_ids)
    assert all((out / "masks" / f"{s}_liver_mask.nii.gz").is_file() for s in b)
    per_subject = pd.read_csv(out / "segmentation.csv")
    assert set(per_subject["subject_id"]) == set(b) and per_subject["dice"].between(0, 1).all()
    assert "manifest with the masks" in capsys.readouterr().out


def test_cv_gives_out_of_fold_records_and_keeps_the_fold_models(phantom_dir, tmp_path, capsys):
    manifest = str(phantom_dir / "manifest.yaml")
    out = tmp_path / "cv"
    assert main(["segmentation", "cv", manifest, "--split", "A", "--folds", "2",
                 "--targets", "liver_volume_ml", *TINY_ARGS, "--out", str(out)]) == 0  # fmt: skip
    assert "fold models" in capsys.readouterr().out
    oof = PredictionsTable.read(out / "oof.csv")
    a = Manifest.load(manifest).select(split="A").subject_ids
    assert sorted(oof.frame["subject_id"]) == sorted(a)
    tested = sorted(s for fold in oof.run["folds"] for s in fold)
    assert tested == sorted(a)
    summary = pd.read_csv(out / "segmentation_summary.csv").set_index("metric")
    records = pd.read_csv(out / "segmentation.csv")
    assert summary.loc["dice", "median"] == pytest.approx(records["dice"].median(), rel=1e-3)
    # the second fold's saved model gives back that fold's out-of-fold volumes
    test_ids, model = oof.run["folds"][1], oof.run["fold_models"][1]
    fold = SegmentationEngine.load(model)
    assert fold.training_subjects_ == sorted(set(a) - set(test_ids))
    fold.set_params(work_dir=None, progress=False)
    again = fold.predict(Manifest.load(manifest).select(subject_ids=test_ids)).frame
    volumes = oof.frame.set_index("subject_id").loc[test_ids, "value"]
    assert again.set_index("subject_id").loc[test_ids, "value"].tolist() == pytest.approx(
        volumes.tolist(), rel=1e-6
    )


def test_adaptation_moves_scans_and_tests_the_same_subjects(phantom_manifest):
    source = rename_columns(phantom_manifest.select(split="A"), {"water": "image"})
    target = rename_columns(phantom_manifest.select(split="B"), {"water": "image"})
    engine = tiny_engine(channels=["image"], targets=["liver_volume_ml"], iterations=60)
    summary, details = adaptation_table(engine, source, target, moved=(0, 2))
    assert summary["moved"].tolist() == [0, 2]
    tested = details.groupby("moved")["subject_id"].apply(frozenset)
    assert tested[0] == tested[2] and len(tested[0]) == len(target.subject_ids) - 2
    moved = set(summary.loc[1, "moved_subjects"].split())
    assert len(moved) == 2 and not moved & tested[2]
    assert summary["dice_median"].between(0.3, 1).all()  # same kind of images: it transfers
    assert summary.loc[0, "dice_median"] == pytest.approx(
        details.query("moved == 0")["dice"].median()
    )
