"""Learning-curve statistics and figure, against numpy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from liverfat.evaluation.curves import SUMMARY_COLUMNS, curve_cell, curve_summary
from liverfat.evaluation.plots import figure_to_png, learning_curve_plot


def test_curve_cell_equals_scikit_learn_and_drops_missing_pairs():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(30)]
    truth = pd.Series(rng.lognormal(1.2, 0.7, 30), index=ids)
    predicted = truth + rng.normal(0.5, 1.5, 30)
    predicted.iloc[[3, 7]] = np.nan  # failed predictions
    keep = predicted.notna()
    cell = curve_cell(truth, predicted)
    assert cell["n_held_out"] == 28
    assert cell["mae"] == pytest.approx(mean_absolute_error(truth[keep], predicted[keep]))
    assert cell["r2"] == pytest.approx(r2_score(truth[keep], predicted[keep]))
    assert np.isnan(curve_cell(truth[:2], predicted[:2])["mae"])  # fewer than 3 pairs


def _cells() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        {
            "method": m,
            "n_train": n,
            "repeat": r,
            "mae": float(rng.uniform(1, 5)),
            "r2": float(rng.uniform(0, 1)),
            "n_held_out": 20 - r,
        }  # fmt: skip
        for m in ("atlas", "network")
        for n in (10, 20, 40)
        for r in range(3)
    ]
    return pd.DataFrame(rows)


def test_curve_summary_is_median_and_range_over_repeats():
    cells = _cells()
    summary = curve_summary(cells)
    assert list(summary.columns) == list(SUMMARY_COLUMNS) and len(summary) == 6
    for _, row in summary.iterrows():
        part = cells[(cells["method"] == row["method"]) & (cells["n_train"] == row["n_train"])]
        for key in ("mae", "r2"):
            assert row[f"{key}_median"] == pytest.approx(np.median(part[key]))
            assert row[f"{key}_min"] == part[key].min() and row[f"{key}_max"] == part[key].max()
        assert row["repeats"] == 3 and row["n_held_out"] == 18
    assert curve_summary(cells.iloc[:0]).empty


def test_learning_curve_plot_draws_one_line_per_method_on_a_log_axis():
    summary = curve_summary(_cells())
    fig = learning_curve_plot(summary, against="truth")
    assert len(fig.axes) == 2
    for ax, key in zip(fig.axes, ("mae", "r2"), strict=True):
        assert ax.get_xscale() == "log"
        assert [line.get_label() for line in ax.get_lines()] == ["atlas", "network"]
        network = summary[summary["method"] == "network"]
        np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), network[f"{key}_median"])
        assert len(ax.collections) == 2  # a min-max band per method
    assert "truth" in fig.axes[0].get_ylabel()
    assert figure_to_png(fig)[:4] == b"\x89PNG"
