"""Mask metrics against scikit-learn, scipy and MONAI; tables of many subjects against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import directed_hausdorff
from sklearn.metrics import f1_score, jaccard_score

from liverfat.evaluation.agreement import AgreementError
from liverfat.evaluation.segmentation import (
    METRICS,
    TABLE_COLUMNS,
    average_surface_distance,
    dice,
    hausdorff_distance,
    jaccard,
    metrics_table,
    segmentation_metrics,
    summarise_metrics,
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


def _cube(shape, corner, side):
    mask = np.zeros(shape, dtype=bool)
    z, y, x = corner
    mask[z : z + side, y : y + side, x : x + side] = True
    return mask


def test_offset_cubes_give_the_known_overlap():
    # Two 10-voxel cubes, the second moved 2 voxels along x: 10 x 10 x 8 voxels in common.
    shape, spacing = (16, 16, 20), (3.0, 1.5, 2.0)
    a, b = _cube(shape, (3, 3, 3), 10), _cube(shape, (3, 3, 5), 10)
    out = segmentation_metrics(a, b, spacing)
    assert out["dice"] == pytest.approx(2 * 800 / 2000)
    assert out["jaccard"] == pytest.approx(800 / 1200)
    assert out["reference_volume_ml"] == pytest.approx(1000 * 9.0 / 1000)
    assert out["ravd_pct"] == 0.0
    # The farthest surface voxel (the -x face of a, the +x face of b) is 2 voxels of 2 mm off.
    assert out["mssd_mm"] == pytest.approx(4.0)
    table = metrics_table(
        [
            {"subject_id": "moved", **out},
            {"subject_id": "same", **(segmentation_metrics(a, a, spacing))},
        ]
    )
    assert table["subject_id"].tolist() == ["moved", "same"]
    assert table.loc[0, "dice"] == pytest.approx(0.8) and table.loc[1, "dice"] == 1.0
    summary = summarise_metrics(table).set_index("metric")
    assert summary.loc["dice", "mean"] == pytest.approx(0.9)
    assert summary.loc["mssd_mm", "max"] == pytest.approx(4.0)


@pytest.fixture
def records():
    rng = np.random.default_rng(3)
    ids = [f"s{i:02d}" for i in range(12)]
    rows = []
    for sid in ids:
        row = {
            m: float(v) for m, v in zip(METRICS, rng.uniform(0.1, 30.0, len(METRICS)), strict=True)
        }
        row["dice"] = float(rng.uniform(0.6, 0.98))
        rows.append({"note": "", **row, "subject_id": sid})  # keys in another order
    rows[4]["hd95_mm"] = rows[4]["assd_mm"] = float("nan")  # an empty predicted mask
    rows[4]["note"] = "predicted mask empty: no surface distances"
    rows[7]["ravd_pct"] = None  # as JSON null
    rows[9]["mssd_mm"] = float("inf")
    rows[2]["dice"] = rows[5]["dice"]  # a tie, broken by subject id
    del rows[11]["note"]
    return rows


def test_metrics_table_order_and_columns(records):
    table = metrics_table(records)
    assert list(table.columns) == list(TABLE_COLUMNS)
    expected = sorted(records, key=lambda r: (r["dice"], r["subject_id"]))
    assert table["subject_id"].tolist() == [r["subject_id"] for r in expected]
    assert table["dice"].is_monotonic_increasing
    row = table.set_index("subject_id").loc["s07"]
    assert np.isnan(row["ravd_pct"]) and row["hd95_mm"] == records[7]["hd95_mm"]
    assert table.set_index("subject_id").loc["s11", "note"] == ""
    # A record without a Dice goes last; extra keys follow the fixed columns.
    more = metrics_table([*records, {"subject_id": "late", "dice": None, "fat_pct": 4.0}])
    assert more["subject_id"].iloc[-1] == "late" and list(more.columns)[-1] == "fat_pct"


def test_metrics_table_refuses_bad_records(records):
    with pytest.raises(AgreementError, match="two segmentation records of subject s01"):
        metrics_table([*records, dict(records[1])])
    with pytest.raises(AgreementError, match="no subject_id"):
        metrics_table([{"dice": 0.9}])


def test_summary_matches_numpy_over_finite_values(records):
    summary = summarise_metrics(metrics_table(records)).set_index("metric")
    assert list(summary.index) == list(METRICS)
    for metric in METRICS:
        values = np.array([np.nan if r[metric] is None else r[metric] for r in records], float)
        finite = values[np.isfinite(values)]
        got = summary.loc[metric]
        assert got["n"] == finite.size
        assert got["median"] == pytest.approx(np.median(finite))
        assert got["mean"] == pytest.approx(pd.Series(finite).mean())
        assert got["sd"] == pytest.approx(pd.Series(finite).std())  # pandas: ddof=1
        assert (got["min"], got["max"]) == (finite.min(), finite.max())
    assert summary.loc["hd95_mm", "n"] == 11 and summary.loc["mssd_mm", "n"] == 11
    one = summarise_metrics(metrics_table(records[:1]), ["dice"]).iloc[0]
    assert one["n"] == 1 and one["median"] == records[0]["dice"] and np.isnan(one["sd"])
    none = summarise_metrics(metrics_table(records[4:5]), ["hd95_mm"]).iloc[0]
    assert none["n"] == 0 and np.isnan(none["median"])
