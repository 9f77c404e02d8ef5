"""Phantom realism (issue 16, item 1): each item does what docs/phantom.md says, off is the old
phantom byte for byte, and one item off leaves the others as they were."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from liverfat.cli import main
from liverfat.data.phantom import PhantomConfig, build_subject
from liverfat.data.phantom.anatomy import LABELS
from liverfat.data.phantom.grid import Grid
from liverfat.data.phantom.imaging import blur_sigma_voxels
from liverfat.data.phantom.realism import (
    ITEMS,
    REALISTIC_NOISE_SD,
    FatPattern,
    Realism,
    realistic_config,
)
from liverfat.errors import LiverfatError

REAL = realistic_config(PhantomConfig(), off=("artefacts",))


def _digest(indices: range, config: PhantomConfig) -> str:
    """SHA-256 of quarter-scale subjects (seed 3) as stored: uint16 signal, labels, record."""
    h = hashlib.sha256()
    for index in indices:
        arrays, record = build_subject(index, 3, "quarter", config, "A")
        for key in ("water", "fat"):
            h.update(np.round(arrays[key] * 10).clip(0, 65535).astype(np.uint16).tobytes())
        h.update(arrays["labels"].tobytes())
        h.update(repr(sorted(record.items())).encode())
    return h.hexdigest()


def test_without_realism_the_phantom_is_the_one_before_it() -> None:
    """The digest of four subjects (swaps included) as the code before realism wrote them."""
    digest = _digest(range(4), PhantomConfig(swap_fraction=0.5))
    assert digest == "921e2ddd18464493c79aa39d70813f7235c547f5410b99d853cd15f0f7df31a0"
    assert "realism" not in PhantomConfig().as_record()


def test_preset_record_and_validation() -> None:
    record = REAL.as_record()
    assert record["noise_sd"] == REALISTIC_NOISE_SD and record["swap_fraction"] == 0.0
    assert record["realism"]["artefact_rates"] == {}
    assert realistic_config(PhantomConfig()).as_record()["realism"] == {
        **Realism().as_record(),
        "artefact_rates": {"swap": 0.012, "metal": 0.008, "noise": 0.008, "positioning": 0.008},
    }
    assert sum(dict(Realism().artefact_rates).values()) == pytest.approx(0.036)
    with pytest.raises(LiverfatError, match="unknown realism item"):
        realistic_config(PhantomConfig(), off=("wings",))
    with pytest.raises(LiverfatError, match="unknown artefact class"):
        Realism(artefact_rates=(("ghost", 0.1),))
    with pytest.raises(LiverfatError, match="add up to at most 1"):
        Realism(artefact_rates=(("swap", 0.7), ("metal", 0.6)))


def test_liver_fat_varies_and_averages_to_the_truth() -> None:
    """The whole-liver mean of the local PDFF is the true PDFF; the spread grows with it."""
    spreads = []
    for index in range(6):
        arrays, record = build_subject(index, 11, "half", REAL, "A")
        liver = arrays["labels"] == LABELS["liver"]
        fat, water = arrays["fat"][liver], arrays["water"][liver]
        spreads.append((record["liver_pdff_pct"], record["liver_pdff_sd_pp"]))
        # The body fat fraction's spread inside the liver is wider than noise alone.
        assert record["liver_pdff_sd_pp"] > 0
        assert np.isfinite(fat / (fat + water)).all()
    pdff, sd = np.array(spreads).T
    ratio = sd / pdff  # multiplicative pattern: a near-constant coefficient of variation
    assert np.all((ratio > 0.05) & (ratio < 0.35)), ratio


def test_fat_map_mean_is_exact() -> None:
    from liverfat.data.phantom.realism import liver_fat_map

    grid = Grid.at_scale("quarter")
    arrays, _ = build_subject(2, 4, "quarter", replace(REAL, realism=None), "A")
    labels = arrays["labels"]
    shape = _liver_shape(2, 4)
    pattern = FatPattern.draw(Realism(), np.random.default_rng(0))
    flat, values, _ = liver_fat_map(grid, labels, shape, pattern, 12.5)
    assert flat.size == np.count_nonzero(labels == LABELS["liver"])
    assert float(np.mean(values, dtype=np.float64)) == pytest.approx(12.5, rel=1e-5)
    assert 0.5 < float(values.std()) < 4.0


def _liver_shape(index: int, seed: int):
    """The liver geometry of a subject, painted again from its anatomy stream."""
    from liverfat.data.phantom.anatomy import Landmarks, paint_body, paint_liver, paint_organs
    from liverfat.data.phantom.cohort import draw_subject, subject_id_for

    rng = np.random.SeedSequence([seed, index]).spawn(3)[0]
    rng = np.random.default_rng(rng)
    subject = draw_subject(rng, subject_id_for(index))
    grid = Grid.at_scale("quarter")
    marks = Landmarks.for_height(subject.height_cm, shift_mm=float(rng.normal(0, 15)))
    labels = np.zeros(grid.shape, np.uint8)
    body = paint_body(grid, subject, marks, labels, rng)
    paint_organs(grid, subject, marks, labels, body)
    return paint_liver(grid, subject, marks, labels, rng)


def test_roi_reference_samples_the_parenchyma_off_the_vessels() -> None:
    from liverfat.data.phantom.realism import roi_reference

    shape = _liver_shape(1, 9)
    flat = FatPattern.draw(Realism(0.0, 0.0), np.random.default_rng(0))
    mean, z = roi_reference(shape, flat, 7.0, 0.0, Realism(), np.random.default_rng(1))
    assert mean == pytest.approx(7.0)  # a uniform liver: the ROIs read the truth exactly
    assert abs(z - shape.centre[2]) < 50
    # With the pattern, the ROI mean departs from the whole-liver mean as a sample does.
    pattern = FatPattern.draw(Realism(), np.random.default_rng(2))
    errors = [
        roi_reference(shape, pattern, 10.0, 0.0, Realism(), np.random.default_rng(s))[0] - 10.0
        for s in range(30)
    ]
    assert 0.1 < np.std(errors) < 3.0
    # ROI centres keep clear of every vessel: the clearance test rejects points on a vessel.
    start, end, radius = shape.vessels[0]
    mid = (start + end) / 2
    on_vessel = shape.clear(
        np.float32([mid[2]]), np.float32([mid[1]]), np.float32([mid[0]]), margin_mm=1.0
    )
    assert not on_vessel[0]


def test_reference_is_the_roi_mean_plus_noise() -> None:
    config = replace(REAL, reference_outlier_fraction=0.0)
    rows = [build_subject(i, 5, "quarter", config, "A")[1] for i in range(20)]
    truth = pd.DataFrame(rows)
    noise = truth["reference_pdff_pct"] - truth["reference_roi_mean_pct"]
    sd = config.reference_noise_sd_pct + config.reference_noise_slope * truth["liver_pdff_pct"]
    assert np.all(np.abs(noise) < 4 * sd + 0.01)
    sampling = truth["reference_roi_mean_pct"] - truth["liver_pdff_pct"]
    assert sampling.abs().max() > 0.05  # the ROIs are not the whole liver


def test_arms_gallbladder_stomach_and_one_item_off_changes_only_it() -> None:
    arrays, record = build_subject(0, 5, "quarter", REAL, "A")
    labels = arrays["labels"]
    grid = Grid.at_scale("quarter")
    for name in ("gallbladder", "stomach", "gas", "arm_fat", "arm_muscle"):
        assert np.count_nonzero(labels == LABELS[name]) > 0, name
    gallbladder_ml = np.count_nonzero(labels == LABELS["gallbladder"]) * grid.voxel_ml
    assert 5 < gallbladder_ml < 120
    arm = np.isin(labels, (LABELS["arm_fat"], LABELS["arm_muscle"]))
    columns = np.flatnonzero(arm.any(axis=(0, 1)))
    assert grid.x[columns].min() < -150 and grid.x[columns].max() > 150  # both sides, lateral
    no_arms, _ = build_subject(
        0, 5, "quarter", realistic_config(PhantomConfig(), off=("artefacts", "arms")), "A"
    )
    assert not np.isin(no_arms["labels"], (LABELS["arm_fat"], LABELS["arm_muscle"])).any()
    for name in ("gallbladder", "stomach", "liver"):
        assert np.array_equal(no_arms["labels"] == LABELS[name], labels == LABELS[name]), name


def test_every_item_can_be_turned_off_alone() -> None:
    digests = {_digest(range(1), REAL)}
    for item in ITEMS:
        if item == "artefacts":
            continue
        digests.add(_digest(range(1), realistic_config(PhantomConfig(), off=("artefacts", item))))
    assert len(digests) == len(ITEMS)  # each item changes the scan
    everything_off = realistic_config(PhantomConfig(), off=(*ITEMS, "snr"))
    assert everything_off.realism.as_record()["artefact_rates"] == {}


def test_partial_volume_adds_the_voxel_box() -> None:
    grid = Grid.at_scale("half")
    plain = blur_sigma_voxels(grid, 2.0, False)
    boxed = blur_sigma_voxels(grid, 2.0, True)
    assert plain[0] == pytest.approx(2.0 / grid.spacing[2])
    assert boxed[1] == pytest.approx(np.hypot(2.0, grid.spacing[1] / np.sqrt(12)) / grid.spacing[1])


def test_seam_deformation_bends_the_outline_at_the_borders() -> None:
    from liverfat.data.phantom.imaging import _station_slices
    from liverfat.data.phantom.realism import deform_seams

    grid = Grid.at_scale("half")
    arrays, _ = build_subject(0, 5, "half", replace(REAL, realism=None, motion_sd_mm=0), "A")
    labels = arrays["labels"].copy()
    stations = _station_slices(labels.shape[0])
    shifts = deform_seams(grid, labels, stations, 8.0, np.random.default_rng(3))
    assert len(shifts) == len(stations) - 1
    changed = np.flatnonzero((labels != arrays["labels"]).any(axis=(1, 2)))
    borders = np.array([s.start for s in stations[1:]])
    distance = np.abs(changed[:, None] - borders[None, :]).min(axis=1) * grid.spacing[2]
    assert changed.size > 0 and distance.max() <= 2.5 * 20.0 + grid.spacing[2]


def test_repeat_visit_keeps_the_realistic_anatomy() -> None:
    config = replace(REAL, repeat_fraction=1.0)
    first, r1 = build_subject(3, 8, "quarter", config, "A")
    second, r2 = build_subject(3, 8, "quarter", config, "A", visit=3)
    for name in ("gallbladder", "stomach"):
        assert abs(
            np.count_nonzero(first["labels"] == LABELS[name])
            - np.count_nonzero(second["labels"] == LABELS[name])
        ) <= 0.25 * np.count_nonzero(first["labels"] == LABELS[name]), name
    assert r1["liver_pdff_pct"] == r2["liver_pdff_pct"]
    assert r1["liver_pdff_sd_pp"] == pytest.approx(r2["liver_pdff_sd_pp"], rel=0.2)
    assert r1["reference_roi_slice_z_mm"] != r2["reference_roi_slice_z_mm"]


def test_cli_realism_card_and_truth(tmp_path: Path, capsys) -> None:
    out = tmp_path / "real"
    args = ["phantom", "--n", "4", "--seed", "2", "--scale", "quarter", "--out", str(out)]
    rc = main(
        [
            *args,
            "--realism",
            "--realism-off",
            "arms",
            "--artefact-rates",
            "metal=0.5",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    card = yaml.safe_load((out / "manifest.yaml").read_text())
    realism = card["phantom"]["realism"]
    assert realism["arms"] is False and realism["artefact_rates"] == {"metal": 0.5}
    truth = pd.read_csv(out / "truth" / "truth.csv")
    assert set(truth["artefact"]) <= {"none", "metal"}
    for detail, kind in zip(truth["artefact_detail"], truth["artefact"], strict=True):
        assert (json.loads(detail) != {}) == (kind != "none")
    assert main([*args[:-1], str(tmp_path / "x"), "--realism-off", "arms"]) == 2
    assert "need --realism" in capsys.readouterr().err


CLASS_CHECK = {"swap": "swap", "metal": "metal", "noise": "noise", "positioning": "position"}


@pytest.mark.parametrize("artefact", [*CLASS_CHECK, "none"])
def test_realistic_scans_flag_their_artefact_and_nothing_else(artefact: str) -> None:
    """End to end on the realistic phantom (arms, swapped arms, gallbladder, stomach gas, seam
    deformation, SNR 40): each artefact class raises its own check; a clean scan none."""
    from liverfat.data.qc import array_qc

    rates = {} if artefact == "none" else {artefact: 1.0}
    config = realistic_config(PhantomConfig(), artefact_rates=rates)
    grid = Grid.at_scale("half")
    for index in range(2):
        arrays, record = build_subject(index, 21, "half", config, "A")
        assert record["artefact"] == artefact
        checks = array_qc(arrays["water"], arrays["fat"], spacing_mm=grid.spacing)
        flagged = {c.check for c in checks if c.flag} - {"void"}  # metal leaves a void too
        assert flagged == ({CLASS_CHECK[artefact]} if artefact != "none" else set()), record


def test_a_swapped_arm_against_the_trunk_is_not_a_swap() -> None:
    """Seed 41's P0156: its right arm is swapped, and smoothing merges it with the trunk. Read
    whole, the slab's right half scored +11.5 pp (a swap); the lateral sectors leave it out."""
    from liverfat.data.qc import array_qc

    arrays, record = build_subject(155, 41, "half", realistic_config(PhantomConfig()), "A")
    assert record["arm_swap"] == "right" and record["artefact"] == "none"
    grid = Grid.at_scale("half")
    swap = next(
        c
        for c in array_qc(arrays["water"], arrays["fat"], spacing_mm=grid.spacing)
        if c.check == "swap"
    )
    assert swap.value < -10.0 and not swap.flag


def test_the_fat_pattern_reaches_the_image() -> None:
    """The image's fat-fraction variance in the liver grows by the pattern's (times the body-MRI
    bias squared) over the same scan without it: same noise draws, same voxels."""
    from scipy import ndimage

    def liver_ff(off: tuple[str, ...]):
        config = realistic_config(PhantomConfig(), off=("artefacts", *off))
        arrays, record = build_subject(6, 11, "half", config, "A")
        inner = ndimage.binary_erosion(arrays["labels"] == LABELS["liver"], iterations=2)
        fat, water = arrays["fat"][inner], arrays["water"][inner]
        return 100 * fat / (fat + water), record

    with_pattern, record = liver_ff(())
    without, _ = liver_ff(("fat_field", "fat_segments"))
    assert record["liver_pdff_pct"] > 8  # a fatty liver, where the pattern is pp-sized
    added = with_pattern.var() - without.var()
    expected = (REAL.proportional_bias * record["liver_pdff_sd_pp"]) ** 2
    assert added == pytest.approx(expected, rel=0.35)
