"""Atlas-made liver masks in a derived manifest: Python function and ``atlas register``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.atlas.masks import manifest_with_atlas_masks
from liverfat.cli import main
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from tests.atlas.test_engine import FAST, small_engine


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_manifest_with_atlas_masks_and_register_cli(phantom_manifest, phantom_dir, tmp_path):
    templates = phantom_manifest.subject_ids[:2]
    targets = phantom_manifest.select(subject_ids=phantom_manifest.subject_ids[2:5])
    table = targets.subjects.copy()
    broken = table["subject_id"].iloc[-1]
    table.loc[table["subject_id"] == broken, "water"] = "images/missing_water.nii.gz"
    targets = Manifest(
        card=dict(targets.card), subjects=table, path=targets.path, root=targets.root
    )
    work = tmp_path / "work"
    engine = small_engine(templates=templates, calibrate=False, save_masks=True, work_dir=str(work))
    engine.fit(phantom_manifest.select(subject_ids=templates))
    result = manifest_with_atlas_masks(engine, targets, tmp_path / "out", progress=None)

    assert list(result.failures) == [broken]
    assert result.written == targets.subject_ids[:-1]
    assert result.without_readout == []
    derived = Manifest.load(tmp_path / "out" / "manifest.yaml")
    for sid in result.written:  # in the documented place, not in the work folder
        assert (
            derived.image_path(sid, "liver_mask")
            == (tmp_path / "out" / "masks" / f"{sid}_liver_mask.nii.gz").resolve()
        )
    assert derived.subject_ids == targets.subject_ids
    assert not derived.has(broken, "liver_mask")
    for sid in targets.subject_ids[:-1]:
        mask = sitk.GetArrayFromImage(derived.liver_mask(sid)) > 0
        truth = sitk.GetArrayFromImage(phantom_manifest.liver_mask(sid)) > 0
        assert mask.shape == truth.shape
        assert _dice(mask, truth) > 0.7, sid  # 0.77 and 0.83 with these settings
        # everything else in the row is the original's
        row = derived.subjects.set_index("subject_id").loc[sid]
        original = targets.subjects.set_index("subject_id").loc[sid]
        assert row[["age", "bmi"]].tolist() == pytest.approx(original[["age", "bmi"]].tolist())

    # the command line does the same (resuming the finished registrations of the work folder)
    template_file = tmp_path / "templates.json"
    template_file.write_text(json.dumps({"templates": templates}), encoding="utf-8")
    cli_out = tmp_path / "cli"
    argv = ["atlas", "register", str(phantom_dir / "manifest.yaml"), "--templates"]
    argv += [str(template_file), "--out", str(cli_out), "--work-dir", str(work)]
    argv += ["--backend", "torch", "--executor", "serial", "--erosion-voxels", "3"]
    argv += ["--options", json.dumps(FAST), "--split", "C"]
    assert main(argv) == 0
    cli_manifest = Manifest.load(cli_out / "manifest.yaml")
    assert cli_manifest.subject_ids == phantom_manifest.select(split="C").subject_ids
    assert all(cli_manifest.has(sid, "liver_mask") for sid in cli_manifest.subject_ids)


def test_manifest_with_atlas_masks_needs_saved_masks(phantom_manifest, tmp_path):
    with pytest.raises(LiverfatError, match="save_masks"):
        manifest_with_atlas_masks(small_engine(), phantom_manifest, tmp_path)
    with pytest.raises(LiverfatError, match="work_dir"):
        manifest_with_atlas_masks(small_engine(save_masks=True), phantom_manifest, tmp_path)


def _single_image_card(phantom_manifest: Manifest, ids: list[str], out) -> Manifest:
    """A CHAOS-like card of ``ids``: one non-Dixon ``image`` (the water) and a liver mask,
    no fat fraction."""
    table = phantom_manifest.subjects.set_index("subject_id").loc[ids].reset_index()
    table = table[["subject_id", "water", "liver_mask", "split"]].rename(columns={"water": "image"})
    card = {k: phantom_manifest.card[k] for k in ("name", "splits")}
    card.update({"targets": {}, "covariates": {}})
    manifest = Manifest(card=card, subjects=table, path=out, root=phantom_manifest.root)
    manifest.write(out)
    return Manifest.load(out)


def test_register_cli_on_scans_without_fat_fraction(phantom_manifest, tmp_path, capsys):
    """The new user's route (issue 17): a card of non-Dixon scans gets a mask for every subject,
    counted as written, in OUT/masks; the missing fat fraction skips only the readout."""
    ids = phantom_manifest.subject_ids[:5]
    card = _single_image_card(phantom_manifest, ids, tmp_path / "card" / "manifest.yaml")
    template_file = tmp_path / "t.json"
    templates = ["atlas", "templates", str(card.path), "--n", "2", "--out", str(template_file)]
    assert main(templates) == 0
    out = tmp_path / "OUT"
    argv = ["atlas", "register", str(card.path), "--templates", str(template_file)]
    argv += ["--out", str(out), "--backend", "torch", "--executor", "serial"]
    argv += ["--erosion-voxels", "3", "--options", json.dumps(FAST)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no fat fraction in this scan" not in printed  # not one line per subject
    assert f"5 of 5 subjects have atlas liver masks in {out / 'masks'}" in printed
    assert "5 without a fat fraction: masks only, no fat readout" in printed
    derived = Manifest.load(out / "manifest.yaml")
    for sid in ids:
        path = derived.image_path(sid, "liver_mask")
        assert path == (out / "masks" / f"{sid}_liver_mask.nii.gz").resolve()
        mask = sitk.GetArrayFromImage(derived.liver_mask(sid)) > 0
        truth = sitk.GetArrayFromImage(phantom_manifest.liver_mask(sid)) > 0
        assert _dice(mask, truth) > 0.6, sid  # a template on itself and real warps elsewhere
