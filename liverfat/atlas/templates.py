"""Template selection: subjects with liver masks chosen for high variance in liver shape.

Each candidate's liver mask is described by its volume (mL), the square roots of its principal
moments (mm), and its centroid relative to the body centroid (mm). On standardised descriptors
the first template is the subject farthest from the mean shape and each next one the subject
farthest from those already chosen (greedy max-min), so the set spans the shapes seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from liverfat.atlas.images import centre_of_mass_mm, load_subject
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError


def shape_descriptor(liver: sitk.Image, body: sitk.Image | None = None) -> np.ndarray:
    """Volume (mL), sqrt principal moments (mm) and centroid offset from the body (mm)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputeOrientedBoundingBoxOn()
    stats.Execute(sitk.Cast(liver > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise LiverfatError("empty liver mask")
    volume_ml = stats.GetPhysicalSize(1) / 1000.0
    moments = np.sqrt(np.maximum(stats.GetPrincipalMoments(1), 0.0))
    centroid = np.asarray(stats.GetCentroid(1))
    offset = centroid - centre_of_mass_mm(body) if body is not None else np.zeros(3)
    return np.concatenate([[volume_ml], moments, offset])


def select_diverse(descriptors: Mapping[str, np.ndarray], n: int) -> list[str]:
    """``n`` subject ids spanning the descriptors (greedy max-min on standardised values)."""
    ids = sorted(descriptors)
    if n > len(ids):
        raise LiverfatError(f"{n} templates asked but only {len(ids)} subjects have liver masks")
    matrix = np.stack([descriptors[i] for i in ids]).astype(float)
    scale = matrix.std(axis=0)
    z = (matrix - matrix.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    chosen = [int(np.argmax(np.linalg.norm(z, axis=1)))]
    while len(chosen) < n:
        distance = np.min(np.linalg.norm(z[:, None, :] - z[None, chosen, :], axis=2), axis=1)
        distance[chosen] = -1.0
        chosen.append(int(np.argmax(distance)))
    return [ids[i] for i in chosen]


def select_templates(
    livers: Mapping[str, sitk.Image],
    n: int = 3,
    *,
    bodies: Mapping[str, sitk.Image] | None = None,
    given: Sequence[str] | None = None,
) -> list[str]:
    """Template subject ids: ``given`` (checked) or ``n`` chosen for shape variance."""
    if given:
        missing = sorted(set(map(str, given)) - set(livers))
        if missing:
            raise LiverfatError(f"templates without a liver mask: {', '.join(missing)}")
        return [str(g) for g in given]
    bodies = bodies or {}
    descriptors = {sid: shape_descriptor(mask, bodies.get(sid)) for sid, mask in livers.items()}
    return select_diverse(descriptors, n)


def choose_templates(manifest: Manifest, n: int) -> list[str]:
    """The ``n`` most diverse liver shapes among the manifest's subjects with a liver mask.

    A candidate whose images cannot be read is simply not a template.
    """
    loaded = {}
    for sid in manifest.subject_ids:
        if manifest.has(sid, "liver_mask"):
            try:
                loaded[sid] = load_subject(manifest, sid, with_liver=True)
            except LiverfatError:
                continue
    return select_templates(
        {s: a.liver for s, a in loaded.items()}, n, bodies={s: a.body for s, a in loaded.items()}
    )
