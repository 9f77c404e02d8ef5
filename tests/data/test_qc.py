"""Scan QC (liverfat.data.qc, liverfat qc): swap per z-slab, signal voids, background noise."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from liverfat.cli import main
from liverfat.data.dixon import body_mask
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import PhantomConfig, generate_cohort
from liverfat.data.qc import (
    CHECKS,
    NOISE_THRESHOLD_PCT,
    SWAP_FLAG_PP,
    VOID_THRESHOLD_ML,
    lps_arrays,
    relative_noise,
    signal_voids,
    slab_bounds,
    swap_check,
    void_check,
)
from liverfat.data.swaps import edge_depth_mm


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Ten quarter-scale subjects (8.9 mm pixels: shell and core still hold hundreds of voxels
    per slab), about half with one swapped station."""
    out = tmp_path_factory.mktemp("qc_cohort")
    card = generate_cohort(
        10,
        out,
        seed=5,
        scale="quarter",
        config=PhantomConfig(swap_fraction=0.5),
        executor="serial",
        progress=False,
    )
    truth = pd.read_csv(out / "truth" / "truth.csv", dtype={"subject_id": str})
    return Manifest.load(card), truth.set_index("subject_id")


def _arrays(manifest, sid):
    images = manifest.dixon(sid)
    return lps_arrays(images.water, images.fat)


def _normal(cohort) -> str:
    manifest, truth = cohort
    return next(s for s in manifest.subject_ids if truth.loc[s, "water_fat_swap"] == 0)


def test_slab_bounds_are_equal_slabs_near_the_height_asked_for():
    bounds = slab_bounds(92, 12.0, 100.0)  # 1104 mm: 11 slabs of about 100 mm
    assert len(bounds) == 11 and bounds[0][0] == 0 and bounds[-1][1] == 92
    assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    assert {b - a for a, b in bounds} <= {8, 9}
    assert slab_bounds(3, 10.0, 100.0) == [(0, 3)]
    assert slab_bounds(4, 100.0, 10.0) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_swap_check_flags_every_swapped_subject_and_no_normal_one(cohort):
    manifest, truth = cohort
    scores = {}
    for sid in manifest.subject_ids:
        water, fat, spacing = _arrays(manifest, sid)
        check = swap_check(water, fat, body_mask(water, fat), spacing_mm=spacing)
        scores[sid] = check.value
        assert check.flag == bool(truth.loc[sid, "water_fat_swap"]), (sid, check.message)
    swapped = [scores[s] for s in scores if truth.loc[s, "water_fat_swap"]]
    normal = [scores[s] for s in scores if not truth.loc[s, "water_fat_swap"]]
    assert swapped and normal
    assert min(swapped) > SWAP_FLAG_PP + 20
    assert max(normal) < SWAP_FLAG_PP  # a normal subject's fattest slab: its visceral fat
    assert np.median(normal) < SWAP_FLAG_PP - 50


def test_void_cut_into_a_subject_is_found_with_its_volume(cohort):
    water, fat, spacing = _arrays(cohort[0], _normal(cohort))
    mask = body_mask(water, fat)
    assert not void_check(water, fat, mask, spacing_mm=spacing).flag
    z = slice(int(0.45 * len(water)), int(0.45 * len(water)) + 4)  # the abdomen
    depth = edge_depth_mm(mask[z], spacing[:2]).min(axis=0)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    assert depth[y, x] > 30  # the 3 x 3 pixel box lies well inside the body
    box = (z, slice(y - 1, y + 2), slice(x - 1, x + 2))
    rng = np.random.default_rng(0)
    for image in (water, fat):  # no signal: Rayleigh background noise only
        image[box] = np.abs(rng.normal(0, 0.8, (4, 3, 3)) + 1j * rng.normal(0, 0.8, (4, 3, 3)))
    made_ml = 4 * 9 * float(np.prod(spacing)) / 1000
    assert made_ml > VOID_THRESHOLD_ML
    check = void_check(water, fat, mask, spacing_mm=spacing)
    assert check.flag, check.message
    assert check.value == pytest.approx(made_ml, rel=0.15)
    assert signal_voids(water, fat, mask, spacing_mm=spacing)[0] == check.value


