"""Figures on disk and one self-contained HTML report of a :class:`~.compare.Comparison`.

The report embeds every figure as a base64 PNG, so the single file can be opened anywhere and
sent by e-mail; figures are also written as PNG and SVG files for papers.
"""

from __future__ import annotations

import html
import itertools
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure

from liverfat import __version__
from liverfat.data.atomic import atomic_path, write_text_atomic
from liverfat.evaluation.compare import Comparison
from liverfat.evaluation.plots import (
    bland_altman_plot,
    confusion_plot,
    error_pair_plot,
    figure_to_data_uri,
    figure_to_svg,
    new_figure,
    roc_plot,
    scatter_plot,
)
from liverfat.evaluation.values import compared_with_same


@dataclass
class FigureItem:
    """A rendered figure: a file stem, a caption and the figure itself."""

    stem: str
    caption: str
    figure: Figure


@dataclass
class ExtraSection:
    """A report section beyond the standard ones: a title, a paragraph, a table, figures.

    ``tables`` are further tables, each ``(heading, frame)``, shown after ``table``.
    """

    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    figures: list[FigureItem] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def comparison_figures(comparison: Comparison, *, annotate: int = 5) -> dict[str, list[FigureItem]]:
    """All figures of a comparison, grouped by report section.

    Sections: ``pairs`` (Bland-Altman beside scatter, per subset and pair), ``roc`` (one per
    subset, every pair), ``grading`` (confusion matrices of grades) and ``errors`` (errors of
    two methods against the same reference). A pair no subject of the subset has both values
    of (e.g. a method never run there) gets no figure; :func:`pairs_without_subjects` lists them.
    """
    c = comparison
    sections: dict[str, list[FigureItem]] = {"pairs": [], "roc": [], "grading": [], "errors": []}
    for subset, ids in c.subsets.items():
        sub = c.values.reindex(ids)
        for a, b in c.pairs:
            if c.n_paired(subset, a, b) == 0:
                continue
            sections["pairs"].append(_pair_figure(c, subset, a, b, annotate))
            confusion = c.confusions.get((subset, f"{a}:{b}"))
            if confusion is not None:
                fig = confusion_plot(confusion, title=f"Grades: {b} vs {a} ({subset})")
                sections["grading"].append(
                    FigureItem(
                        f"grades_{_slug(subset)}_{_slug(a)}_{_slug(b)}",
                        f"Steatosis grades, {b} against {a} ({subset})",
                        fig,
                    )
                )
        rocs = {f"{p.replace(':', ' → ')}": roc for (s, p), roc in c.rocs.items() if s == subset}
        if rocs:
            threshold = c.settings.threshold
            fig = roc_plot(rocs, title=f"ROC at {threshold:g} {c.unit} ({subset})")
            sections["roc"].append(FigureItem(f"roc_{_slug(subset)}", f"ROC ({subset})", fig))
        for a, m1, m2 in compared_with_same(c.pairs):
            if sub[[a, m1, m2]].dropna().empty:
                continue
            fig = error_pair_plot(sub[m1] - sub[a], sub[m2] - sub[a], names=(m1, m2), unit=c.unit)
            sections["errors"].append(
                FigureItem(
                    f"errors_{_slug(subset)}_{_slug(m1)}_{_slug(m2)}",
                    f"Errors of {m1} and {m2} against {a} ({subset})",
                    fig,
                )
            )
    return sections


def _pair_figure(c: Comparison, subset: str, a: str, b: str, annotate: int) -> FigureItem:
    """Bland-Altman beside scatter of ``b`` against ``a`` on ``subset``."""
    sub = c.values.reindex(c.subsets[subset])
    fig = new_figure(10.0, 4.2, ncols=2)
    bland_altman_plot(sub[a], sub[b], names=(a, b), annotate=annotate, ax=fig.axes[0], unit=c.unit)
    scatter_plot(
        sub[a], sub[b], names=(a, b), ax=fig.axes[1], unit=c.unit, threshold=c.settings.threshold
    )
    fig.suptitle(f"{b} vs {a}, subset {subset}", fontsize=11)
    stem = f"pair_{_slug(subset)}_{_slug(a)}_{_slug(b)}"
    return FigureItem(stem, f"{b} vs {a} ({subset})", fig)


