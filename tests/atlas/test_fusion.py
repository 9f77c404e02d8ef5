import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from liverfat.atlas.calibration import LinearCalibration
from liverfat.atlas.fusion import ball, erode, erosion_radius_voxels, fuse, median_readout
from liverfat.atlas.templates import select_diverse


def image(array, spacing=(1.0, 1.0, 1.0)):
    out = sitk.GetImageFromArray(np.asarray(array))
    out.SetSpacing(spacing)
    return out


def test_fusion_rules_on_constructed_masks():
    a, b, c = (np.zeros((4, 4, 4), np.uint8) for _ in range(3))
    a[0:3], b[1:4], c[1:2] = 1, 1, 1
    masks = [image(m) for m in (a, b, c)]
    inter = sitk.GetArrayFromImage(fuse(masks, "intersection"))
    major = sitk.GetArrayFromImage(fuse(masks, "majority"))
    assert inter.sum() == 16 and inter[1].all()  # only slice 1 is in all three
    assert major.sum() == 32 and major[1:3].all()  # slices 1 and 2 are in two of three
    staple = sitk.GetArrayFromImage(fuse(masks, "staple"))
    assert staple[1].all() and not staple[3].any()


def test_erosion_by_voxels_shrinks_box_by_radius():
    box = np.zeros((21, 21, 21), np.uint8)
    box[3:18, 3:18, 3:18] = 1
    eroded = sitk.GetArrayFromImage(erode(image(box), diameter_voxels=7))
    zs = np.nonzero(eroded.any(axis=(1, 2)))[0]
    assert (zs.min(), zs.max()) == (6, 14)  # 3 voxels off each face
    assert ball((3, 3, 3)).sum() == 123  # lattice points in a radius-3 sphere (OEIS A000605)


def test_erosion_in_mm_honours_anisotropic_spacing():
    assert erosion_radius_voxels((2.0, 2.0, 4.0), diameter_mm=16) == (4.0, 4.0, 2.0)
    box = np.zeros((20, 30, 30), np.uint8)
    box[2:18, 2:28, 2:28] = 1
    eroded = sitk.GetArrayFromImage(erode(image(box, (2.0, 2.0, 4.0)), diameter_mm=16))
    zs = np.nonzero(eroded.any(axis=(1, 2)))[0]
    xs = np.nonzero(eroded.any(axis=(0, 1)))[0]
    assert (zs.min(), zs.max()) == (4, 15) and (xs.min(), xs.max()) == (6, 23)


def test_median_readout_ok_flagged_failed():
    rng = np.random.default_rng(0)
    ff = rng.uniform(0, 40, (10, 10, 10)).astype(np.float32)
    mask = np.zeros_like(ff, np.uint8)
    mask[2:8, 2:8, 2:8] = 1
    small = np.zeros_like(mask)
    small[5, 5, 5:8] = 1
    ok = median_readout(image(ff), image(mask), image(mask), min_voxels=20)
    assert ok.status == "ok" and ok.value == pytest.approx(np.median(ff[mask > 0]))
    flagged = median_readout(image(ff), image(mask), image(small), min_voxels=20)
    assert flagged.status == "flagged" and "3 voxels" in flagged.message
    assert flagged.value == pytest.approx(np.median(ff[mask > 0]))
    empty = image(np.zeros_like(mask))
    union = median_readout(image(ff), empty, empty, fallback=image(small))
    assert union.status == "flagged" and union.value == pytest.approx(np.median(ff[small > 0]))
    failed = median_readout(image(ff), empty, empty)
    assert failed.status == "failed" and failed.value is None
    swapped = median_readout(image(100 - ff), image(mask), image(mask), min_voxels=20)
    assert swapped.status == "flagged" and "water-fat swap" in swapped.message
    assert swapped.value == pytest.approx(np.median(100 - ff[mask > 0]))


def test_linear_calibration_recovers_line_and_reports_before_after():
    rng = np.random.default_rng(1)
    reference = pd.Series(rng.uniform(1, 30, 40))
    raw = (reference - 1.5) / 1.2 + rng.normal(0, 0.01, 40)
    cal = LinearCalibration.fit(raw, reference)
    assert cal.slope == pytest.approx(1.2, abs=0.01)
    assert cal.intercept == pytest.approx(1.5, abs=0.05)
    assert cal.after["mae"] < 0.05 < cal.before["mae"]
    assert LinearCalibration.fit(raw[:2], reference[:2]).note  # too few: identity kept
    exact = LinearCalibration.fit(raw, reference, method="least-squares")
    assert exact.slope == pytest.approx(1.2, abs=0.01) and exact.method == "least-squares"


def test_default_calibration_resists_water_fat_swaps():
    rng = np.random.default_rng(2)
    reference = pd.Series(rng.uniform(0, 20, 24))
    raw = reference + 1.0 + rng.normal(0, 0.3, 24)
    raw[[3, 17]] = [97.9, 98.0]  # swapped scans read out near 100 - PDFF
    robust = LinearCalibration.fit(raw, reference)
    assert robust.slope == pytest.approx(1.0, abs=0.05)
    assert robust.intercept == pytest.approx(-1.0, abs=0.4)
    least_squares = LinearCalibration.fit(raw, reference, method="least-squares")
    assert abs(least_squares.slope - 1.0) > 0.5  # the outliers tilt the least-squares line


def test_template_selection_spans_shapes():
    descriptors = {f"s{i}": np.array([float(i), 0.0]) for i in range(10)}
    descriptors["far"] = np.array([30.0, 5.0])
    chosen = select_diverse(descriptors, 3)
    assert chosen[0] == "far" and "s0" in chosen and len(set(chosen)) == 3


def test_calibration_summary_leaves_out_flagged_readouts():
    # A swapped scan is kept for the robust line but not counted in the before/after summary,
    # as the comparison tables do not count flagged rows.
    rng = np.random.default_rng(3)
    reference = pd.Series(rng.uniform(0, 20, 24), index=[f"s{i}" for i in range(24)])
    raw = reference + 1.0 + rng.normal(0, 0.3, 24)
    raw.iloc[5] = 97.0
    flagged = pd.Series(False, index=raw.index)
    flagged.iloc[5] = True
    cal = LinearCalibration.fit(raw, reference, flagged=flagged)
    unflagged = LinearCalibration.fit(raw, reference)
    assert (cal.slope, cal.intercept) == (unflagged.slope, unflagged.intercept)
    keep = ~flagged
    assert cal.n == 24 and cal.n_flagged == 1 and cal.before["n"] == 23
    assert cal.before["mae"] == pytest.approx(np.mean(np.abs(raw[keep] - reference[keep])))
    assert cal.before["r"] > 0.99 and unflagged.before["r"] < 0.5
    assert cal.after["mae"] < cal.before["mae"]


def test_calibrated_values_stay_inside_the_target_range():
    line = LinearCalibration(slope=1.1, intercept=-1.8)
    assert line.apply(0.2) == pytest.approx(-1.58)  # the line alone leaves the range
    assert line.apply(0.2, (0.0, 100.0)) == 0.0
    assert line.apply(50.0, (0.0, 100.0)) == pytest.approx(53.2)
    assert line.apply(95.0, (0.0, 100.0)) == 100.0
