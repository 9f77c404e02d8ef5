"""Phantom artefacts (liverfat.data.phantom.artefacts): rates, and what each one does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from liverfat.data.dixon import fat_fraction
from liverfat.data.phantom import Grid, PhantomConfig, build_subject
from liverfat.data.phantom.anatomy import LABELS
from liverfat.data.phantom.artefacts import (
    ARTEFACT_CLASSES,
    DEFAULT_RATES,
    apply_metal,
    apply_positioning,
    apply_severe_noise,
    apply_swap_region,
    draw_artefact,
)
from liverfat.errors import LiverfatError

GRID = Grid.at_scale("quarter")


@pytest.fixture(scope="module")
def subject():
    arrays, _ = build_subject(2, 11, "quarter", PhantomConfig(swap_fraction=0.0), "A")
    return arrays


def _copy(arrays):
    return {k: v.copy() for k, v in arrays.items()}


def test_default_rates_add_up_to_the_study_exclusions():
    assert set(DEFAULT_RATES) == set(ARTEFACT_CLASSES)
    assert sum(DEFAULT_RATES.values()) == pytest.approx(0.036)


def test_draw_frequencies_match_the_rates_and_each_draw_takes_one_random_number():
    rates = {"swap": 0.05, "metal": 0.03, "noise": 0.02, "positioning": 0.1}
    rng = np.random.default_rng(0)
    draws = [draw_artefact(rates, rng) for _ in range(20000)]
    for name, rate in [*rates.items(), ("none", 1 - sum(rates.values()))]:
        count = draws.count(name)
        sd = np.sqrt(20000 * rate * (1 - rate))
        assert abs(count - 20000 * rate) < 4 * sd, (name, count)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [draw_artefact(rates, a) for _ in range(50)] == [
        draw_artefact(rates, b) for _ in range(50)
    ]
    draw_artefact(rates, a)
    b.random()
    assert a.random() == b.random()  # exactly one draw consumed
    with pytest.raises(LiverfatError, match="unknown artefact"):
        draw_artefact({"ghost": 0.1}, a)
    with pytest.raises(LiverfatError, match="at most 1"):
        draw_artefact({"swap": 0.7, "metal": 0.6}, a)


def test_swap_region_inverts_the_fat_fraction_of_the_region_only(subject):
    for seed in range(6):
        arrays = _copy(subject)
        detail = apply_swap_region(
            GRID, arrays["labels"], arrays["water"], arrays["fat"], np.random.default_rng(seed)
        )
        before = fat_fraction(subject["water"], subject["fat"], floor=1.0)
        after = fat_fraction(arrays["water"], arrays["fat"], floor=1.0)
        start, stop = detail["z_slices"]
        assert stop - start >= 0.4 * (GRID.shape[0] / 6) - 1
        region = np.zeros(GRID.shape, bool)
        middle = int(np.searchsorted(GRID.x, 0.0))
        cols = {None: slice(None), "left": slice(middle, None), "right": slice(None, middle)}
        region[start:stop, :, cols[detail["side"]]] = True
        body = subject["labels"] > 0
        np.testing.assert_allclose(after[region & body], 100 - before[region & body], atol=1e-3)
        np.testing.assert_array_equal(after[~region], before[~region])


def test_metal_void_has_the_volume_it_reports_and_a_bright_rim(subject):
    sites = set()
    for seed in range(6):
        arrays = _copy(subject)
        detail = apply_metal(
            GRID, arrays["labels"], arrays["water"], arrays["fat"], np.random.default_rng(seed), 0.8
        )
        sites.add(detail["site"])
        assert 30 * 0.8 <= detail["void_ml"] <= 300 * 1.2
        total = arrays["water"] + arrays["fat"]
        void = (total < 8) & (subject["labels"] > 0) & (subject["labels"] != LABELS["lung"])
        labels, _ = ndimage.label(void)
        largest = np.bincount(labels.ravel())[1:].max() * GRID.voxel_ml
        assert largest == pytest.approx(detail["void_ml"], rel=0.2)
        ratio = total / np.maximum(subject["water"] + subject["fat"], 1e-3)
        bright = ratio[(ratio > 1.4) & (subject["labels"] > 0)]
        assert bright.size > 0 and np.median(bright) == pytest.approx(detail["rim_factor"], rel=0.1)
    assert len(sites) >= 2


def test_severe_noise_multiplies_the_noise_sd_by_its_factor():
    rng = np.random.default_rng(3)
    shape = (40, 60, 60)
    water = np.hypot(rng.normal(0, 0.8, shape), rng.normal(0, 0.8, shape)).astype(np.float32)
    fat = water.copy()
    sd0 = np.sqrt(np.mean(water**2) / 2)
    detail = apply_severe_noise(water, fat, np.random.default_rng(4), 0.8)
    assert 3 <= detail["noise_factor"] <= 8
    for image in (water, fat):
        sd = np.sqrt(np.mean(image.astype(np.float64) ** 2) / 2)  # Rayleigh ML estimate
        assert sd / sd0 == pytest.approx(detail["noise_factor"], rel=0.15)


def _trunk_pose(labels):
    body = labels[GRID.shape[0] // 2] > 0
    yy, xx = np.nonzero(body)
    x, y = GRID.x[xx], GRID.y[yy]
    angle = 0.5 * np.degrees(
        np.arctan2(2 * np.mean((x - x.mean()) * (y - y.mean())), x.var() - y.var())
    )
    return x.mean(), y.mean(), angle, xx.min() == 0 or xx.max() == GRID.shape[2] - 1


def test_positioning_moves_or_rolls_the_body_as_reported(subject):
    x0, y0, a0, _ = _trunk_pose(subject["labels"])
    modes = set()
    for seed in range(15):
        labels = subject["labels"].copy()
        detail = apply_positioning(GRID, labels, np.random.default_rng(seed))
        modes.add(detail["mode"])
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= set(LABELS.values())
        x, y, angle, at_edge = _trunk_pose(labels)
        if detail["mode"] == "roll":
            assert 10 <= abs(detail["roll_deg"]) <= 25
            assert angle - a0 == pytest.approx(detail["roll_deg"], abs=3)
            assert abs(x - x0) < 10
        elif detail["mode"] == "lateral":
            assert (labels[:, :, 0] > 0).any() or (labels[:, :, -1] > 0).any()  # cut by the edge
            assert np.sign(x - x0) == np.sign(detail["shift_x_mm"]) and abs(x - x0) > 50
        else:
            assert y - y0 == pytest.approx(detail["shift_y_mm"], abs=15)
    assert modes == {"lateral", "roll", "anterior-posterior"}
