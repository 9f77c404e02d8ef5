"""Segmentation test fixtures: tiny U-Nets trained in seconds on the quarter-scale phantom."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverfat.data.manifest import Manifest
from liverfat.nn.device import torch_threads
from liverfat.segmentation.engine import SegmentationEngine

#: A U-Net small enough to train in seconds: 8-16-32 channels, 150 steps of 8 slices.
TINY = {
    "features": (8, 8, 16, 16, 32, 8),
    "iterations": 150,
    "batch_size": 8,
    "learning_rate": 1e-2,
    "device": "cpu",
}


def tiny_engine(**overrides) -> SegmentationEngine:
    return SegmentationEngine(**{**TINY, **overrides})


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory: pytest.TempPathFactory, phantom_manifest: Manifest) -> Path:
    """A tiny engine fitted on the phantom's split A and saved (JSON + safetensors)."""
    folder = tmp_path_factory.mktemp("tiny_unet") / "engine"
    tiny_engine().fit(phantom_manifest.select(split="A")).save(folder)
    return folder