def test_noise_added_raises_the_noise_value_monotonically(cohort):
    water, fat, spacing = _arrays(cohort[0], _normal(cohort))
    mask = body_mask(water, fat)
    rng = np.random.default_rng(1)
    values = []
    for sd in (0.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        noisy = np.abs(water + rng.normal(0, sd, water.shape) + 1j * rng.normal(0, sd, water.shape))
        values.append(relative_noise(noisy, fat, mask, spacing_mm=spacing))
    assert np.all(np.diff(values) > 0), values
    assert values[0] < NOISE_THRESHOLD_PCT < values[-1], values


def _truncate(path):
    data = path.read_bytes()
    with gzip.open(path, "rb") as handle:
        assert handle.read(10)
    path.write_bytes(data[: len(data) // 2])


def test_cli_qc_end_to_end_resumes_and_keeps_going_past_a_broken_subject(cohort, tmp_path, capsys):
    _, truth = cohort
    shutil.copytree(cohort[0].path.parent, tmp_path / "cohort")  # the images get damaged below
    manifest = Manifest.load(tmp_path / "cohort" / cohort[0].path.name)
    out = tmp_path / "qc"
    argv = ["qc", str(manifest.path), "--out", str(out), "--executor", "serial"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    n_swapped = int(truth["water_fat_swap"].sum())
    assert line.startswith(f"{n_swapped} of {len(manifest)} subjects flagged (swap {n_swapped}, ")
    table = pd.read_csv(out / "qc.csv", dtype={"subject_id": str})
    assert list(table.columns) == ["subject_id", "check", "value", "threshold", "flag", "message"]
    assert len(table) == len(CHECKS) * len(manifest)
    swaps = table[table["check"] == "swap"].set_index("subject_id")
    assert (swaps["flag"] == "yes").eq(truth["water_fat_swap"] == 1).all()
    summary = pd.read_csv(out / "qc_summary.csv").set_index("check")["n_flagged"]
    assert summary["swap"] == n_swapped and summary["read"] == 0
    flagged = set(swaps.index[swaps["flag"] == "yes"])
    assert {p.stem for p in (out / "thumbnails").glob("*.png")} == flagged
    assert len(list((out / "work").glob("*.json"))) == len(manifest)

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(argv) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # resume: nothing new

    broken = manifest.subject_ids[0]
    _truncate(manifest.image_path(broken, "water"))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert [ln for ln in captured.err.splitlines() if broken in ln and ln.strip()] != []
    assert len([ln for ln in captured.err.splitlines() if ln.startswith(f"{broken}:")]) == 1
    table = pd.read_csv(out / "qc.csv", dtype={"subject_id": str})
    rows = table[table["subject_id"] == broken]
    assert rows[["check", "flag"]].values.tolist() == [["read", "failed"]]
    assert len(table) == len(CHECKS) * (len(manifest) - 1) + 1


def test_cli_qc_with_truth_writes_scores(cohort, tmp_path, capsys):
    manifest, truth = cohort
    truth_csv = manifest.path.parent / "truth" / "truth.csv"
    out = tmp_path / "qc"
    argv = ["qc", str(manifest.path), "--out", str(out), "--executor", "serial"]
    assert main([*argv, "--truth", str(truth_csv)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n_swapped = int(truth["water_fat_swap"].sum())
    assert f"swap (swap): sensitivity 1.000 ({n_swapped}/{n_swapped})" in lines[-4]
    scores = pd.read_csv(out / "qc_scores.csv").set_index(["class", "check"])
    assert scores.loc[("swap", "swap"), "specificity"] == 1.0
    assert scores.loc[("metal", "metal"), "n_positive"] == 0
    assert main([*argv, "--truth", str(tmp_path / "missing.csv")]) != 0
    assert "missing.csv" in capsys.readouterr().err
