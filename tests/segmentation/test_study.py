"""``engine: segmentation`` in a study: the real U-Net, out-of-fold on A, in the report."""

from __future__ import annotations

from pathlib import Path

import yaml

from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.study import Study, run_study
from tests.segmentation.conftest import TINY


def test_a_study_runs_the_unet_and_reports_its_masks(phantom_dir, tmp_path):
    settings = {**TINY, "features": list(TINY["features"]), "iterations": 60}
    study = {
        "name": "unet",
        "manifest": str(phantom_dir / "manifest.yaml"),
        "target": "liver_pdff_pct",
        "out": str(tmp_path / "out"),
        "splits": {"train": "A"},
        "engines": {
            "unet": {
                "engine": "segmentation",
                "settings": settings,
                "cross_validate": True,
                "folds": 2,
            }
        },
        "comparison": {"pairs": ["reference:unet@A"]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    page = run_study(Study.load(path), log=lambda m: None).read_text(encoding="utf-8")
    assert "Segmentation: unet" in page
    out = tmp_path / "out" / "predictions"
    oof = PredictionsTable.read(out / "unet.cv.csv")  # the stage's own table, with its records
    study_rows = PredictionsTable.read(out / "unet.csv").frame
    a = set(Manifest.load(phantom_dir).select(split="A").target("liver_pdff_pct").dropna().index)
    assert set(oof.frame["subject_id"]) == a
    assert set(study_rows["subject_id"]) == a and (study_rows["target"] == "liver_pdff_pct").all()
    records = oof.run["segmentation"]
    assert {r["subject_id"] for r in records} == a and all(0 <= r["dice"] <= 1 for r in records)
    assert all(Path(oof.run["masks"][s]).is_file() for s in a)
