"""Templates chosen per target from a pool: the k most similar after an affine stage.

Multi-atlas segmentation gains most from templates that resemble the target (Aljabar et al.,
NeuroImage 2009). Each pool template is registered affinely to the target on a coarse grid
(SimpleITK, correlation inside the target's body mask) and scored by the normalised
cross-correlation of the two around the template's mapped liver (dilated by 2 voxels, inside
the target's body), averaged over channels; the k best go on to the deformable registration. A
target never selects itself. Around the liver, not the whole body: on the CHAOS leave-one-out
the liver-region score ranks the templates by their later Dice with a median Spearman rho of
0.33 with torch and 0.47 with fireants (``benchmarks/bench_atlas_pool.py``), against about 0.1
for the whole body (docs/atlas.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from liverfat.atlas.images import AtlasImage, align_centres, at_working_resolution
from liverfat.atlas.registration import sitk_affine
from liverfat.errors import LiverfatError

#: How templates are chosen: one fixed set for shape variance (:mod:`liverfat.atlas.templates`,
#: the published setting), or per subject the most similar of a pool (this module).
SELECTIONS = ("shape", "similarity")
#: The selection's grid (x, y, z mm): coarse, since only the ranking matters.
SELECTION_SPACING_MM = (5.0, 5.0, 8.0)
#: Affine iterations per pyramid level of the selection.
SELECTION_AFFINE_ITERATIONS = 50


def affine_similarity(
    target: AtlasImage,
    template: AtlasImage,
    spacing_mm: tuple[float, float, float] = SELECTION_SPACING_MM,
) -> float:
    """Mean NCC over channels of ``template`` (centred on ``target``, with a liver mask),
    affinely registered on a ``spacing_mm`` grid, with ``target`` around the template's mapped
    liver inside the target's body (-1 to 1)."""
    return _similarity(at_working_resolution(target, spacing_mm), target, template, spacing_mm)


def _similarity(fixed: AtlasImage, target: AtlasImage, template: AtlasImage, spacing_mm) -> float:
    """:func:`affine_similarity` with ``target`` already on the coarse grid (``fixed``)."""
    from scipy import ndimage

    centred = align_centres(target, template)
    moving = at_working_resolution(centred, spacing_mm)
    affine = sitk_affine(fixed, moving, SELECTION_AFFINE_ITERATIONS)
    body = sitk.GetArrayViewFromImage(fixed.body) > 0
    liver = sitk.Resample(centred.liver, fixed.reference, affine, sitk.sitkNearestNeighbor, 0)
    near = ndimage.binary_dilation(sitk.GetArrayViewFromImage(liver) > 0, iterations=2)
    inside = near & body if (near & body).sum() > 10 else body
    scores = []
    for f_channel, m_channel in zip(fixed.channels, moving.channels, strict=True):
        warped = sitk.Resample(m_channel, f_channel, affine, sitk.sitkLinear, 0.0)
        a = sitk.GetArrayViewFromImage(f_channel)[inside].astype(np.float64)
        b = sitk.GetArrayViewFromImage(warped)[inside].astype(np.float64)
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        scores.append(float((a * b).sum() / denominator) if denominator > 0 else 0.0)
    return float(np.mean(scores))


def most_similar(
    target: AtlasImage,
    pool: Mapping[str, AtlasImage],
    k: int,
    spacing_mm: tuple[float, float, float] = SELECTION_SPACING_MM,
) -> list[tuple[str, float]]:
    """The ``k`` pool templates (id, similarity) most similar to ``target``, best first; the
    target itself is never one of them."""
    candidates = {sid: image for sid, image in pool.items() if sid != target.subject_id}
    if not candidates:
        raise LiverfatError(f"subject {target.subject_id}: no template in the pool but itself")
    fixed = at_working_resolution(target, spacing_mm)  # once, not once per template
    scores = {s: _similarity(fixed, target, t, spacing_mm) for s, t in candidates.items()}
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return ranked[: max(1, k)]
