"""The study report's segmentation section, with a stand-in engine whose run carries masks."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable, prediction_row
from liverfat.study import Study, run_study
from tests.conftest import write_shifted_masks

TARGET = "liver_pdff_pct"


class MaskEngine:
    """Stands in for a segmentation engine: its predicted masks are the reference masks moved
    along x (1 voxel out-of-fold, 3 after the final fit), their metrics and paths in the run."""

    def __init__(self, *, work_dir: str | None = None) -> None:
        self.work_dir = work_dir

    def _table(self, manifest: Manifest, stage: str, shift: int) -> PredictionsTable:
        shifts = dict.fromkeys(manifest.subject_ids, shift)
        records, masks = write_shifted_masks(manifest, Path(self.work_dir) / stage, shifts)
        rows = [prediction_row(s, "masks", TARGET, 5.0) for s in manifest.subject_ids]
        return PredictionsTable.from_rows(
            rows, {"method": "masks", "segmentation": records, "masks": masks}
        )

    def fit(self, manifest: Manifest) -> MaskEngine:
        return self

    def predict(self, manifest: Manifest) -> PredictionsTable:
        return self._table(manifest, "fit", 3)

    def cross_validate(self, manifest: Manifest, *, folds=2, seed=0) -> PredictionsTable:
        return self._table(manifest, "cv", 1)

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)

    @classmethod
    def load(cls, directory) -> MaskEngine:
        return cls()


class PlainEngine(MaskEngine):
    """The same values, no masks: gets no segmentation section."""

    def _table(self, manifest: Manifest, stage: str, shift: int) -> PredictionsTable:
        rows = [prediction_row(s, "plain", TARGET, 6.0) for s in manifest.subject_ids]
        return PredictionsTable.from_rows(rows, {"method": "plain"})


def test_a_study_reports_an_engine_with_mask_metrics(tmp_path: Path, small_phantom_dir: Path):
    manifest = Manifest.load(small_phantom_dir)
    study = {
        "name": "masks",
        "manifest": str(small_phantom_dir / "manifest.yaml"),
        "target": TARGET,
        "out": str(tmp_path / "out"),
        "engines": {
            # Out-of-fold on A (P0003, P0004), then fitted and predicting every split.
            "unet": {
                "engine": f"{__name__}:MaskEngine",
                "cross_validate": True,
                "folds": 2,
                "predict_on": ["A", "B"],
            },
            "plain": {"engine": f"{__name__}:PlainEngine", "predict_on": ["A"]},
        },
        "comparison": {"pairs": ["reference:unet@A"]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    # What the section should hold: A's subjects from the out-of-fold stage, B's from the fit.
    expected, _ = write_shifted_masks(manifest, tmp_path / "expected_cv", {"P0003": 1, "P0004": 1})
    fitted, _ = write_shifted_masks(manifest, tmp_path / "expected_fit", {"P0001": 3, "P0002": 3})
    by_dice = sorted(expected + fitted, key=lambda r: (r["dice"], r["subject_id"]))
    worst, median = by_dice[0], by_dice[1]
    for _ in range(2):  # the rerun reuses the stages: the records come back from run.json
        page = run_study(Study.load(path), log=lambda m: None).read_text(encoding="utf-8")
        assert page.count("<h2>Segmentation: ") == 1 and "Segmentation: unet" in page
        section = page[page.index("<h2>Segmentation: unet") :]
        assert "Per subject, worst Dice first" in section
        rows = re.findall(r'<tr><td class="t">(P\d{4})</td><td>([0-9.]+)</td>', section)
        assert rows == [(r["subject_id"], f"{r['dice']:.3f}") for r in by_dice]
        captions = re.findall(r"<figcaption>([^<]+)</figcaption>", section)
        assert len(captions) == 2 and len(re.findall(r'<img alt="unet', section)) == 2
        assert (
            f"worst subject by Dice, {worst['subject_id']} (Dice {worst['dice']:.3f}"
            in (captions[0])
        )
        assert f"median subject by Dice, {median['subject_id']}" in captions[1]
