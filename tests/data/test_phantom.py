"""The phantom cohort: determinism, designed bias, reference model, population statistics."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from liverfat.data.dixon import fat_fraction
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import (
    LABELS,
    LIVER_LABELS,
    Grid,
    PhantomConfig,
    build_subject,
    draw_subject,
    generate_cohort,
)
from liverfat.data.predictions import PredictionsTable


def _liver_medians(manifest: Manifest) -> pd.Series:
    values = {}
    for sid in manifest.subject_ids:
        dixon = manifest.dixon(sid)
        ff = _array(dixon.fat_fraction)
        mask = _array(manifest.liver_mask(sid)) > 0
        values[sid] = float(np.median(ff[mask]))
    return pd.Series(values)


def _array(image):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def test_twenty_quarter_scale_subjects_identical_across_executors(tmp_path: Path) -> None:
    # Speed is measured by benchmarks/bench_phantom.py, not asserted here.
    generate_cohort(
        20,
        tmp_path / "a",
        seed=1,
        scale="quarter",
        executor="processes",
        n_workers=2,
        progress=False,
    )
    generate_cohort(20, tmp_path / "b", seed=1, scale="quarter", executor="serial", progress=False)
    a_files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    b_files = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert a_files == b_files
    match, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "a", tmp_path / "b", a_files, shallow=False
    )
    assert not mismatch and not errors, mismatch + errors
    # A different seed gives a different cohort.
    generate_cohort(3, tmp_path / "c", seed=2, scale="quarter", executor="serial", progress=False)
    a = pd.read_csv(tmp_path / "a" / "truth" / "truth.csv").head(3)
    c = pd.read_csv(tmp_path / "c" / "truth" / "truth.csv")
    assert not np.allclose(a["liver_pdff_pct"], c["liver_pdff_pct"])


def test_rerun_resumes_without_rewriting(phantom_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    water = copy / "images" / "P0001_water.nii.gz"
    before = water.stat().st_mtime_ns
    (copy / "truth" / "subjects" / "P0002.json").unlink()  # as if killed before P0002 finished
    generate_cohort(20, copy, seed=1, scale="quarter", executor="serial", progress=False)
    assert water.stat().st_mtime_ns == before
    assert (copy / "truth" / "subjects" / "P0002.json").is_file()
    assert filecmp.cmp(copy / "subjects.csv", phantom_dir / "subjects.csv", shallow=False)


def test_other_settings_in_same_folder_refused(phantom_dir: Path, tmp_path: Path) -> None:
    import shutil

    from liverfat.errors import LiverfatError

    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    with pytest.raises(LiverfatError, match="other settings"):
        generate_cohort(20, copy, seed=2, scale="quarter", executor="serial", progress=False)


def test_body_fat_fraction_tracks_truth_with_designed_bias(
    phantom_manifest: Manifest, phantom_dir: Path
) -> None:
    truth = pd.read_csv(phantom_dir / "truth" / "truth.csv", dtype={"subject_id": str}).set_index(
        "subject_id"
    )
    clean = truth[truth["water_fat_swap"] == 0]
    medians = _liver_medians(phantom_manifest.select(subject_ids=clean.index))
    rho = stats.spearmanr(medians, clean.loc[medians.index, "liver_pdff_pct"]).statistic
    assert rho > 0.95
    # The designed bias: the measured median follows the biased curve, not the identity.
    expected = clean.loc[medians.index, "liver_body_ff_expected_pct"]
    true = clean.loc[medians.index, "liver_pdff_pct"]
    assert np.median(np.abs(medians - expected)) < 0.6
    low = true < 1.0
    high = true > 8.0
    assert low.any() and high.any()
    assert (medians[low] > true[low]).all(), "noise-floor bias: low fat fractions read high"
    slope = np.polyfit(true[true > 2], medians[true > 2], 1)[0]
    assert 0.88 < slope < 0.99, f"proportional bias 0.95 expected, fitted slope {slope:.3f}"


def test_bias_is_configurable() -> None:
    none = PhantomConfig(noise_floor_pct=0.0, proportional_bias=1.0)
    assert np.allclose(none.body_ff([0.0, 5.0, 30.0]), [0.0, 5.0, 30.0])
    cfg = PhantomConfig(noise_floor_pct=2.0, proportional_bias=0.9)
    assert cfg.body_ff(0.0) == pytest.approx(1.8)
    assert cfg.body_ff(20.0) == pytest.approx(0.9 * np.hypot(20, 2))


def test_reference_agrees_with_truth_apart_from_recorded_outliers(tmp_path: Path) -> None:
    config = PhantomConfig(reference_outlier_fraction=0.1)
    rng = np.random.default_rng(5)
    from liverfat.data.phantom import simulate_reference

    true = rng.lognormal(np.log(2), 1.18, size=4000).clip(0, 45)
    readings = [simulate_reference(p, config, rng) for p in true]
    ref = np.array([r for r, _ in readings])
    outlier = np.array([o for _, o in readings])
    sd = config.reference_noise_sd_pct + config.reference_noise_slope * true
    z = (ref - true) / sd
    assert 0.07 < outlier.mean() < 0.13
    clean = ~outlier & (ref > 0)  # readings clipped at 0 are not Gaussian
    assert abs(np.mean(z[clean])) < 0.1 and 0.9 < np.std(z[clean]) < 1.1
    assert np.max(np.abs(z[clean])) < 5
    assert np.median(np.abs(ref[outlier] - true[outlier])) > 4


def test_cohort_reference_columns(phantom_manifest: Manifest, phantom_dir: Path) -> None:
    truth = pd.read_csv(phantom_dir / "truth" / "truth.csv", dtype={"subject_id": str}).set_index(
        "subject_id"
    )
    ref = phantom_manifest.target("liver_pdff_pct")
    in_a = phantom_manifest.in_split("A").to_numpy()
    assert ref[in_a].notna().all() and ref[~in_a].isna().all()
    assert np.allclose(ref[in_a], truth.loc[ref[in_a].index, "reference_pdff_pct"])
    # C is a subset of B; no subject is in A and B.
    assert set(phantom_manifest.select(split="C").subject_ids) <= set(
        phantom_manifest.select(split="B").subject_ids
    )
    assert not set(phantom_manifest.select(split="A").subject_ids) & set(
        phantom_manifest.select(split="B").subject_ids
    )
    table = PredictionsTable.read(phantom_dir / "truth" / "truth_predictions.csv")
    assert table.values("truth", "liver_pdff_pct").equals(
        truth["liver_pdff_pct"].rename("value").rename_axis("subject_id")
    )


def test_population_like_uk_biobank() -> None:
    rng = np.random.default_rng(11)
    subjects = [draw_subject(rng, str(i)) for i in range(6000)]
    pdff = np.array([s.pdff_pct for s in subjects])
    assert 1.7 < np.median(pdff) < 2.3
    assert 3.4 < pdff.mean() < 4.6
    assert 0.16 < (pdff > 5.5).mean() < 0.24
    assert pdff.min() >= 0 and pdff.max() <= 45
    bmi = np.array([s.bmi for s in subjects])
    vat = np.array([s.vat_fraction for s in subjects])
    assert stats.spearmanr(pdff, bmi).statistic > 0.25
    assert stats.spearmanr(pdff, vat).statistic > 0.2
    volumes = np.array([s.liver_volume_target_ml for s in subjects])
    assert volumes.min() >= 1000 and volumes.max() <= 2500


def test_anatomy_volumes_and_grid() -> None:
    full = Grid.at_scale("full")
    assert full.size == (224, 174, 370)
    assert np.allclose(full.spacing, (2.23, 2.23, 3.0))
    arrays, record = build_subject(0, 9, "half", PhantomConfig(), "A")
    labels = arrays["labels"]
    assert labels.shape == (185, 87, 112)
    liver = np.isin(labels, LIVER_LABELS)
    assert 900 < record["liver_volume_ml"] < 2700
    assert record["liver_volume_ml"] == pytest.approx(
        liver.sum() * Grid.at_scale("half").voxel_ml, rel=1e-3
    )
    for organ in (
        "sat",
        "muscle",
        "vat",
        "spleen",
        "kidney",
        "bone_marrow",
        "lung",
        "heart",
        "hepatic_vessel",
    ):
        assert (labels == LABELS[organ]).any(), organ
    # The liver lies in the right (negative x) upper abdomen, under the right lung.
    z, y, x = np.nonzero(liver)
    grid = Grid.at_scale("half")
    assert grid.x[x].mean() < -20
    assert abs(grid.z[z].max() - record["diaphragm_z_mm"]) < 80


def test_water_fat_swap_recorded_and_visible() -> None:
    config = PhantomConfig(swap_fraction=1.0)
    arrays, record = build_subject(1, 3, "quarter", config, "A")
    assert record["water_fat_swap"] == 1 and 0 <= record["swap_station"] < 6
    ff = fat_fraction(arrays["water"], arrays["fat"])
    n_z = ff.shape[0]
    edges = np.linspace(0, n_z, 7).round().astype(int)
    station = slice(edges[record["swap_station"]], edges[record["swap_station"] + 1])
    sat = arrays["labels"] == LABELS["sat"]
    swapped = np.zeros_like(sat)
    swapped[station] = True
    assert np.median(ff[sat & swapped]) < 20 < np.median(ff[sat & ~swapped])
