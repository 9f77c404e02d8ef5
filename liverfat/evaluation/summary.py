"""Per-target summary of out-of-fold predictions: an engine command's quick read-out
(``liverfat deep cv``, ``liverfat baseline cv``).

MAE, R^2, Bland-Altman bias and 95 % limits of agreement and, for liver fat, ROC-AUC for
reference >= 5.5 %, all from :mod:`liverfat.evaluation`; plus the share of references inside the
predicted 95 % intervals. ``liverfat compare`` is the place for full method comparisons; this is
the engine's own quick read-out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.agreement import agreement
from liverfat.evaluation.classification import STEATOSIS_THRESHOLD_PCT, roc_analysis

SUMMARY_KEYS = ("n", "mae", "r2", "bias", "loa_lower", "loa_upper")


def summary_table(
    tables: Mapping[str, PredictionsTable], references: Mapping[str, pd.Series]
) -> pd.DataFrame:
    """One row per method x target: agreement with ``references``, AUC, interval coverage."""
    rows = []
    for method, table in tables.items():
        for target, reference in references.items():
            frame = table.frame[(table.frame["target"] == target) & (table.frame["status"] == "ok")]
            frame = frame.set_index("subject_id")
            frame = frame[reference.reindex(frame.index).notna()]
            if len(frame) < 3:
                continue
            ref = reference.reindex(frame.index)
            summary = agreement(ref, frame["value"])
            row = {"method": method, "target": target, **{k: summary[k] for k in SUMMARY_KEYS}}
            row["auc"] = np.nan
            positive = ref >= STEATOSIS_THRESHOLD_PCT
            if ("pdff" in target or "fat_pct" in target) and 0 < positive.sum() < len(positive):
                row["auc"] = roc_analysis(ref, frame["value"]).auc
            lower, upper = frame["lower"], frame["upper"]
            inside = (ref >= lower) & (ref <= upper)
            row["coverage95"] = float(inside.mean()) if np.isfinite(lower).all() else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def write_cv_summary(
    oof: PredictionsTable, references: Mapping[str, pd.Series], out: str | os.PathLike[str]
) -> str:
    """Write ``oof.csv`` (the out-of-fold table) and ``metrics.csv`` (:func:`summary_table`)
    into ``out``; return the summary as text for the terminal."""
    out = Path(out)
    oof.write(out / "oof.csv")
    summary = summary_table({oof.run["method"]: oof}, references)
    summary.to_csv(out / "metrics.csv", index=False, float_format="%.4g")
    text = summary.to_string(index=False, float_format=lambda v: f"{v:.3g}")
    return f"{text}\nout-of-fold predictions: {out / 'oof.csv'}"
