"""Shared fixtures: a small phantom cohort and the path to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIVERFAT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $LIVERFAT_SHARED_DATA); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real public data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-subject quarter-scale phantom cohort (seed 1), generated once per test session.

    Read-only for tests: copy it before changing anything.
    """
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(20, out, seed=1, scale="quarter", executor="serial", progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_manifest(phantom_dir: Path) -> Manifest:
    return Manifest.load(phantom_dir / "manifest.yaml")
