"""Mask metrics against scikit-learn, scipy and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff
from sklearn.metrics import f1_score, jaccard_score

from liverfat.evaluation.agreement import AgreementError
from liverfat.evaluation.segmentation import (
    average_surface_distance,
    dice,
    hausdorff_distance,
    jaccard,
    segmentation_metrics,
    surface,
)

SPACING = (3.0, 1.5, 2.0)  # mm per array axis


def _ellipsoid(shape, centre, radii):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


@pytest.fixture
def masks():
    a = _ellipsoid((20, 32, 30), (10, 16, 15), (6, 10, 9))
    b = _ellipsoid((20, 32, 30), (11, 15, 16), (5, 11, 8))
    return a, b


def test_overlap_matches_sklearn(masks):
    a, b = masks
    assert dice(a, b) == pytest.approx(f1_score(a.ravel(), b.ravel()), abs=1e-12)
    assert jaccard(a, b) == pytest.approx(jaccard_score(a.ravel(), b.ravel()), abs=1e-12)


def test_surface_distances_match_brute_force(masks):
    a, b = masks
    pa = np.argwhere(surface(a)) * np.array(SPACING)
    pb = np.argwhere(surface(b)) * np.array(SPACING)
    hd = max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])
    assert hausdorff_distance(a, b, SPACING) == pytest.approx(hd, abs=1e-9)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    ab, ba = d.min(axis=1), d.min(axis=0)
    assert average_surface_distance(a, b, SPACING) == pytest.approx(
        np.concatenate([ab, ba]).mean(), abs=1e-9
    )
    out = segmentation_metrics(a, b, SPACING)
    assert out["hd95_mm"] == pytest.approx(
        max(np.percentile(ab, 95), np.percentile(ba, 95)), abs=1e-9
    )
    assert out["mssd_mm"] == pytest.approx(hd, abs=1e-9)
    voxel_ml = np.prod(SPACING) / 1000
    assert out["ravd_pct"] == pytest.approx(100 * abs(b.sum() - a.sum()) / a.sum(), abs=1e-9)
    assert out["reference_volume_ml"] == pytest.approx(a.sum() * voxel_ml)


def test_surface_distances_match_monai(masks):
    monai_metrics = pytest.importorskip("monai.metrics")
    a, b = masks
    batch = lambda m: m[None, None].astype(np.float32)  # noqa: E731
    hd95 = monai_metrics.compute_hausdorff_distance(
        batch(b), batch(a), percentile=95, spacing=list(SPACING)
    )
    assd = monai_metrics.compute_average_surface_distance(
        batch(b), batch(a), symmetric=True, spacing=list(SPACING)
    )
    out = segmentation_metrics(a, b, SPACING)
    assert out["hd95_mm"] == pytest.approx(float(hd95), abs=1e-4)
    assert out["assd_mm"] == pytest.approx(float(assd), abs=1e-4)


def test_empty_masks_give_nan_with_reason(masks):
    a, _ = masks
    empty = np.zeros_like(a)
    both = segmentation_metrics(empty, empty)
    assert both["dice"] == 1.0 and np.isnan(both["hd95_mm"]) and "both masks empty" in both["note"]
    one = segmentation_metrics(a, empty)
    assert one["dice"] == 0.0 and np.isnan(one["assd_mm"]) and "predicted mask empty" in one["note"]
    ref_empty = segmentation_metrics(empty, a)
    assert np.isnan(ref_empty["ravd_pct"]) and "reference" in ref_empty["note"]
    with pytest.raises(AgreementError, match="shapes differ"):
        dice(a, a[:-1])
    with pytest.raises(AgreementError, match="spacing"):
        segmentation_metrics(a, a, (1.0, 1.0))
