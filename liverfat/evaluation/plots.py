"""Figures for method comparison (matplotlib, no pyplot: safe headless and in threads).

Every function draws into ``ax`` when given, else into a new :class:`~matplotlib.figure.Figure`
rendered by the Agg canvas, and returns the figure. Values are in the target unit (``unit``,
``"%"`` for PDFF). Pairs are ``(a, b)`` with ``a`` the reference: differences are ``b - a``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from liverfat.evaluation.agreement import bland_altman, paired
from liverfat.evaluation.classification import Roc


def new_figure(width_in: float = 5.0, height_in: float = 4.0, ncols: int = 1) -> Figure:
    """A Figure on an Agg canvas (size in inches), with ``ncols`` axes side by side."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    fig.subplots(1, ncols)
    return fig


def _axes(ax: Axes | None, width_in: float = 5.0, height_in: float = 4.0) -> Axes:
    if ax is not None:
        return ax
    return new_figure(width_in, height_in).axes[0]


def bland_altman_plot(
    a: ArrayLike | pd.Series,
    b: ArrayLike | pd.Series,
    *,
    names: Sequence[str] = ("a", "b"),
    annotate: int = 5,
    ax: Axes | None = None,
    title: str = "",
    unit: str = "%",
    multiplier: float = 1.96,
) -> Figure:
    """Difference ``b - a`` against the pair mean, with bias, limits of agreement and outliers.

    The ``annotate`` points with the largest ``|b - a|`` are labelled with their subject id
    when ``a`` and ``b`` are Series indexed by subject_id.
    """
    ax = _axes(ax)
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        frame = pd.concat({"a": a, "b": b}, axis=1).dropna()
        x, y, ids = frame["a"].to_numpy(), frame["b"].to_numpy(), frame.index.astype(str)
    else:
        x, y = paired(a, b)
        ids = None
    mean, diff = (x + y) / 2.0, y - x
    ax.scatter(mean, diff, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    if x.size >= 3:
        ba = bland_altman(y, x, multiplier=multiplier)
        for level, style, label in (
            (ba.bias, "-", f"bias {ba.bias:+.2f}"),
            (ba.loa_upper, "--", f"+{multiplier:g} SD {ba.loa_upper:+.2f}"),
            (ba.loa_lower, "--", f"-{multiplier:g} SD {ba.loa_lower:+.2f}"),
        ):
            ax.axhline(level, color="tab:red", linestyle=style, linewidth=1)
            ax.annotate(
                label,
                xy=(1.0, level),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                fontsize=8,
                color="tab:red",
            )
    if ids is not None and annotate > 0 and x.size:
        for i in np.argsort(-np.abs(diff), kind="mergesort")[:annotate]:
            ax.annotate(
                ids[i],
                xy=(mean[i], diff[i]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                color="0.25",
            )
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xlabel(f"mean of {names[0]} and {names[1]} ({unit})")
    ax.set_ylabel(f"{names[1]} - {names[0]} ({unit})")
    ax.set_title(title or f"Bland-Altman: {names[1]} vs {names[0]}", fontsize=10)
    return ax.figure


def scatter_plot(
    a: ArrayLike | pd.Series,
    b: ArrayLike | pd.Series,
    *,
    names: Sequence[str] = ("a", "b"),
    ax: Axes | None = None,
    title: str = "",
    unit: str = "%",
    threshold: float | None = None,
) -> Figure:
    """``b`` against ``a`` with the identity line, least-squares fit and cut-off lines."""
    ax = _axes(ax)
    x, y = paired(a, b)
    ax.scatter(x, y, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    if x.size:
        lo = float(min(x.min(), y.min()))
        hi = float(max(x.max(), y.max()))
        pad = 0.03 * (hi - lo or 1.0)
        lims = (lo - pad, hi + pad)
        ax.plot(lims, lims, color="0.5", linewidth=1, label="identity")
        if x.size >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            ax.plot(
                lims,
                [intercept + slope * v for v in lims],
                color="tab:red",
                linewidth=1,
                label=f"fit y = {intercept:.2f} + {slope:.2f} x",
            )
        if threshold is not None:
            ax.axvline(threshold, color="tab:orange", linestyle=":", linewidth=1)
            ax.axhline(threshold, color="tab:orange", linestyle=":", linewidth=1)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"{names[0]} ({unit})")
    ax.set_ylabel(f"{names[1]} ({unit})")
    ax.set_title(title or f"{names[1]} vs {names[0]}", fontsize=10)
    return ax.figure


def roc_plot(rocs: Mapping[str, Roc], *, ax: Axes | None = None, title: str = "") -> Figure:
    """ROC curves of several methods, with AUC and its interval in the legend."""
    ax = _axes(ax, 4.5, 4.5)
    for name, roc in rocs.items():
        ax.plot(
            roc.fpr,
            roc.tpr,
            drawstyle="steps-post",
            linewidth=1.5,
            label=f"{name}: AUC {roc.auc:.3f} [{roc.lower:.3f}, {roc.upper:.3f}]",
        )
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC", fontsize=10)
    if rocs:
        ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def confusion_plot(confusion: pd.DataFrame, *, ax: Axes | None = None, title: str = "") -> Figure:
    """Counts of reference (rows) against predicted (columns) categories as a heat map."""
    ax = _axes(ax, 4.0, 3.6)
    counts = confusion.to_numpy()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    half = counts.max() / 2.0 if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=9,
                color="white" if value > half else "black")  # fmt: skip
    ax.set_xticks(range(counts.shape[1]), [str(c) for c in confusion.columns])
    ax.set_yticks(range(counts.shape[0]), [str(c) for c in confusion.index])
    ax.set_xlabel(str(confusion.columns.name or "predicted"))
    ax.set_ylabel(str(confusion.index.name or "reference"))
    ax.set_title(title or "Confusion", fontsize=10)
    return ax.figure


def error_pair_plot(
    errors_a: pd.Series,
    errors_b: pd.Series,
    *,
    names: Sequence[str] = ("method a", "method b"),
    ax: Axes | None = None,
    unit: str = "%",
) -> Figure:
    """The errors of two methods on their common subjects, one point per subject."""
    ax = _axes(ax, 4.5, 4.5)
    a, b = paired(errors_a, errors_b)
    ax.scatter(a, b, s=14, alpha=0.7, color="tab:purple", edgecolors="none")
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.axvline(0, color="0.6", linewidth=0.8)
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        r = float(np.corrcoef(a, b)[0, 1])
        ax.set_title(f"Errors: {names[0]} vs {names[1]} (r = {r:.2f}, n = {a.size})", fontsize=10)
    else:
        ax.set_title(f"Errors: {names[0]} vs {names[1]}", fontsize=10)
    ax.set_xlabel(f"{names[0]} - reference ({unit})")
    ax.set_ylabel(f"{names[1]} - reference ({unit})")
    return ax.figure


def learning_curve_plot(
    summary: pd.DataFrame, *, unit: str = "%", against: str = "truth", title: str = ""
) -> Figure:
    """MAE and R² against the number of training subjects, one line per method.

    ``summary`` has the columns of :func:`liverfat.evaluation.curves.curve_summary`
    (``method``, ``n_train``, ``mae_median`` / ``_min`` / ``_max``, ``r2_median`` / ``_min`` /
    ``_max``, ``repeats``): lines join the medians over repeats, bands span their min to max. The
    x axis is logarithmic, ticked at the training sizes; MAE is in ``unit``, scored against
    ``against`` (the truth or the reference) on the held-out part.
    """
    fig = new_figure(10.0, 4.2, ncols=2)
    sizes = sorted({int(n) for n in summary["n_train"]}) if len(summary) else []
    for ax, key, label in (
        (fig.axes[0], "mae", f"MAE against {against} ({unit})"),
        (fig.axes[1], "r2", f"R² against {against}"),
    ):
        for method, rows in summary.groupby("method", sort=True):
            rows = rows.sort_values("n_train")
            n = rows["n_train"].to_numpy(float)
            (line,) = ax.plot(n, rows[f"{key}_median"], marker="o", markersize=4, label=method)
            ax.fill_between(
                n, rows[f"{key}_min"], rows[f"{key}_max"], color=line.get_color(), alpha=0.2
            )
        if sizes:
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.minorticks_off()
        ax.set_xlabel("training subjects with a reference (N)")
        ax.set_ylabel(label)
        ax.grid(True, color="0.9", linewidth=0.8)
    if len(summary):
        repeats = int(summary["repeats"].max())
        fig.axes[0].legend(fontsize=8, loc="upper right")
        spread = f"{repeats} repeats; line: median, band: min-max" if repeats > 1 else "1 repeat"
        fig.suptitle(title or f"Learning curves ({spread})", fontsize=11)
    return fig


def repeatability_plot(
    pairs: Mapping[str, pd.DataFrame],
    *,
    visits: Sequence[int] = (2, 3),
    unit: str = "%",
    annotate: int = 3,
    ncols: int = 2,
) -> Figure:
    """Bland-Altman of the second visit minus the first, one panel per method.

    ``pairs`` maps a method (or ``reference``, ``truth``) to its
    :func:`liverfat.evaluation.repeatability.visit_pairs` frame (index participant, columns
    ``first`` and ``second`` in ``unit``); the ``annotate`` largest differences are labelled with
    their participant.
    """
    names = list(pairs)
    cols = max(1, min(ncols, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    first, second = (f"visit {v}" for v in visits)
    for ax, name in zip(axes, names, strict=False):
        frame = pairs[name]
        bland_altman_plot(
            frame["first"],
            frame["second"],
            names=(first, second),
            annotate=annotate,
            ax=ax,
            title=f"{name}: {second} - {first} (n = {len(frame)})",
            unit=unit,
        )
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    return fig


def review_figure(
    image_pct: ArrayLike,
    *,
    title: str = "",
    pixel_mm: Sequence[float] = (1.0, 1.0),
    vmax_pct: float = 50.0,
    ax: Axes | None = None,
) -> Figure:
    """A subject's fat-fraction slice (%) with a colour bar, for reviewing the subject by eye.

    Parameters
    ----------
    image_pct:
        2-D fat fraction in percent, rows top to bottom as shown (for a coronal slice of
        :func:`liverfat.data.preview.coronal_slice`, superior at the top, patient right on the
        left); NaN is drawn as background.
    pixel_mm:
        Row and column pixel size (mm), so the image keeps its physical aspect ratio.
    vmax_pct:
        Fat fraction (%) at the top of the colour scale (0 at the bottom).
    """
    image = np.asarray(image_pct, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"a review image is 2-D, got shape {image.shape}")
    ax = _axes(ax, 4.0, 4.5)
    shown = ax.imshow(
        image,
        cmap="magma",
        vmin=0.0,
        vmax=vmax_pct,
        aspect=float(pixel_mm[0]) / float(pixel_mm[1]),
        interpolation="nearest",
    )
    ax.figure.colorbar(shown, ax=ax, label="fat fraction (%)")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def figure_to_png(fig: Figure, *, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_to_data_uri(fig: Figure, *, dpi: int = 110) -> str:
    """The figure as a ``data:image/png;base64,...`` URI for an ``<img>`` in a standalone page."""
    return "data:image/png;base64," + base64.b64encode(figure_to_png(fig, dpi=dpi)).decode("ascii")


def figure_to_svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prologue)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def image_grid(paths: list[Path], titles: list[str], *, ncols: int = 6) -> Figure:
    """The PNG images at ``paths`` (e.g. QC thumbnails) in a grid, each titled, axes off."""
    import matplotlib.image

    nrows = max(1, -(-len(paths) // ncols))
    fig = Figure(figsize=(2.0 * min(ncols, len(paths) or 1), 3.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, min(ncols, len(paths) or 1), squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, path, title in zip(axes, paths, titles, strict=False):
        ax.imshow(matplotlib.image.imread(path))
        ax.set_title(title, fontsize=8)
    return fig
