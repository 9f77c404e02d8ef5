"""Square regions of interest (ROIs) on axial slices of the liver: automatic placement and saving
them for review (JSON + overlay PNG). The ROI file formats (the :class:`Roi` square, manual ROIs
from a label map or a JSON file) live on the data floor, :mod:`liverfat.data.rois`, and are
re-exported here.

Arrays are (z, y, x) = (slice, row, column). An ROI is the ``size x size`` pixel square whose
top-left pixel is ``(row, column)`` on axial slice ``slice``.

Automatic placement (:func:`place_rois`) is deterministic:

1. *Allowed pixels*: the liver mask eroded in-plane by ``border_margin_mm`` (so no ROI touches
   the liver border), minus *outlier* pixels, dilated in-plane by one pixel.
2. *Outliers* (vessels, focal lesions, artefacts): liver voxels whose placement intensity lies
   more than ``outlier_mads`` robust standard deviations (1.4826 x the median absolute deviation)
   from the liver's median intensity. On a Dixon fat-fraction map hepatic vessels (blood, ~0 %
   fat) fall below a fatty liver, and on water or T2 images vessels are much brighter or darker
   than parenchyma, so one robust rule covers them; the CHAOS T2-SPIR masks label no vessels, so
   there this criterion *defines* what "on a vessel" means.
3. *Lobes*: the right lobe is the part of the liver on the patient's right of a plane at
   ``left_lobe_fraction`` of the liver's left-right extent, counted from its left-most edge (the
   falciform ligament is not visible on a mask, so this is an approximation); the rest is the
   left lobe. World coordinates come from the image direction, so orientation does not matter.
4. *Greedy choice*: every square wholly inside the allowed pixels is a candidate, scored by its
   centre's in-plane distance to the nearest disallowed pixel (deeper is better), ties broken by
   position. ROIs are taken best first, ``n_right`` from the right lobe and the rest from the
   left, each at least ``min_separation_mm`` (centre to centre, 3D; default 15 mm, so ROIs
   spread over slices) from those already taken and never overlapping one on the same slice; a lobe
   with too few candidates lends its share to the
   other.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from liverfat.data.atomic import atomic_path, write_text_atomic
from liverfat.data.rois import (  # noqa: F401 - re-exported: the formats' old import path
    Roi,
    check_rois_inside,
    load_saved_rois,
    rois_from_json,
    rois_from_label_map,
    rois_to_json,
    rois_to_label_map,
)
from liverfat.errors import ImageError, LiverfatError


@dataclass(frozen=True)
class RoiSettings:
    """Automatic placement settings (see the module docstring).

    Attributes
    ----------
    n_rois, n_right:
        ROIs in all and in the right lobe (default 6 and 4, the published protocol).
    size:
        Side of each square in pixels (default 16).
    border_margin_mm:
        In-plane erosion of the liver mask (mm, at least one pixel).
    outlier_mads:
        Robust standard deviations from the liver median beyond which a voxel is an outlier.
    left_lobe_fraction:
        Share of the liver's left-right extent, from its left edge, counted as left lobe.
    min_separation_mm:
        Minimum 3D distance between ROI centres (mm).

    The published 16 x 16 pixels are at about 2 mm pixels (~35 mm squares); on coarser grids,
    such as the half-scale phantom (4.46 mm), use a proportionally smaller ``size`` (8).
    """

    n_rois: int = 6
    n_right: int = 4
    size: int = 16
    border_margin_mm: float = 5.0
    outlier_mads: float = 3.0
    left_lobe_fraction: float = 0.35
    min_separation_mm: float = 15.0

    def __post_init__(self) -> None:
        if self.n_rois < 1 or not 0 <= self.n_right <= self.n_rois:
            raise LiverfatError(
                f"need n_rois >= 1 and 0 <= n_right <= n_rois, got {self.n_rois}, {self.n_right}"
            )
        if self.size < 2:
            raise LiverfatError(f"ROI size must be at least 2 pixels, got {self.size}")
        if self.outlier_mads <= 0 or not 0 < self.left_lobe_fraction < 1:
            raise LiverfatError("outlier_mads must be > 0 and left_lobe_fraction in (0, 1)")


def outlier_mask(intensity: np.ndarray, liver: np.ndarray, n_mads: float) -> np.ndarray:
    """Liver voxels further than ``n_mads`` robust SDs from the liver's median intensity."""
    values = intensity[liver]
    median = float(np.median(values))
    robust_sd = 1.4826 * float(np.median(np.abs(values - median)))
    if robust_sd <= 0:  # a flat liver (e.g. a noise-free map): nothing is an outlier
        robust_sd = max(float(np.std(values)), np.finfo(float).eps)
    return liver & (np.abs(intensity - median) > n_mads * robust_sd)


