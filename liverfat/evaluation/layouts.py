"""Text layouts of the comparison table: the published layout, Markdown and LaTeX.

:func:`published_layout` turns :func:`~liverfat.evaluation.compare.comparison_table` into text
cells laid out as in the UK Biobank liver-fat study; :func:`to_markdown` and :func:`to_latex`
write any frame of text cells as a GitHub-flavoured Markdown or a booktabs LaTeX table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns of the published table, in order (see :func:`published_layout`).
PUBLISHED_COLUMNS = (
    "Subset",
    "Pair",
    "N",
    "MAE",
    "R²",
    "LoA",
    "r",
    "ICC",
    "ROC-AUC",
    "Sensitivity",
    "Specificity",
)


def published_layout(table: pd.DataFrame, *, decimals: int = 3) -> pd.DataFrame:
    """The comparison table laid out as in the UK Biobank liver-fat study, as text cells.

    One row per subset and pair, columns :data:`PUBLISHED_COLUMNS`. LoA is ``bias ± half-width``
    (1.96 SD); MAE and LoA are in the target unit, the rest dimensionless. Undefined values are
    shown as ``n/a`` (the ``note`` column of
    :func:`~liverfat.evaluation.compare.comparison_table` says why).
    """

    def fmt(value: float) -> str:
        return f"{value:.{decimals}f}" if np.isfinite(value) else "n/a"

    rows = []
    for _, row in table.iterrows():
        half = (row["loa_upper"] - row["loa_lower"]) / 2.0
        loa = f"{row['bias']:.{decimals}f} ± {half:.{decimals}f}" if np.isfinite(half) else "n/a"
        rows.append(
            {
                "Subset": row["subset"],
                "Pair": f"{row['method_a']} vs {row['method_b']}",
                "N": str(int(row["n"])),
                "MAE": fmt(row["mae"]),
                "R²": fmt(row["r2"]),
                "LoA": loa,
                "r": fmt(row["r"]),
                "ICC": fmt(row["icc"]),
                "ROC-AUC": fmt(row["auc"]),
                "Sensitivity": fmt(row["sensitivity"]),
                "Specificity": fmt(row["specificity"]),
            }
        )
    return pd.DataFrame(rows, columns=list(PUBLISHED_COLUMNS))


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of text cells (no index)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(frame: pd.DataFrame, *, caption: str = "", label: str = "") -> str:
    """A ``tabular`` (booktabs) LaTeX table of a frame of text cells, special characters escaped."""

    special = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "²": r"$^2$",
    }

    def esc(text: object) -> str:
        return "".join(special.get(char, char) for char in str(text))

    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{esc(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\begin{tabular}{" + "l" * 2 + "r" * (len(frame.columns) - 2) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(esc(c) for c in frame.columns) + r" \\")
    lines.append(r"\midrule")
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(esc(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


#: Sets of the grading table, in order, with their column labels (see :func:`grading_layout`).
GRADING_SETS = {"train": "training", "train_cv": "training CV", "test": "test"}


def grading_layout(metrics: pd.DataFrame, *, decimals: int = 2) -> pd.DataFrame:
    """The grading table of the steatosis-grading study, as text cells.

    ``metrics`` is long (``model, set, auc, auc_lower, auc_upper, accuracy, accuracy_lower,
    accuracy_upper``, proportions 0-1), as :func:`liverfat.grading.run_grading` writes it. One
    row per model, in the order first met; per set of :data:`GRADING_SETS` that is present, the
    columns ``AUC <set> (95% CI)`` as ``0.81 (0.70-0.90)`` and ``ACC <set> (95% CI)`` in % with
    one decimal, as ``78.3 (66.0-87.0)``; ``n/a`` where undefined.
    """

    def cell(value: float, low: float, high: float, scale: float, places: int) -> str:
        if not np.isfinite(value):
            return "n/a"
        text = f"{value * scale:.{places}f}"
        if np.isfinite(low) and np.isfinite(high):
            text += f" ({low * scale:.{places}f}-{high * scale:.{places}f})"
        return text

    present = [s for s in GRADING_SETS if s in set(metrics["set"])]
    rows = []
    for model in dict.fromkeys(metrics["model"]):
        row = {"Model": model}
        for name in present:
            hit = metrics[(metrics["model"] == model) & (metrics["set"] == name)]
            label = GRADING_SETS[name]
            if hit.empty:
                row[f"AUC {label} (95% CI)"] = row[f"ACC {label} (95% CI), %"] = "n/a"
                continue
            m = hit.iloc[0]
            row[f"AUC {label} (95% CI)"] = cell(
                m["auc"], m["auc_lower"], m["auc_upper"], 1.0, decimals
            )
            row[f"ACC {label} (95% CI), %"] = cell(
                m["accuracy"], m["accuracy_lower"], m["accuracy_upper"], 100.0, 1
            )
        rows.append(row)
    return pd.DataFrame(rows)
