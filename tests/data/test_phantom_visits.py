"""Repeat visits of the phantom: same anatomy and fat, a new scan; first visits unchanged."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from liverfat.cli import main
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import LIVER_LABELS, Grid, PhantomConfig, build_subject, generate_cohort
from liverfat.data.phantom.visits import assign_repeats, changed_pdff
from liverfat.errors import LiverfatError

ARGV = ["phantom", "--n", "10", "--seed", "1", "--scale", "quarter", "--executor", "serial"]


def test_repeat_scans_are_rows_of_their_own_and_first_visits_unchanged(
    tmp_path: Path, phantom_dir: Path, capsys
) -> None:
    out = tmp_path / "visits"
    assert main([*ARGV, "--repeat-fraction", "0.3", "--out", str(out)]) == 0
    assert "10 subjects (+3 repeat scans)" in capsys.readouterr().out
    manifest = Manifest.load(out)
    assert manifest.problems() == []
    table = manifest.subjects.set_index("subject_id")
    repeats = [f"P{i + 1:04d}_v3" for i in assign_repeats(10, 1, 0.3)]
    assert len(table) == 13 and set(repeats) <= set(table.index)
    assert list(table.columns[:2]) == ["participant_id", "visit"]
    for sid in repeats:
        first = sid.removesuffix("_v3")
        assert table.loc[sid, "participant_id"] == table.loc[first, "participant_id"] == first
        assert (table.loc[first, "visit"], table.loc[sid, "visit"]) == ("2", "3")
        for column in ("split", "age", "sex", "height", "weight", "bmi"):
            assert table.loc[sid, column] == table.loc[first, column], column
    truth = pd.read_csv(out / "truth" / "truth.csv", dtype={"subject_id": str}).set_index(
        "subject_id"
    )
    for sid in repeats:  # same true fat; its own reference measurement
        first = sid.removesuffix("_v3")
        assert truth.loc[sid, "liver_pdff_pct"] == truth.loc[first, "liver_pdff_pct"]
        assert truth.loc[sid, "reference_pdff_pct"] != truth.loc[first, "reference_pdff_pct"]
        assert truth.loc[sid, "true_change_pp"] == 0
    # Every first-visit scan is byte for byte the cohort without repeats (same seed).
    for sid in (f"P{i:04d}" for i in range(1, 11)):
        for kind in ("water", "fat", "liver_mask"):
            name = f"images/{sid}_{kind}.nii.gz"
            assert filecmp.cmp(out / name, phantom_dir / name, shallow=False), name
    settings = json.loads((out / "truth" / "settings.json").read_text())
    assert settings["config"]["repeat_fraction"] == 0.3
    assert "repeat_change_pp" not in settings["config"]
    card = yaml.safe_load((out / "manifest.yaml").read_text())
    assert card["phantom"]["repeat_fraction"] == 0.3 and set(card["visits"]) == {2, 3}
    with pytest.raises(LiverfatError, match="differs in repeat_fraction"):
        generate_cohort(10, out, seed=1, executor="serial", progress=False)


def test_the_repeat_is_the_same_body_moved_with_its_own_noise_and_motion() -> None:
    config = PhantomConfig(repeat_fraction=0.5, motion_sd_mm=10.0)  # > a quarter-scale voxel
    still = PhantomConfig(repeat_fraction=0.5, motion_sd_mm=0.0)
    grid = Grid.at_scale("quarter")
    for index in range(3):
        a, first = build_subject(index, 4, "quarter", still, "A")
        b, repeat = build_subject(index, 4, "quarter", still, "A", visit=3)
        assert repeat["subject_id"] == f"P{index + 1:04d}_v3"
        assert (first["participant_id"], repeat["participant_id"]) == (f"P{index + 1:04d}",) * 2
        assert (first["visit"], repeat["visit"]) == (2, 3)
        slices = round(repeat["reposition_mm"] / grid.spacing[2])
        assert repeat["reposition_mm"] == pytest.approx(slices * grid.spacing[2], abs=1e-4)
        moved = np.roll(a["labels"], slices, axis=0)
        keep = slice(max(slices, 0), a["labels"].shape[0] + min(slices, 0))
        assert np.array_equal(moved[keep], b["labels"][keep])  # the same voxels, moved
        assert repeat["liver_volume_ml"] == first["liver_volume_ml"]
        assert repeat["diaphragm_z_mm"] == pytest.approx(
            first["diaphragm_z_mm"] + slices * grid.spacing[2], abs=0.011
        )
        liver = np.isin(b["labels"], LIVER_LABELS)
        unmoved = np.roll(a["water"], slices, axis=0)
        assert not np.allclose(unmoved[liver], b["water"][liver], atol=0.5)  # new noise and coil
        assert repeat["liver_pdff_pct"] == first["liver_pdff_pct"]
        # With station motion: the repeat's own offsets.
        _, moving = build_subject(index, 4, "quarter", config, "A")
        _, moving_repeat = build_subject(index, 4, "quarter", config, "A", visit=3)
        assert moving["motion_offsets_mm"] != moving_repeat["motion_offsets_mm"]
    assert any(
        build_subject(i, 4, "quarter", still, "A", visit=3)[1]["reposition_mm"] != 0
        for i in range(3)
    )


def test_a_true_change_moves_the_truth_and_nothing_else() -> None:
    same = PhantomConfig(repeat_fraction=0.5)
    change = PhantomConfig(repeat_fraction=0.5, repeat_change_pp=2.0)
    _, first = build_subject(2, 1, "quarter", change, "A")
    _, steady = build_subject(2, 1, "quarter", same, "A", visit=3)
    _, changed = build_subject(2, 1, "quarter", change, "A", visit=3)
    assert changed["true_change_pp"] != 0
    assert changed["liver_pdff_pct"] == pytest.approx(
        first["liver_pdff_pct"] + changed["true_change_pp"], abs=1e-3
    )
    for key in ("motion_offsets_mm", "reposition_mm", "water_fat_swap", "liver_volume_ml"):
        assert changed[key] == steady[key], key
    rng = np.random.default_rng(0)
    draws = np.array([changed_pdff(20.0, 2.0, rng) for _ in range(4000)]) - 20.0
    assert draws.std() == pytest.approx(2.0, rel=0.05) and abs(draws.mean()) < 0.1


def test_repeats_are_seeded_and_sized() -> None:
    assert assign_repeats(60, 0, 0.3) == assign_repeats(60, 0, 0.3)
    assert len(assign_repeats(60, 0, 0.3)) == 18 and assign_repeats(60, 1, 0.3) != assign_repeats(
        60, 0, 0.3
    )
    assert assign_repeats(60, 0, 0.0) == () and len(set(assign_repeats(7, 2, 1.0))) == 7
    assert "repeat_fraction" not in PhantomConfig().as_record()
    with pytest.raises(LiverfatError, match="repeat_change_pp"):
        PhantomConfig(repeat_change_pp=-1.0)


@pytest.mark.parametrize(
    "flag, value", [("--repeat-fraction", "1.5"), ("--repeat-change-pp", "-1")]
)
def test_bad_repeat_options_are_one_line_parser_errors(flag, value, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*ARGV, "--out", str(tmp_path), flag, value])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and flag in errors[0]