def allowed_pixels(
    intensities: list[np.ndarray], liver: np.ndarray, spacing_xyz: tuple[float, ...], s: RoiSettings
) -> np.ndarray:
    """Pixels an ROI may cover: eroded liver minus (dilated) outliers in any channel."""
    margin_px = max(1, int(round(s.border_margin_mm / min(spacing_xyz[:2]))))
    disk = _disk(margin_px)
    eroded = np.zeros_like(liver)
    outliers = np.zeros_like(liver)
    for intensity in intensities:
        outliers |= outlier_mask(intensity, liver, s.outlier_mads)
    for z in np.flatnonzero(liver.any(axis=(1, 2))):
        eroded[z] = ndimage.binary_erosion(liver[z], structure=disk, border_value=0)
        outliers[z] = ndimage.binary_dilation(outliers[z], structure=np.ones((3, 3), bool))
    return eroded & ~outliers


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x**2 + y**2 <= radius**2


def place_rois(
    intensities: list[np.ndarray] | np.ndarray,
    liver: np.ndarray,
    reference: sitk.Image,
    settings: RoiSettings | None = None,
) -> list[Roi]:
    """Place ``settings.n_rois`` square ROIs automatically (see the module docstring).

    Parameters
    ----------
    intensities:
        One or more (z, y, x) arrays whose outliers ROIs avoid (e.g. fat fraction and water).
    liver:
        Boolean (z, y, x) liver mask on the same grid.
    reference:
        An image on that grid (spacing, origin and direction give world coordinates).

    Raises
    ------
    ImageError
        When fewer than ``n_rois`` ROIs fit.
    """
    s = settings or RoiSettings()
    if isinstance(intensities, np.ndarray):
        intensities = [intensities]
    liver = np.asarray(liver, dtype=bool)
    if not liver.any():
        raise ImageError("the liver mask is empty")
    spacing = reference.GetSpacing()
    allowed = allowed_pixels([np.asarray(i, float) for i in intensities], liver, spacing, s)
    candidates = _candidates(allowed, s.size)
    if len(candidates) == 0:
        raise ImageError(
            f"no {s.size}x{s.size} pixel square fits inside the eroded liver mask "
            "away from outliers"
        )
    world = _world_centres(candidates, s.size, reference)
    liver_x = _world_x_of_mask(liver, reference)
    cut = liver_x.min() + (1.0 - s.left_lobe_fraction) * (liver_x.max() - liver_x.min())
    is_left = world[:, 0] >= cut  # +x is the patient's left (LPS)
    separation = s.min_separation_mm
    chosen: list[Roi] = []
    chosen_world: list[np.ndarray] = []
    order = np.lexsort((candidates[:, 2], candidates[:, 1], candidates[:, 0], -candidates[:, 3]))
    wanted = {"right": s.n_right, "left": s.n_rois - s.n_right}
    for lobe, left in (("right", False), ("left", True)):
        _take(
            candidates,
            world,
            order[is_left[order] == left],
            wanted[lobe],
            lobe,
            s.size,
            separation,
            chosen,
            chosen_world,
        )
    if len(chosen) < s.n_rois:  # a lobe too small for its share: fill from anywhere
        _take(
            candidates,
            world,
            order,
            s.n_rois - len(chosen),
            "any",
            s.size,
            separation,
            chosen,
            chosen_world,
        )
    if len(chosen) < s.n_rois:
        raise ImageError(
            f"only {len(chosen)} of {s.n_rois} non-overlapping {s.size}x{s.size} ROIs fit in the "
            "eroded liver mask away from outliers"
        )
    return chosen


