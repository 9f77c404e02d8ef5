"""A predicted mask against its reference, drawn as contours on the subject's image.

Arrays are ``(z, y, x)`` as SimpleITK's ``GetArrayFromImage`` gives them, spacing in mm in the
same order. For the anatomical picture below the volume should be LPS-oriented (x toward the
patient's left, y posterior, z superior; :func:`liverfat.data.preview.mask_overlay_volumes`
gives such arrays): axial views then show anterior at the top and the patient's right on the
left, coronal and sagittal views superior at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from liverfat.evaluation.plots import new_figure
from liverfat.evaluation.segmentation import dice

REFERENCE_COLOUR = "#00d0ff"  # cyan and orange stay apart on grey and for most colour vision
PREDICTED_COLOUR = "#ff8c00"


@dataclass(frozen=True)
class _View:
    name: str
    axis: int  # the array axis the slice is taken across
    flip_rows: bool  # z runs inferior to superior: flipped so superior is at the top


_VIEWS = (_View("axial", 0, False), _View("coronal", 1, True), _View("sagittal", 2, True))


def _slice_index(mask: np.ndarray, axis: int) -> int:
    """The slice across ``axis`` holding the most mask voxels (the middle one if empty)."""
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def _crop(masks: np.ndarray, pixel_mm: Sequence[float], margin_mm: float | None):
    """Row and column slices around the masks' union in a 2-D view, ``margin_mm`` wide."""
    rows, cols = np.nonzero(masks)
    if margin_mm is None or rows.size == 0:
        return slice(None), slice(None)
    pad_r = int(np.ceil(margin_mm / pixel_mm[0]))
    pad_c = int(np.ceil(margin_mm / pixel_mm[1]))
    return (
        slice(max(rows.min() - pad_r, 0), rows.max() + pad_r + 1),
        slice(max(cols.min() - pad_c, 0), cols.max() + pad_c + 1),
    )


def _contour(ax: Axes, mask: np.ndarray, colour: str, style: str) -> None:
    if mask.any() and not mask.all():  # matplotlib warns on a constant field
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2,
                   linestyles=style)  # fmt: skip


def _draw_view(
    ax: Axes,
    view: _View,
    volumes: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing: np.ndarray,
    window: tuple[float, float],
    margin_mm: float | None,
) -> None:
    image, reference, predicted = volumes
    index = _slice_index(reference if reference.any() else predicted, view.axis)
    planes = [np.take(v, index, axis=view.axis) for v in volumes]
    if view.flip_rows:
        planes = [p[::-1] for p in planes]
    pixel_mm = [float(s) for a, s in enumerate(spacing) if a != view.axis]
    rows, cols = _crop(planes[1] | planes[2], pixel_mm, margin_mm)
    img, ref, pred = (p[rows, cols] for p in planes)
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1],
              aspect=pixel_mm[0] / pixel_mm[1], interpolation="nearest")  # fmt: skip
    _contour(ax, ref, REFERENCE_COLOUR, "solid")
    _contour(ax, pred, PREDICTED_COLOUR, "dashed")
    # Contours autoscale to pixel centres; keep the whole image, pixel edges included.
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{view.name} slice {index}", fontsize=9)


def mask_overlay_figure(
    image: ArrayLike,
    reference: ArrayLike,
    predicted: ArrayLike,
    *,
    spacing_mm: Sequence[float],
    title: str = "",
    margin_mm: float | None = 40.0,
) -> Figure:
    """Axial, coronal and sagittal views of a volume with the reference and predicted contours.

    Each view is the slice holding the most reference voxels across its axis (the predicted
    mask's where the reference is empty), drawn in grey (1st to 99th percentile of the volume)
    with the reference contour solid cyan and the predicted one dashed orange.

    Parameters
    ----------
    image:
        The subject's volume, ``(z, y, x)``, any intensity unit (e.g. Dixon water signal).
    reference, predicted:
        Masks on the image's grid (non-zero = liver).
    spacing_mm:
        Voxel size in mm along ``(z, y, x)``, so each view keeps its physical aspect ratio.
    title:
        Shown before the Dice of the two masks in the figure's title.
    margin_mm:
        Each view is cropped to the union of both masks plus this margin (mm); None shows the
        whole slice.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes (axial, coronal, sagittal), a legend of the two contours, and the title
        ``"<title>: Dice <d>"`` with the Dice of the whole volumes.
    """
    volume = np.asarray(image, dtype=float)
    ref, pred = np.asarray(reference) != 0, np.asarray(predicted) != 0
    spacing = np.asarray(spacing_mm, dtype=float)
    if volume.ndim != 3 or ref.shape != volume.shape or pred.shape != volume.shape:
        raise ValueError(
            f"image and masks must be 3-D of one shape, got {volume.shape}, {ref.shape}, "
            f"{pred.shape}"
        )
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm gives three positive sizes (z, y, x) in mm, got {spacing_mm}")
    finite = volume[np.isfinite(volume)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    window = (float(low), float(high) if high > low else float(low) + 1.0)
    fig = new_figure(12.0, 4.8, ncols=3)
    for ax, view in zip(fig.axes, _VIEWS, strict=True):
        _draw_view(ax, view, (volume, ref, pred), spacing, window, margin_mm)
    fig.legend(
        handles=[
            Line2D([], [], color=REFERENCE_COLOUR, linestyle="solid", label="reference"),
            Line2D([], [], color=PREDICTED_COLOUR, linestyle="dashed", label="predicted"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=9,
    )
    heading = f"Dice {dice(ref, pred):.3f}"
    fig.suptitle(f"{title}: {heading}" if title else heading, fontsize=11)
    return fig
