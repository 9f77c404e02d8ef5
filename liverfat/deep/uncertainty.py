"""Calibrated intervals of the mean-variance head: a post-hoc variance scale per target.

The network predicts a mean and a log-variance; on out-of-fold predictions the variance is
rescaled so that the standardised errors have unit mean square, and intervals become
``value +- 1.96 std`` (in target units, e.g. % fat fraction).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from liverfat.errors import LiverfatError

#: Two-sided 95 % normal quantile, for the intervals of a mean-variance head.
Z95 = 1.959963984540054


def variance_scale_from(frame: pd.DataFrame, reference: dict[str, pd.Series]) -> dict[str, float]:
    """Per target, the factor on the predicted variance making ``mean(z^2) = 1`` on these rows.

    ``z = (reference - value) / std``; rows without a finite std or reference are ignored.
    """
    scales = {}
    for target, ref in reference.items():
        rows = frame[(frame["target"] == target) & (frame["status"] == "ok")]
        rows = rows.set_index("subject_id")
        y = ref.reindex(rows.index)
        z = (y - rows["value"]) / rows["std"]
        z = z[np.isfinite(z)]
        scales[target] = float(np.mean(z**2)) if len(z) >= 2 else 1.0
    return scales


def apply_variance_scale(frame: pd.DataFrame, scales: dict[str, float]) -> pd.DataFrame:
    """Multiply each target's variance by its scale; intervals become value +- 1.96 std."""
    frame = frame.copy()
    for target, scale in scales.items():
        rows = (frame["target"] == target) & np.isfinite(frame["std"])
        frame.loc[rows, "std"] = frame.loc[rows, "std"] * math.sqrt(scale)
        frame.loc[rows, "lower"] = frame.loc[rows, "value"] - Z95 * frame.loc[rows, "std"]
        frame.loc[rows, "upper"] = frame.loc[rows, "value"] + Z95 * frame.loc[rows, "std"]
    return frame


def saved_variance_scale(path: str | os.PathLike[str]) -> dict[str, float]:
    """The per-target variance scale in the ``run.json`` of an out-of-fold predictions table
    (``oof.csv`` of ``liverfat deep cv``); a clear error when it holds none."""
    from liverfat.data.predictions import PredictionsTable

    scale = PredictionsTable.read(path).run.get("variance_scale")
    if not scale:
        raise LiverfatError(f"{path}: its run.json holds no variance_scale")
    return scale