def pairs_without_subjects(comparison: Comparison) -> list[str]:
    """``"b vs a (subset)"`` for every pair no subject of the subset has both values of."""
    c = comparison
    return [
        f"{b} vs {a} ({subset})"
        for subset in c.subsets
        for a, b in c.pairs
        if c.n_paired(subset, a, b) == 0
    ]


def write_figures(
    sections: dict[str, list[FigureItem]], directory: str | Path, *, dpi: int = 110
) -> list[Path]:
    """Write every figure as ``<stem>.png`` and ``<stem>.svg`` atomically; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for item in itertools.chain.from_iterable(sections.values()):
        png = directory / f"{item.stem}.png"
        with atomic_path(png) as tmp:
            item.figure.savefig(tmp, format="png", dpi=dpi)
        svg = directory / f"{item.stem}.svg"
        write_text_atomic(svg, figure_to_svg(item.figure))
        written += [png, svg]
    return written


def _cell(value: Any, decimals: int = 3) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.{decimals}f}"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def html_table(frame: pd.DataFrame, *, decimals: int = 3, index: bool = False) -> Markup:
    """An escaped HTML table of a frame, floats rounded, NaN shown as ``n/a``."""
    if index:
        frame = frame.reset_index()
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f"<td>{html.escape(_cell(v, decimals))}</td>"
            if isinstance(v, int | float | np.integer | np.floating)
            else f'<td class="t">{html.escape(_cell(v, decimals))}</td>'
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.t { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.meta { color: #555; font-size: 0.9em; } .scroll { overflow-x: auto; }
</style></head><body>
<h1>{{ title }}</h1>
<p class="meta">Target <b>{{ target }}</b> ({{ unit }}); reference <b>{{ reference }}</b>;
steatosis threshold {{ threshold }} {{ unit }}; grade thresholds {{ grades }} {{ unit }};
ICC form {{ icc_form }}; {{ n_boot }} bootstrap replicates (seed {{ seed }}).
Generated {{ created }} by liverfat {{ version }} (Python {{ python }}).</p>
{% if sources %}<p class="meta">Inputs: {{ sources }}</p>{% endif %}

<h2>Method comparison</h2>
<p>One row per subset and pair <i>a</i> vs <i>b</i>; <i>a</i> is the truth. MAE and LoA
(bias ± 1.96 SD of <i>b</i> − <i>a</i>) in {{ unit }}; R² = 1 − SS<sub>res</sub>/SS<sub>tot</sub>
of <i>b</i> predicting <i>a</i>; ROC-AUC, sensitivity and specificity at
{{ threshold }} {{ unit }}.</p>
<div class="scroll">{{ published }}</div>
<details><summary>All statistics, with confidence intervals and notes</summary>
<div class="scroll">{{ full }}</div></details>

<h2>Coverage</h2>
{{ coverage }}
{% if failures %}<details><summary>Failed and flagged rows ({{ n_failures }})</summary>
<div class="scroll">{{ failures }}</div></details>{% endif %}

<h2>Agreement figures</h2>
{% if without_subjects %}<p>No subjects with values of both methods, so no figure:
{{ without_subjects }}.</p>{% endif %}
{% for f in figures.pairs %}<figure><img alt="{{ f.caption }}" src="{{ f.uri }}">
<figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}

<h2>ROC curves</h2>
{% for f in figures.roc %}<figure><img alt="{{ f.caption }}" src="{{ f.uri }}">
<figcaption>{{ f.caption }}</figcaption></figure>
{% else %}<p>No subset has both classes.</p>{% endfor %}

<h2>Steatosis grades</h2>
<div class="scroll">{{ grading }}</div>
{% for f in figures.grading %}<figure><img alt="{{ f.caption }}" src="{{ f.uri }}">
<figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}

{% if errors %}<h2>Correlation of errors</h2>
<p>Errors are method − reference; Bland-Altman of one error against the other.</p>
<div class="scroll">{{ errors }}</div>
{% for f in figures.errors %}<figure><img alt="{{ f.caption }}" src="{{ f.uri }}">
<figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}{% endif %}

<h2>Top outliers</h2>
{% for pair, table in outliers %}<h3>{{ pair }}</h3>
<div class="scroll">{{ table }}</div>{% endfor %}

{% if covariates %}<h2>Covariates</h2>
<p>Spearman correlation of each method's values with each covariate.</p>
<div class="scroll">{{ covariates }}</div>{% endif %}
{% for section in extra %}<h2>{{ section.title }}</h2>
<p>{{ section.text }}</p>{{ section.table }}
{% for heading, table in section.tables %}<h3>{{ heading }}</h3>
<div class="scroll">{{ table }}</div>{% endfor %}
{% for f in section.images %}<figure><img alt="{{ f.caption }}" src="{{ f.uri }}">
<figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}
{% endfor %}
</body></html>
"""
)


