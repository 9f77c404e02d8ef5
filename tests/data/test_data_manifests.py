"""The dataset cards shipped in data_manifests/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from liverfat.data.manifest import Manifest
from liverfat.data.phantom import PhantomConfig, dataset_card

CARDS = Path(__file__).resolve().parents[2] / "data_manifests"


def test_phantom_card_matches_generator() -> None:
    shipped = yaml.safe_load((CARDS / "phantom.yaml").read_text(encoding="utf-8"))
    assert shipped == yaml.safe_load(yaml.safe_dump(dataset_card(0, "quarter", PhantomConfig())))


def test_chaos_card_validates_and_selects_liver_label(shared_data: Path) -> None:
    manifest = Manifest.load(
        CARDS / "chaos_mr_t2spir" / "manifest.yaml", data_root=shared_data / "chaos_mr_t2spir"
    )
    assert manifest.problems() == []
    labels = sitk.GetArrayFromImage(manifest.read_image("chaos1", "liver_mask"))
    liver = sitk.GetArrayFromImage(manifest.liver_mask("chaos1"))
    assert set(np.unique(labels)) > {0, 1}
    assert np.array_equal(liver, (labels == 1).astype(np.uint8))
