"""Deep-engine test settings: one torch thread (the 2 cores are shared; more threads thrash),
and the patch grader's cohorts: ROI files written from the phantom's liver masks, and a small
synthetic cohort whose ROIs' fat fraction gives away the grade."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.io import write_volume
from liverfat.data.manifest import Manifest, target_entry
from liverfat.data.rois import Roi, rois_to_json
from liverfat.nn.device import torch_threads
from tests.conftest import write_pdff_manifest

#: Cut-off (%) of the phantom's grading in the tests: six of its twelve split-A subjects each side.
PHANTOM_CUTS = [2.0]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    with torch_threads(1):
        yield


def squares_inside(liver: np.ndarray, size: int, n: int) -> list[Roi]:
    """``n`` non-overlapping ``size`` squares wholly inside a (z, y, x) liver mask, deepest
    slices first, each the free square nearest its slice's liver centroid (deterministic)."""
    chosen: list[Roi] = []
    areas = liver.sum(axis=(1, 2))
    for _ in range(n):
        for z in np.argsort(-areas, kind="stable"):
            roi = _nearest_free_square(liver[z], int(z), size, chosen)
            if roi is not None and sum(r.slice == z for r in chosen) <= len(chosen) // 3:
                chosen.append(roi)
                break
        else:
            raise AssertionError(f"fewer than {n} {size}-pixel squares fit in the liver")
    return chosen


def _nearest_free_square(plane: np.ndarray, z: int, size: int, taken: list[Roi]) -> Roi | None:
    if not plane.any():
        return None
    integral = np.pad(plane.astype(int).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (
        integral[size:, size:]
        - integral[:-size, size:]
        - integral[size:, :-size]
        + integral[:-size, :-size]
    )
    rows, cols = np.nonzero(sums == size * size)
    centre = np.argwhere(plane).mean(axis=0) - (size - 1) / 2
    order = np.lexsort((cols, rows, (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2))
    for i in order:
        roi = Roi(z, int(rows[i]), int(cols[i]), size)
        if not any(roi.overlaps(other) for other in taken):
            return roi
    return None


def write_roi_file(rois: list[Roi], path: Path, subject_id: str, *, saved_form: bool) -> Path:
    """A JSON list of ROIs, or (``saved_form``) the object ``radiomics rois --out`` writes."""
    if saved_form:
        payload = {"subject_id": subject_id, "rois": [asdict(r) for r in rois], "note": "test"}
        path.write_text(json.dumps(payload), encoding="utf-8")
    else:
        path.write_text(rois_to_json(rois), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def phantom_rois_manifest(phantom_manifest: Manifest, tmp_path_factory) -> Manifest:
    """The phantom with six 4-pixel ROIs per subject (``rois`` column; alternately both JSON
    forms) and a ``liver_pdff_pct_grade`` target (the grade at :data:`PHANTOM_CUTS`), which the
    conformance check's target names. Written beside, images read from the phantom."""
    out = tmp_path_factory.mktemp("phantom_rois")
    table = phantom_manifest.subjects.copy()
    paths = []
    for i, sid in enumerate(table["subject_id"]):
        liver = sitk.GetArrayFromImage(phantom_manifest.liver_mask(sid)).astype(bool)
        rois = squares_inside(liver, 4, 6)
        paths.append(str(write_roi_file(rois, out / f"{sid}_rois.json", sid, saved_form=i % 2)))
    table["rois"] = paths
    pdff = table["liver_pdff_pct"]
    table["liver_pdff_pct_grade"] = np.where(pdff.isna(), np.nan, (pdff >= PHANTOM_CUTS[0]) * 1.0)
    card = dict(phantom_manifest.card)
    card["targets"] = {
        **card["targets"],
        "liver_pdff_pct_grade": target_entry("grade at 2 % PDFF", "grade", 3),
    }
    derived = dataclasses.replace(phantom_manifest, card=card, subjects=table)
    return Manifest.load(derived.write(out / "manifest.yaml"))


#: PDFF range (%) of each histology grade (cut-offs 5 / 33 / 66 %) in the synthetic cohort.
GRADE_PDFF = ((1.0, 4.0), (12.0, 28.0), (40.0, 60.0), (72.0, 88.0))


def synthetic_cohort(out: Path, n: int, *, seed: int = 0, size: int = 8) -> Manifest:
    """``n`` subjects on a (4, 32, 32) grid of 2 x 2 x 5 mm: a uniform 'liver' whose fat fraction
    (PDFF of grade ``i % 4``, pixel noise 3 %) fills the middle, another fat fraction around it,
    water and fat with a random gain, and six ``size``-pixel ROIs in the liver (JSON)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sid = f"S{i:03d}"
        low, high = GRADE_PDFF[i % 4]
        pdff = float(rng.uniform(low, high))
        ff = np.full((4, 32, 32), 20.0) + rng.normal(0, 3, (4, 32, 32))
        ff[:, 4:28, 4:28] = pdff + rng.normal(0, 3, (4, 24, 24))
        ff = np.clip(ff, 0, 100)
        gain = float(rng.uniform(50, 500))
        for name, array in (("water", gain * (1 - ff / 100) + 1), ("fat", gain * ff / 100 + 1)):
            image = sitk.GetImageFromArray(array.astype(np.float32))
            image.SetSpacing((2.0, 2.0, 5.0))
            write_volume(image, out / f"{sid}_{name}.nii.gz")
        rois = [Roi(z, r, c, size) for z in (1, 2) for r, c in ((6, 6), (6, 16), (16, 10))]
        write_roi_file(rois, out / f"{sid}_rois.json", sid, saved_form=bool(i % 2))
        rows.append(
            {
                "subject_id": sid,
                "water": f"{sid}_water.nii.gz",
                "fat": f"{sid}_fat.nii.gz",
                "rois": f"{sid}_rois.json",
                "split": "A",
                "liver_pdff_pct": round(pdff, 3),
            }
        )
    return write_pdff_manifest(out, rows, "synthetic ROI cohort")
