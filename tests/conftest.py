"""Shared fixtures: a small phantom cohort and the path to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from liverfat.data.manifest import Manifest, target_entry
from liverfat.data.phantom import generate_cohort

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIVERFAT_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_pdff_manifest(folder: Path, rows: list[dict], name: str) -> Manifest:
    """A manifest in ``folder`` of the subject-table ``rows``: one split A and the target
    ``liver_pdff_pct`` (%, 0-100)."""
    import pandas as pd
    import yaml

    pd.DataFrame(rows).to_csv(folder / "subjects.csv", index=False)
    card = {
        "name": name,
        "subjects": "subjects.csv",
        "targets": {"liver_pdff_pct": target_entry("liver PDFF", "%", 100)},
        "splits": {"A": {"meaning": "all"}},
    }
    (folder / "manifest.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return Manifest.load(folder / "manifest.yaml")


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


@pytest.fixture(scope="session")
def small_phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-subject quarter-scale phantom cohort (seed 1): splits B, C, A, A. Read-only."""
    out = tmp_path_factory.mktemp("small_phantom") / "cohort"
    generate_cohort(4, out, seed=1, scale="quarter", executor="serial", progress=False)
    return out


def write_shifted_masks(
    manifest: Manifest, out: Path, shifts: dict[str, int]
) -> tuple[list[dict], dict[str, str]]:
    """Predicted liver masks: each subject's reference moved ``shifts[sid]`` voxels along x.

    Returns the per-subject records (``subject_id`` plus
    :func:`~liverfat.evaluation.segmentation.segmentation_metrics`) and the mask paths, as a
    segmentation engine puts them in its run.
    """
    import numpy as np
    import SimpleITK as sitk

    from liverfat.data.io import write_volume
    from liverfat.evaluation.segmentation import segmentation_metrics

    records, masks = [], {}
    for sid, shift in shifts.items():
        reference = manifest.liver_mask(sid)
        array = sitk.GetArrayFromImage(reference)
        moved = np.roll(array, shift, axis=2)  # arrays are (z, y, x)
        image = sitk.GetImageFromArray(moved)
        image.CopyInformation(reference)
        path = write_volume(image, out / f"{sid}_predicted.nii.gz")
        spacing = reference.GetSpacing()[::-1]
        records.append({"subject_id": sid, **segmentation_metrics(array, moved, spacing)})
        masks[sid] = str(Path(path).resolve())
    return records, masks
