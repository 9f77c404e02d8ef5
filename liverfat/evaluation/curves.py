"""Learning curves: agreement on a fixed held-out part against the number of training subjects.

A cell is one method fitted on ``n_train`` subjects in one repeat and scored on the held-out
part; :func:`curve_cell` gives its MAE and R² (from :func:`~.agreement.agreement`), and
:func:`curve_summary` the median and range over repeats per method and size, the table a
learning-curve figure (:func:`~.plots.learning_curve_plot`) draws.
"""

from __future__ import annotations

import pandas as pd
from numpy.typing import ArrayLike

from liverfat.evaluation.agreement import agreement

#: Columns of the table of cells (one row per method, training size and repeat).
CELL_COLUMNS = ("method", "n_train", "repeat", "mae", "r2", "n_held_out")
#: Columns of :func:`curve_summary`.
SUMMARY_COLUMNS = (
    "method",
    "n_train",
    "repeats",
    "mae_median",
    "mae_min",
    "mae_max",
    "r2_median",
    "r2_min",
    "r2_max",
    "n_held_out",
)


def curve_cell(truth: ArrayLike | pd.Series, predicted: ArrayLike | pd.Series) -> dict[str, float]:
    """``mae`` (target unit), ``r2`` (1 - SS_res / SS_tot of the predictions against the truth)
    and ``n_held_out`` (held-out subjects with both values; MAE and R² are NaN below 3)."""
    result = agreement(truth, predicted)
    return {"mae": result["mae"], "r2": result["r2"], "n_held_out": int(result["n"])}


def curve_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per method and training size: repeats, median / min / max of MAE and R² over repeats
    (NaN cells left out), and the smallest number of held-out subjects scored."""
    if cells.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    grouped = cells.groupby(["method", "n_train"], sort=True)
    summary = grouped.agg(
        repeats=("repeat", "nunique"),
        mae_median=("mae", "median"),
        mae_min=("mae", "min"),
        mae_max=("mae", "max"),
        r2_median=("r2", "median"),
        r2_min=("r2", "min"),
        r2_max=("r2", "max"),
        n_held_out=("n_held_out", "min"),
    )
    return summary.reset_index()[list(SUMMARY_COLUMNS)]
