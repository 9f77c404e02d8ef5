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
