"""The water-fat swap detector: its score separates swapped from normal stations."""

from __future__ import annotations

import numpy as np
import pytest

from liverfat.data.dixon import body_mask
from liverfat.data.phantom import Grid, PhantomConfig, build_subject
from liverfat.data.swaps import (
    SWAP_SCORE_MARGIN,
    edge_depth_mm,
    station_swap_score,
    swap_decision,
)
from liverfat.data.ukbiobank.realistic import station_arrays, ukb_station_geometry
from liverfat.data.ukbiobank.synthetic import station_layout


def _scores(stations, spacing_mm) -> list[tuple[float, float]]:
    """(score as given, score with water and fat exchanged) of each (water, fat) station."""
    out = []
    for water, fat in stations:
        mask = body_mask(water, fat)
        out.append(
            (
                station_swap_score(water, fat, mask, spacing_mm=spacing_mm),
                station_swap_score(fat, water, mask, spacing_mm=spacing_mm),
            )
        )
    return out


def _check_separated(scores: list[tuple[float, float]]) -> None:
    for normal, swapped in scores:
        assert normal < -2 * SWAP_SCORE_MARGIN and swapped > 2 * SWAP_SCORE_MARGIN
        assert swapped == pytest.approx(-normal, abs=1e-4)  # exchanging W and F negates it
        assert (swap_decision(normal), swap_decision(swapped)) == ("normal", "swapped")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_score_separates_swapped_from_normal_phantom_stations(index):
    """Phantom subjects (noise, coil field, partial volume, organs) without a swap of their own:
    every station scores normal, and the same station with water and fat exchanged swapped."""
    grid = Grid.at_scale("quarter")
    arrays, truth = build_subject(index, 0, "quarter", PhantomConfig(swap_fraction=0.0), "A")
    assert truth["water_fat_swap"] == 0  # the constructed truth: no station swapped
    water, fat = arrays["water"], arrays["fat"]
    stations = [(water[a:b], fat[a:b]) for a, b in station_layout(water.shape[0]).ranges]
    _check_separated(_scores(stations, grid.spacing[:2]))


def test_score_separates_swapped_from_normal_realistic_stations():
    stations = [station_arrays(g) for g in ukb_station_geometry(shrink=4)]
    spacing = ukb_station_geometry(shrink=4)[0].spacing_mm[:2]
    _check_separated(_scores(stations, spacing))


def test_unsure_and_undefined_scores():
    assert swap_decision(SWAP_SCORE_MARGIN / 2) == "unsure"
    assert swap_decision(float("nan")) == "unsure"
    empty = np.zeros((3, 8, 8), np.float32)
    assert np.isnan(station_swap_score(empty, empty, empty.astype(np.uint8)))


def test_edge_depth_is_in_plane_distance_in_mm():
    mask = np.zeros((2, 9, 9), np.uint8)
    mask[0, 1:8, 1:8] = 1
    depth = edge_depth_mm(mask, (2.0, 3.0))  # x 2 mm, y 3 mm
    assert depth[0, 4, 1] == pytest.approx(2.0)  # one column in from the left edge
    assert depth[0, 1, 4] == pytest.approx(3.0)  # one row in from the top edge
    assert depth[0, 4, 4] == pytest.approx(8.0)  # four columns from either side edge
    assert np.all(depth[1] == 0) and np.all(depth[0][mask[0] == 0] == 0)
