"""Linear calibration of the raw atlas readout to the reference, fitted on a validation set."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from liverfat.evaluation.agreement import agreement


def error_summary(reference: pd.Series, value: pd.Series) -> dict[str, float]:
    """MAE, Pearson r, bias and 95% limits of agreement of ``value`` against ``reference``."""
    summary = agreement(reference, value)
    return {k: summary[k] for k in ("n", "mae", "r", "bias", "loa_lower", "loa_upper")}


@dataclass
class LinearCalibration:
    """``calibrated = slope * raw + intercept`` (units of the target, e.g. PDFF %).

    Attributes
    ----------
    slope, intercept:
        The line of reference on raw readout.
    method:
        ``theil-sen`` (default: the median of pairwise slopes and of the residual offsets, so
        a few gross outliers such as a water-fat swap reading ~98% do not tilt the line) or
        ``least-squares``.
    n:
        Subjects it was fitted on.
    before, after:
        :func:`error_summary`, raw and calibrated, on those subjects less the ``flagged`` ones
        (probable water-fat swaps and the like), as the comparison tables count them.
    n_flagged:
        Fitted-on subjects left out of ``before`` and ``after``.
    note:
        Why the identity was kept, when it was.
    """

    slope: float = 1.0
    intercept: float = 0.0
    n: int = 0
    method: str = "theil-sen"
    before: dict | None = None
    after: dict | None = None
    n_flagged: int = 0
    note: str = ""

    @classmethod
    def fit(
        cls,
        raw: pd.Series,
        reference: pd.Series,
        *,
        min_subjects: int = 3,
        method: str = "theil-sen",
        flagged: pd.Series | None = None,
    ) -> LinearCalibration:
        """Fit on subjects having both a raw readout and a reference (``method``: see class).

        ``flagged`` (bool by subject) marks doubtful readouts: the robust line still sees them,
        the before/after summaries do not.
        """
        pair = pd.concat([raw.rename("raw"), reference.rename("ref")], axis=1).dropna()
        if len(pair) < min_subjects or pair["raw"].nunique() < 2:
            return cls(
                n=len(pair),
                method=method,
                note=f"{len(pair)} usable subjects (< {min_subjects}): identity kept",
            )
        if method == "theil-sen":
            from scipy.stats import theilslopes

            slope = theilslopes(pair["ref"], pair["raw"])[0]
            intercept = float(np.median(pair["ref"] - slope * pair["raw"]))
        elif method == "least-squares":
            slope, intercept = np.polyfit(pair["raw"], pair["ref"], 1)
        else:
            raise ValueError(f"unknown calibration method {method!r}")
        calibration = cls(float(slope), float(intercept), int(len(pair)), method)
        doubtful = pd.Series(False, index=pair.index)
        if flagged is not None:
            doubtful = flagged.reindex(pair.index).fillna(False).astype(bool)
        trusted = pair[~doubtful]
        calibration.n_flagged = int(doubtful.sum())
        calibration.before = error_summary(trusted["ref"], trusted["raw"])
        calibration.after = error_summary(trusted["ref"], calibration.apply(trusted["raw"]))
        return calibration

    def apply(self, raw, bounds: tuple[float, float] = (-np.inf, np.inf)):
        """Calibrated values (same type as ``raw``), kept inside ``bounds`` (the target's range
        on the card: a line fitted on 0-40 % gives -1.6 % to a raw 0.2 %)."""
        return np.clip(raw * self.slope + self.intercept, *bounds)

    def to_dict(self) -> dict:
        return asdict(self)
