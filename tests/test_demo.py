"""The demo study file and its phantom (``liverfat demo`` before it runs the study)."""

from __future__ import annotations

import yaml

from liverfat.data.manifest import Manifest
from liverfat.demo import PROFILES, write_demo_study
from liverfat.study import Study


def test_write_demo_study(tmp_path):
    messages: list[str] = []
    path = write_demo_study(tmp_path / "demo", "quick", n=4, seed=3, log=messages.append)
    assert path == (tmp_path / "demo" / "study.yaml").resolve()
    mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert mapping["seed"] == 3
    assert mapping["engines"]["radiomics"]["settings"] == PROFILES["quick"]["radiomics"]
    manifest = Manifest.load(tmp_path / "demo" / mapping["manifest"])
    assert len(manifest) == 4
    assert messages == [f"[phantom] 4 subjects at quarter scale -> {path.parent / 'phantom'}"]
    study = Study.load(path)
    assert [e.name for e in study.engines] == ["network", "atlas", "radiomics", "unet", "baseline"]
