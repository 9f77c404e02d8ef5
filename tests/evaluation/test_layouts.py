"""The comparison table as text: the published layout, Markdown and LaTeX."""

from __future__ import annotations

from liverfat.evaluation.compare import comparison_table
from liverfat.evaluation.layouts import PUBLISHED_COLUMNS, published_layout, to_latex, to_markdown
from liverfat.evaluation.values import default_pairs, value_table
from tests.evaluation.conftest import TARGET


def test_published_layout_and_text_outputs(tables):
    values = value_table(tables, TARGET)
    table = comparison_table(values, default_pairs(list(values.columns), "reference"), n_boot=0)
    layout = published_layout(table)
    assert tuple(layout.columns) == PUBLISHED_COLUMNS
    assert list(layout["Pair"]) == [
        "reference vs atlas",
        "reference vs network",
        "atlas vs network",
    ]
    assert "±" in layout.loc[0, "LoA"]
    md = to_markdown(layout)
    assert md.splitlines()[0].startswith("| Subset | Pair | N | MAE | R² | LoA |")
    assert len(md.splitlines()) == 2 + 3
    tex = to_latex(layout, caption="PDFF (%)")
    assert r"$\pm$" in tex and r"R$^2$" in tex and r"PDFF (\%)" in tex
    assert tex.count(r"\\") == 4
