"""Per-target summary of out-of-fold predictions for the ``deep cv`` report.

MAE, R^2 (1 - SSE/SST), Bland-Altman bias and 95 % limits of agreement (bias +- 1.96 SD of the
differences), ROC-AUC for reference >= a threshold (liver fat: 5.5 %), and the share of references
inside the predicted 95 % intervals. The shared ``liverfat.evaluation`` module is the place for
full method comparisons; this is the engine's own quick read-out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score

from liverfat.data.predictions import PredictionsTable

#: Steatosis threshold (% PDFF) for the ROC-AUC of liver-fat targets.
STEATOSIS_PCT = 5.5


def agreement_metrics(
    reference: np.ndarray,
    value: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, float]:
    """MAE, R^2, bias, LoA, AUC at ``threshold`` and interval coverage of paired arrays."""
    difference = value - reference
    bias = float(difference.mean())
    sd = float(difference.std(ddof=1))
    result = {
        "n": len(reference),
        "mae": float(mean_absolute_error(reference, value)),
        "r2": float(r2_score(reference, value)),
        "bias": bias,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "auc": np.nan,
        "coverage95": np.nan,
    }
    if threshold is not None:
        positive = reference >= threshold
        if 0 < positive.sum() < len(positive):
            result["auc"] = float(roc_auc_score(positive, value))
    if lower is not None and upper is not None and np.isfinite(lower).all():
        result["coverage95"] = float(np.mean((reference >= lower) & (reference <= upper)))
    return result


def summary_table(
    tables: Mapping[str, PredictionsTable], references: Mapping[str, pd.Series]
) -> pd.DataFrame:
    """One row per method x target with :func:`agreement_metrics` against ``references``."""
    rows = []
    for method, table in tables.items():
        for target, reference in references.items():
            frame = table.frame[(table.frame["target"] == target) & (table.frame["status"] == "ok")]
            frame = frame.set_index("subject_id")
            ref = reference.reindex(frame.index)
            keep = ref.notna().to_numpy()
            if keep.sum() < 3:
                continue
            threshold = STEATOSIS_PCT if "pdff" in target or "fat_pct" in target else None
            metrics = agreement_metrics(
                ref.to_numpy()[keep],
                frame["value"].to_numpy()[keep],
                frame["lower"].to_numpy()[keep],
                frame["upper"].to_numpy()[keep],
                threshold,
            )
            rows.append({"method": method, "target": target, **metrics})
    return pd.DataFrame(rows)
