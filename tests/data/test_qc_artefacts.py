"""QC of phantom artefacts: metal, seam and position checks, swaps with arms, scoring vs truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liverfat.data.dixon import body_mask
from liverfat.data.phantom import Grid, PhantomConfig, build_subject
from liverfat.data.phantom.artefacts import apply_metal, apply_swap_region
from liverfat.data.qc import CHECKS, array_qc, swap_check
from liverfat.data.qc_geometry import (
    SEAM_THRESHOLD_MM,
    metal_check,
    position_check,
    seam_check,
)
from liverfat.data.qc_scoring import score_qc
from liverfat.data.swaps import edge_depth_mm

GRID = Grid.at_scale("quarter")
SPACING = GRID.spacing


@pytest.fixture(scope="module")
def clean():
    arrays, _ = build_subject(3, 21, "quarter", PhantomConfig(swap_fraction=0.0), "A")
    return arrays


def _checks(water, fat):
    return {c.check: c for c in array_qc(water, fat, spacing_mm=SPACING)}


def test_clean_subject_flags_nothing(clean):
    checks = _checks(clean["water"], clean["fat"])
    assert list(checks) == list(CHECKS)
    assert not [c.message for c in checks.values() if c.flag]


def test_metal_is_flagged_and_a_plain_gas_void_is_not(clean):
    for seed in range(4):
        w, f, labels = clean["water"].copy(), clean["fat"].copy(), clean["labels"].copy()
        detail = apply_metal(GRID, labels, w, f, np.random.default_rng(seed), 0.8)
        check = metal_check(w, f, body_mask(w, f), spacing_mm=SPACING)
        assert check.flag, (detail, check.message)
    # Gas: a rimless void of about 60 mL deep in the abdomen.
    w, f = clean["water"].copy(), clean["fat"].copy()
    mask = body_mask(w, f)
    z = slice(int(0.45 * len(w)), int(0.45 * len(w)) + 5)
    depth = edge_depth_mm(mask[z], SPACING[:2]).min(axis=0)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    box = (z, slice(y - 1, y + 3), slice(x - 1, x + 2))
    rng = np.random.default_rng(0)
    for image in (w, f):
        shape = image[box].shape
        image[box] = np.hypot(rng.normal(0, 0.8, shape), rng.normal(0, 0.8, shape))
    checks = _checks(w, f)
    assert checks["void"].flag  # the existing void check sees it
    assert not checks["metal"].flag, checks["metal"].message
    assert checks["metal"].value < 5


def _shift_station(array, start, stop, dy, dx):
    out = array.copy()
    out[start:stop] = np.roll(array[start:stop], (dy, dx), axis=(1, 2))
    return out


def test_seam_check_flags_a_shifted_station_with_its_size(clean):
    w, f = clean["water"], clean["fat"]
    assert not seam_check(body_mask(w, f), spacing_mm=SPACING).flag
    start, stop = 46, 61  # station 3 of 6 on the quarter grid
    w2, f2 = (_shift_station(a, start, stop, 0, 3) for a in (w, f))
    check = seam_check(body_mask(w2, f2), spacing_mm=SPACING)
    assert check.flag, check.message
    assert check.value == pytest.approx(3 * SPACING[0], abs=0.5)
    assert check.value > SEAM_THRESHOLD_MM
    w3, f3 = (_shift_station(a, start, stop, 2, 0) for a in (w, f))
    assert seam_check(body_mask(w3, f3), spacing_mm=SPACING).value == pytest.approx(
        2 * SPACING[1], abs=0.5
    )


def _with_arms(arrays, *, swap_one: bool):
    """Paint two arms (muscle inside 8 mm of fat) at the lateral field-of-view edges over the
    trunk, cut by the edge and falling off in intensity towards it; one optionally swapped."""
    w, f = arrays["water"].copy(), arrays["fat"].copy()
    z0, z1 = int(0.45 * GRID.shape[0]), int(0.85 * GRID.shape[0])
    yy = GRID.y[None, :, None]
    xx = GRID.x[None, None, :]
    edge = float(GRID.x[-1])
    for side in (-1, 1):
        centre = side * (edge - 20.0)
        r = np.hypot(xx - centre, yy - 10.0)
        falloff = np.clip((edge + GRID.spacing[0] - np.abs(xx)) / 60.0, 0.3, 1.0)
        muscle = (r <= 37.0) * falloff
        sat = ((r > 37.0) & (r <= 45.0)) * falloff
        water_arm = (70 * 0.97 * muscle + 95 * 0.1 * sat).astype(np.float32)
        fat_arm = (70 * 0.03 * muscle + 95 * 0.9 * sat).astype(np.float32)
        if swap_one and side == 1:
            water_arm, fat_arm = fat_arm, water_arm
        arm = np.broadcast_to((r <= 45.0), (z1 - z0, *r.shape[1:]))
        w[z0:z1][arm] = np.broadcast_to(water_arm, arm.shape)[arm] + 1.0
        f[z0:z1][arm] = np.broadcast_to(fat_arm, arm.shape)[arm] + 1.0
    return w, f


def test_arms_at_the_edges_flag_neither_position_nor_swap(clean):
    for swap_one in (False, True):
        w, f = _with_arms(clean, swap_one=swap_one)
        mask = body_mask(w, f)
        assert mask[:, :, 0].any() and mask[:, :, -1].any()  # the arms touch both edges
        checks = _checks(w, f)
        flagged = [c.message for c in checks.values() if c.flag]
        assert not flagged, flagged
        assert position_check(mask, spacing_mm=SPACING).value < 0.5


def test_position_check_flags_a_body_moved_left(clean):
    w, f = clean["water"], clean["fat"]
    shift = 8  # pixels, 71 mm
    moved = [np.roll(a, shift, axis=2) for a in (w, f)]
    for a in moved:
        a[:, :, :shift] = 0.5
    check = position_check(body_mask(*moved), spacing_mm=SPACING)
    assert check.flag and "left-right" in check.message
    assert check.value == pytest.approx(shift * SPACING[0] / 40.0, rel=0.15)


def test_swap_check_finds_a_half_station_swap(clean):
    w, f, labels = clean["water"].copy(), clean["fat"].copy(), clean["labels"].copy()
    rng = np.random.default_rng(2)
    detail = apply_swap_region(GRID, labels, w, f, rng)
    while detail["partial"] != "half" or detail["station"] != 3:
        w, f, labels = clean["water"].copy(), clean["fat"].copy(), clean["labels"].copy()
        detail = apply_swap_region(GRID, labels, w, f, rng)
    check = swap_check(w, f, body_mask(w, f), spacing_mm=SPACING)
    assert check.flag, (detail, check.message)


def test_score_qc_counts_by_hand():
    truth = pd.DataFrame(
        {
            "subject_id": [f"S{i}" for i in range(10)],
            "artefact": [
                "swap",
                "swap",
                "metal",
                "none",
                "none",
                "none",
                "none",
                "noise",
                "none",
                "positioning",
            ],
        }
    )
    swap_flags = ["yes", "no", "no", "yes", "no", "no", "no", "no", "no", "no"]
    metal_flags = ["no", "no", "yes", "no", "no", "no", "no", "no", "no", "no"]
    rows = []
    for check, flags in (("swap", swap_flags), ("metal", metal_flags)):
        for sid, flag in zip(truth["subject_id"], flags, strict=True):
            rows.append((sid, check, 0.0, 1.0, flag, ""))
    rows.append(("S9", "position", np.nan, 1.0, "failed", "x"))
    qc = pd.DataFrame(
        rows, columns=["subject_id", "check", "value", "threshold", "flag", "message"]
    )
    scores = score_qc(qc, truth).set_index(["class", "check"])
    swap = scores.loc[("swap", "swap")]
    assert (swap.n_positive, swap.n_negative, swap.true_pos, swap.false_pos) == (2, 8, 1, 1)
    assert swap.sensitivity == 0.5 and swap.specificity == 7 / 8
    assert swap.sensitivity_low < 0.5 < swap.sensitivity_high
    from statsmodels.stats.proportion import proportion_confint

    assert (swap.specificity_low, swap.specificity_high) == pytest.approx(
        proportion_confint(7, 8, method="wilson")
    )
    metal = scores.loc[("metal", "metal")]
    assert (metal.sensitivity, metal.specificity) == (1.0, 1.0)
    assert scores.loc[("positioning", "position")].n_positive == 0  # its one row failed
    any_swap = scores.loc[("any", "swap")]
    assert (any_swap.n_negative, any_swap.false_pos, any_swap.specificity) == (5, 1, 0.8)
    old = truth.drop(columns="artefact").assign(water_fat_swap=[1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert score_qc(qc, old).set_index(["class", "check"]).loc[("swap", "swap")].equals(swap)
