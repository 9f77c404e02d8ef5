"""Intervals in the network's space mapped back to target units: by hand, and a variance scale
that recovers a known spread on data with a constructed ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liverfat.deep.uncertainty import (
    Z95,
    apply_variance_scale,
    from_network_space,
    interval,
    to_network_space,
    variance_scale_from,
)


def test_log_space_round_trip_and_unmappable_values():
    values = np.array([0.0, 2.5, 40.0, np.nan, -1.0, -3.0])
    mapped = to_network_space(values, "log")
    assert mapped[:3] == pytest.approx(np.log([1.0, 3.5, 41.0]))
    assert np.isnan(mapped[3:]).all()  # NaN, and values log(y + 1) cannot map
    assert from_network_space(mapped[:3], "log") == pytest.approx(values[:3])
    np.testing.assert_array_equal(to_network_space(values[:3], "none"), values[:3])


def test_log_interval_by_hand():
    value, std, lower, upper = interval(np.array([np.log(3.0)]), np.array([0.5]), "log")
    assert value[0] == pytest.approx(2.0)  # exp(log 3) - 1: the median
    assert lower[0] == pytest.approx(3.0 * np.exp(-0.5 * Z95) - 1)
    assert upper[0] == pytest.approx(3.0 * np.exp(0.5 * Z95) - 1)
    assert std[0] == pytest.approx((upper[0] - lower[0]) / (2 * Z95))
    assert lower[0] > -1 and upper[0] - value[0] > value[0] - lower[0]  # skewed upwards


def _frame(mean: np.ndarray, sd: np.ndarray, transform: str) -> pd.DataFrame:
    value, std, lower, upper = interval(mean, sd, transform)
    n = len(mean)
    return pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(n)],
            "target": "t",
            "value": value,
            "std": std,
            "lower": lower,
            "upper": upper,
            "status": "ok",
        }
    )


@pytest.mark.parametrize("transform", ["none", "log"])
def test_the_variance_scale_recovers_a_known_spread_and_covers_95_percent(transform):
    """Errors with sd 0.3 in the network's space, predicted sd 0.1: the scale is 9, and the
    rescaled intervals cover 95 % of the references."""
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.0, 3.0, 4000)  # log(1 + y) from 0 to about 19 %
    truth = mean + 0.3 * rng.normal(size=mean.size)
    frame = _frame(mean, np.full(mean.size, 0.1), transform)
    reference = {"t": pd.Series(from_network_space(truth, transform), index=frame["subject_id"])}
    scale = variance_scale_from(frame, reference, transform)["t"]
    assert scale == pytest.approx(9.0, rel=0.06)
    out = apply_variance_scale(frame, {"t": scale}, transform)
    ref = reference["t"].to_numpy()
    inside = (out["lower"].to_numpy() <= ref) & (ref <= out["upper"].to_numpy())
    assert inside.mean() == pytest.approx(0.95, abs=0.012)
    np.testing.assert_allclose(out["value"], frame["value"])  # values are not moved
    if transform == "log":
        assert (out["lower"] > -1).all()
        width = out["upper"] - out["lower"]
        assert np.corrcoef(width, out["value"])[0, 1] > 0.9  # wider where the value is higher