def _candidates(allowed: np.ndarray, size: int) -> np.ndarray:
    """Rows (slice, row, column, depth) of every size x size square wholly inside ``allowed``."""
    rows = []
    for z in np.flatnonzero(allowed.any(axis=(1, 2))):
        plane = allowed[z].astype(np.int32)
        integral = np.pad(plane.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        sums = (
            integral[size:, size:]
            - integral[:-size, size:]
            - integral[size:, :-size]
            + integral[:-size, :-size]
        )
        r, c = np.nonzero(sums == size * size)
        if r.size == 0:
            continue
        depth = ndimage.distance_transform_edt(allowed[z])
        centre_depth = depth[r + size // 2, c + size // 2]
        rows.append(np.column_stack([np.full(r.size, z), r, c, centre_depth]))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def _world_centres(candidates: np.ndarray, size: int, reference: sitk.Image) -> np.ndarray:
    """World (x, y, z) mm of candidate centres."""
    index_xyz = np.column_stack(
        [candidates[:, 2] + (size - 1) / 2, candidates[:, 1] + (size - 1) / 2, candidates[:, 0]]
    )
    return _index_to_world(index_xyz, reference)


def _index_to_world(index_xyz: np.ndarray, reference: sitk.Image) -> np.ndarray:
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    spacing = np.array(reference.GetSpacing())
    return np.array(reference.GetOrigin()) + (index_xyz * spacing) @ direction.T


def _world_x_of_mask(liver: np.ndarray, reference: sitk.Image) -> np.ndarray:
    z, y, x = np.nonzero(liver)
    return _index_to_world(np.column_stack([x, y, z]).astype(float), reference)[:, 0]


def _take(candidates, world, order, n, lobe, size, separation, chosen, chosen_world) -> None:
    taken = 0
    for i in order:
        if taken >= n:
            return
        z, r, c = (int(v) for v in candidates[i, :3])
        roi = Roi(z, r, c, size, lobe)
        if any(roi.overlaps(other) for other in chosen):
            continue
        if any(np.linalg.norm(world[i] - w) < separation for w in chosen_world):
            continue
        chosen.append(roi)
        chosen_world.append(world[i])
        taken += 1


# Review files -------------------------------------------------------------------------------------
def save_rois(
    rois: list[Roi],
    folder: str | os.PathLike[str],
    subject_id: str,
    *,
    image: np.ndarray | None = None,
    liver: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<subject>_rois.json`` (and ``<subject>_rois.png`` when ``image`` is given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"subject_id": subject_id, "rois": [asdict(r) for r in rois], **(extra or {})}
    path = folder / f"{subject_id}_rois.json"
    write_text_atomic(path, json.dumps(payload, indent=1))
    if image is not None:
        overlay_png(rois, image, liver, folder / f"{subject_id}_rois.png", title=subject_id)
    return path


def overlay_png(
    rois: list[Roi],
    image: np.ndarray,
    liver: np.ndarray | None,
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """One panel per slice holding ROIs: the image, the liver outline and the numbered squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    slices = sorted({r.slice for r in rois})
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.4), squeeze=False)
    low, high = np.percentile(image[liver] if liver is not None else image, [1, 99.5])
    for ax, z in zip(axes[0], slices, strict=True):
        ax.imshow(image[z], cmap="gray", vmin=low, vmax=high * 1.2, interpolation="nearest")
        if liver is not None:
            ax.contour(liver[z], levels=[0.5], colors="yellow", linewidths=0.6)
        for number, roi in enumerate(rois, start=1):
            if roi.slice == z:
                colour = {"right": "cyan", "left": "magenta"}.get(roi.lobe, "lime")
                ax.add_patch(
                    Rectangle(
                        (roi.column - 0.5, roi.row - 0.5),
                        roi.size,
                        roi.size,
                        fill=False,
                        edgecolor=colour,
                        linewidth=1.2,
                    )
                )
                ax.text(roi.column, roi.row - 1, str(number), color=colour, fontsize=7)
        ax.set_title(f"slice {z}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
