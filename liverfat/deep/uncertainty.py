"""Calibrated intervals of the mean-variance head: a post-hoc variance scale per target.

The network predicts a mean and a log-variance of the target, or of a transform of it
(:data:`TRANSFORMS`); on out-of-fold predictions the variance is rescaled, in the network's
space, by one of :data:`CALIBRATIONS` (default ``robust``: from the median standardised error,
so the reference's rare spurious readings do not widen every interval; docs/deep.md).
Intervals are ``mean +- 1.96 sd`` in that space, mapped back to target units and clipped to
the target's range (:func:`clip_to_ranges`): with ``none`` that is
``value +- 1.96 std``; with ``log`` (``log(y + 1)``, y in target units, e.g. % fat fraction)
they are asymmetric, wider at high values and never below -1, and ``value`` is the back-mapped
mean (the median of the predicted distribution). ``std`` is then the half-width over 1.96.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from liverfat.errors import LiverfatError

#: Two-sided 95 % normal quantile, for the intervals of a mean-variance head.
Z95 = 1.959963984540054
#: Calibrations of the variance scale (:func:`variance_scale_from`).
CALIBRATIONS = ("robust", "quantile", "gaussian")
#: The median of |z| for a standard normal z.
MEDIAN_ABS_NORMAL = 0.6744897501960817
#: Target transforms the network can be trained on: ``none``, or ``log``: log(y + 1).
TRANSFORMS = ("none", "log")


def to_network_space(values: np.ndarray, transform: str) -> np.ndarray:
    """Target values (target units) in the network's space; NaN stays NaN, and so does a value
    ``log`` cannot map (-1 or less: no fat fraction or volume is)."""
    values = np.asarray(values, float)
    if transform != "log":
        return values
    with np.errstate(invalid="ignore", divide="ignore"):
        mapped = np.log1p(values)
    return np.where(np.isfinite(mapped), mapped, np.nan)


def from_network_space(values: np.ndarray, transform: str) -> np.ndarray:
    """The inverse of :func:`to_network_space` (target units)."""
    values = np.asarray(values, float)
    return np.expm1(values) if transform == "log" else values


def interval(
    mean: np.ndarray, sd: np.ndarray, transform: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(value, std, lower, upper)`` in target units from a normal mean and sd in the
    network's space (the 95 % interval is mapped back; ``std`` is its half-width / 1.96)."""
    value = from_network_space(mean, transform)
    lower = from_network_space(mean - Z95 * sd, transform)
    upper = from_network_space(mean + Z95 * sd, transform)
    std = sd if transform == "none" else (upper - lower) / (2 * Z95)
    return value, std, lower, upper


def _network_sd(rows: pd.DataFrame, transform: str) -> np.ndarray:
    """The predicted sd in the network's space, read back from a table's interval."""
    if transform == "none":
        return rows["std"].to_numpy(float)
    upper = to_network_space(rows["upper"], transform)
    return (upper - to_network_space(rows["lower"], transform)) / (2 * Z95)


def variance_scale_from(
    frame: pd.DataFrame,
    reference: dict[str, pd.Series],
    transform: str = "none",
    method: str = "robust",
) -> dict[str, float]:
    """Per target, the factor on the predicted variance that calibrates these rows' intervals.

    ``z = (T(reference) - T(value)) / sd`` in the network's space (T: ``transform``); rows
    without a finite interval or reference are ignored.

    ``robust``: the median of ``|z|`` put at the normal's 0.674, so the intervals cover the
    bulk of the errors as a normal would, whatever a few outliers of the reference do; they are
    intervals for the true value, not for another noisy reference reading. ``quantile``
    (split-conformal with normalised scores): the conformal 95 % quantile of ``|z|`` put at
    1.96, so 95 % of the references fall inside, outliers and reference noise included.
    ``gaussian``: ``mean(z^2) = 1``, right for normal errors, widened by every outlier.
    """
    if method not in CALIBRATIONS:
        raise LiverfatError(f"unknown calibration {method!r}; choose {', '.join(CALIBRATIONS)}")
    scales = {}
    for target, ref in reference.items():
        rows = frame[(frame["target"] == target) & (frame["status"] == "ok")]
        rows = rows.set_index("subject_id")
        y = to_network_space(ref.reindex(rows.index), transform)
        z = (y - to_network_space(rows["value"], transform)) / _network_sd(rows, transform)
        z = np.abs(z[np.isfinite(z)])
        if len(z) < 2:
            scales[target] = 1.0
        elif method == "gaussian":
            scales[target] = float(np.mean(z**2))
        elif method == "robust":
            scales[target] = float((np.median(z) / MEDIAN_ABS_NORMAL) ** 2)
        else:
            level = min(1.0, math.ceil((len(z) + 1) * 0.95) / len(z))
            scales[target] = float((np.quantile(z, level, method="higher") / Z95) ** 2)
    return scales


def apply_variance_scale(
    frame: pd.DataFrame, scales: dict[str, float], transform: str = "none"
) -> pd.DataFrame:
    """Multiply each target's variance (in the network's space) by its scale and rebuild the
    intervals (:func:`interval`)."""
    frame = frame.copy()
    for target, scale in scales.items():
        rows = (frame["target"] == target) & np.isfinite(frame["std"])
        part = frame.loc[rows]
        sd = _network_sd(part, transform) * math.sqrt(scale)
        mean = to_network_space(part["value"], transform)
        _, std, lower, upper = interval(mean, sd, transform)
        frame.loc[rows, "std"], frame.loc[rows, "lower"], frame.loc[rows, "upper"] = (
            std,
            lower,
            upper,
        )
    return frame


def cross_fitted_calibration(
    fold_frames: list[pd.DataFrame],
    reference: dict[str, pd.Series],
    transform: str = "none",
    method: str = "robust",
) -> pd.DataFrame:
    """Out-of-fold predictions, each fold's variance scaled by the factor fitted on the other
    folds (so no fold's intervals are calibrated on its own errors), concatenated."""
    calibrated = []
    for k, frame in enumerate(fold_frames):
        others = pd.concat([f for i, f in enumerate(fold_frames) if i != k], ignore_index=True)
        scales = variance_scale_from(others, reference, transform, method)
        calibrated.append(apply_variance_scale(frame, scales, transform))
    return pd.concat(calibrated, ignore_index=True)


def clip_to_ranges(frame: pd.DataFrame, ranges: dict[str, Sequence[float]]) -> pd.DataFrame:
    """Values and bounds of each target's rows kept inside its (low, high) range: the true value
    lies there, so clipping an interval loses no coverage."""
    frame = frame.copy()
    for target, (low, high) in ranges.items():
        rows = frame["target"] == target
        for column in ("value", "lower", "upper"):
            frame.loc[rows, column] = frame.loc[rows, column].clip(low, high)
    return frame


def saved_variance_scale(path: str | os.PathLike[str]) -> dict[str, float]:
    """The per-target variance scale in the ``run.json`` of an out-of-fold predictions table
    (``oof.csv`` of ``liverfat deep cv``); a clear error when it holds none."""
    from liverfat.data.predictions import PredictionsTable

    scale = PredictionsTable.read(path).run.get("variance_scale")
    if not scale:
        raise LiverfatError(f"{path}: its run.json holds no variance_scale")
    return scale
