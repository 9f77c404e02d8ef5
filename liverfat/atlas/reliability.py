"""How far an atlas readout is to be trusted: template agreement, and purity where truth exists.

The readout is the median fat fraction inside the eroded fused mask, so what matters is not the
mask's Dice but its **purity**: the share of the readout voxels that are truly liver. Without a
true mask (every UK Biobank subject) the engine can only see whether the warped templates agree;
a low median pairwise Dice marks a target whose registrations went different ways, where the
fused mask may sit in the wrong tissue.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

#: Flag a readout whose warped templates agree less than this (median pairwise Dice). Chosen on
#: the shared CHAOS MR leave-one-out (benchmarks/bench_atlas.py, docs/atlas.md), not on the
#: phantom.
AGREEMENT_FLAG_BELOW = 0.6
#: ... and only on grids as fine as those it was chosen on (CHAOS: 1.4-1.9 mm in plane; UK
#: Biobank: 2.23 mm). On coarser grids the warped masks' boundary voxels weigh more and their
#: Dice falls with the voxel size, not the registration: on the quarter-scale phantom (8.9 mm)
#: the threshold marked a third of sound readouts. The agreement is reported there all the same.
AGREEMENT_MAX_SPACING_MM = 3.0


def disagreement_message(
    agreement: float | None,
    threshold: float | None,
    spacing_mm: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> str:
    """The flag's reason when the templates agree less than ``threshold`` on a grid whose
    in-plane ``spacing_mm`` (x, y, z) is at most :data:`AGREEMENT_MAX_SPACING_MM`, else ""."""
    coarse = max(spacing_mm[:2]) > AGREEMENT_MAX_SPACING_MM
    if agreement is None or threshold is None or agreement >= threshold or coarse:
        return ""
    return (
        f"warped templates disagree (median pairwise Dice {agreement:.2f} < {threshold:.2f}): "
        "the readout may come from the wrong tissue"
    )


def readout_truth(
    eroded: sitk.Image, true_liver: sitk.Image, fat_fraction: sitk.Image | None
) -> dict[str, Any]:
    """Against a true liver mask on the same grid: the purity of the eroded readout mask (share
    of its voxels inside the true liver; None when it is empty), the median fat fraction (%) in
    the true mask, and the readout's error against it (pp; None without a fat fraction)."""
    readout = sitk.GetArrayViewFromImage(eroded) > 0
    truth = sitk.GetArrayViewFromImage(true_liver) > 0
    n = int(readout.sum())
    purity = float(np.logical_and(readout, truth).sum() / n) if n else None
    out: dict[str, Any] = {"purity": purity, "true_median_pct": None, "readout_error_pp": None}
    if fat_fraction is not None and truth.any():
        ff = sitk.GetArrayViewFromImage(fat_fraction)
        out["true_median_pct"] = float(np.median(ff[truth]))
        if n:
            out["readout_error_pp"] = float(np.median(ff[readout])) - out["true_median_pct"]
    return out