def render_report(
    comparison: Comparison,
    *,
    title: str = "liverfat method comparison",
    sources: str = "",
    sections: dict[str, list[FigureItem]] | None = None,
    extra: list[ExtraSection] | None = None,
    dpi: int = 90,
) -> str:
    """The whole report as one HTML string (figures embedded as base64 PNG).

    ``extra`` sections (e.g. a study's outlier review) are appended after the standard ones.
    """
    c = comparison
    sections = comparison_figures(c) if sections is None else sections
    s = c.settings
    return _TEMPLATE.render(
        title=title,
        target=c.target,
        unit=c.unit,
        reference=c.reference or "first method of each pair",
        threshold=f"{s.threshold:g}",
        grades=", ".join(f"{t:g}" for t in s.grade_thresholds),
        icc_form=s.icc_form,
        n_boot=s.n_boot,
        seed=s.seed,
        created=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        python=platform.python_version(),
        sources=sources,
        published=html_table(c.published()),
        full=html_table(c.table),
        coverage=html_table(c.coverage, index=True),
        failures=html_table(c.failures) if len(c.failures) else "",
        n_failures=len(c.failures),
        without_subjects=", ".join(pairs_without_subjects(c)),
        grading=html_table(c.grading),
        errors=html_table(c.error_correlations) if len(c.error_correlations) else "",
        outliers=[(p, html_table(t)) for p, t in c.outliers.items()],
        covariates=html_table(c.covariates) if c.covariates is not None else "",
        figures={name: _embedded(items, dpi) for name, items in sections.items()},
        extra=[
            {
                "title": x.title,
                "text": x.text,
                "table": html_table(x.table) if x.table is not None else "",
                "tables": [(heading, html_table(t)) for heading, t in x.tables],
                "images": _embedded(x.figures, dpi),
            }
            for x in extra or []
        ],
    )


def _embedded(items: list[FigureItem], dpi: int) -> list[dict[str, str]]:
    """Caption and ``data:`` URI of each figure, for the template."""
    return [{"caption": f.caption, "uri": figure_to_data_uri(f.figure, dpi=dpi)} for f in items]


def write_report(
    comparison: Comparison,
    path: str | Path,
    *,
    title: str = "liverfat method comparison",
    sources: str = "",
    sections: dict[str, list[FigureItem]] | None = None,
    extra: list[ExtraSection] | None = None,
) -> Path:
    """Render the report and write it atomically to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html_text = render_report(
        comparison, title=title, sources=sources, sections=sections, extra=extra
    )
    write_text_atomic(path, html_text)
    return path
