"""Phantom liver fat drawn in fixed PDFF bins with exact counts (``PhantomConfig.pdff_bins``)."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from liverfat.cli import main
from liverfat.data.dixon import fat_fraction
from liverfat.data.phantom import (
    LABELS,
    PhantomConfig,
    build_subject,
    draw_subject,
    generate_cohort,
    simulate_reference,
)
from liverfat.data.phantom.cohort import assign_pdff_bins
from liverfat.errors import LiverfatError

GRADING = ((5.0, 33.0, 5), (33.0, 66.0, 3))

#: What ``truth/settings.json`` held for a default seed-1 quarter cohort before ``pdff_bins``.
SETTINGS_BEFORE_BINS = {
    "config": {
        "blur_sigma_mm": 2.0,
        "coil_field_amplitude": 0.15,
        "fraction_a": 0.6,
        "fraction_c_of_b": 0.5,
        "motion_sd_mm": 2.0,
        "noise_floor_pct": 1.5,
        "noise_sd": 0.8,
        "proportional_bias": 0.95,
        "reference_noise_sd_pct": 0.3,
        "reference_noise_slope": 0.04,
        "reference_outlier_fraction": 0.03,
        "swap_fraction": 0.02,
    },
    "scale": "quarter",
    "seed": 1,
}


def _subject_rng(seed: int, index: int) -> np.random.Generator:
    """The stream :func:`build_subject` draws a subject's covariates from."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]).spawn(3)[0])


def _latent(rng: np.random.Generator) -> float:
    """``0.6 * metabolic + 0.8 * e_fat``, replayed from the first draws of ``rng``."""
    metabolic, _, _, e_fat, _, _ = rng.standard_normal(6)
    return 0.6 * metabolic + 0.8 * e_fat


def _in_which_bin(pdff: pd.Series, bins) -> list[int]:
    return [sum(1 for p in pdff if low <= p < high) for low, high, _ in bins]


def test_bins_exact_counts_on_disk_same_for_cli_and_process_pool(tmp_path: Path, capsys) -> None:
    # The CLI (serial, --n from the bins' total, bins given out of order) ...
    argv = ["phantom", "--seed", "3", "--scale", "quarter", "--executor", "serial"]
    assert main([*argv, "--out", str(tmp_path / "cli"), "--pdff-bins", "33:66:3", "5:33:5"]) == 0
    assert "8 subjects" in capsys.readouterr().out
    # ... and the API with a process pool write the same cohort.
    config = PhantomConfig(pdff_bins=GRADING)
    generate_cohort(
        8,
        tmp_path / "pool",
        seed=3,
        config=config,
        executor="processes",
        n_workers=2,
        progress=False,
    )
    listed = {
        name: sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*"))
        for name in ("cli", "pool")
    }
    assert listed["cli"] == listed["pool"]
    files = [f for f in listed["cli"] if (tmp_path / "cli" / f).is_file()]
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "cli", tmp_path / "pool", files, shallow=False
    )
    assert not mismatch and not errors, mismatch + errors

    truth = pd.read_csv(tmp_path / "pool" / "truth" / "truth.csv")
    assert _in_which_bin(truth["liver_pdff_pct"], GRADING) == [5, 3]
    expected_bins = assign_pdff_bins(3, config)
    for pdff, (low, high) in zip(truth["liver_pdff_pct"], expected_bins, strict=True):
        assert low <= pdff < high
    assert truth["reference_pdff_pct"].between(0, 100).all()
    recorded = [[5.0, 33.0, 5], [33.0, 66.0, 3]]
    settings = json.loads((tmp_path / "pool" / "truth" / "settings.json").read_text())
    assert settings["config"]["pdff_bins"] == recorded
    card = yaml.safe_load((tmp_path / "pool" / "manifest.yaml").read_text())
    assert card["phantom"]["pdff_bins"] == recorded


def test_resume_refuses_other_bins_and_accepts_the_same(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    bins = ((5.0, 33.0, 2), (33.0, 66.0, 1))
    generate_cohort(
        3, out, seed=2, config=PhantomConfig(pdff_bins=bins), executor="serial", progress=False
    )
    (out / "truth" / "subjects" / "P0002.json").unlink()
    generate_cohort(
        3,
        out,
        seed=2,
        config=PhantomConfig(pdff_bins=bins[::-1]),
        executor="serial",
        progress=False,
    )
    assert (out / "truth" / "subjects" / "P0002.json").is_file()
    for other in (PhantomConfig(pdff_bins=((5, 33, 1), (33, 66, 2))), PhantomConfig()):
        with pytest.raises(LiverfatError, match="other settings.*differs in pdff_bins"):
            generate_cohort(3, out, seed=2, config=other, executor="serial", progress=False)


def test_folder_written_before_bins_existed_still_resumes(
    small_phantom_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(small_phantom_dir, copy)
    settings = copy / "truth" / "settings.json"
    assert json.loads(settings.read_text()) == SETTINGS_BEFORE_BINS
    settings.write_text(json.dumps(SETTINGS_BEFORE_BINS, indent=2, sort_keys=True) + "\n")
    before = settings.read_bytes()
    (copy / "truth" / "subjects" / "P0003.json").unlink()
    generate_cohort(4, copy, seed=1, scale="quarter", executor="serial", progress=False)
    assert settings.read_bytes() == before
    assert filecmp.cmp(copy / "subjects.csv", small_phantom_dir / "subjects.csv", shallow=False)
    card = yaml.safe_load((copy / "manifest.yaml").read_text())
    assert "pdff_bins" not in card["phantom"]
    assert "pdff_bins" not in PhantomConfig().as_record()
    with pytest.raises(LiverfatError, match="differs in pdff_bins"):
        generate_cohort(
            4,
            copy,
            seed=1,
            config=PhantomConfig(pdff_bins=((0, 100, 4),)),
            executor="serial",
            progress=False,
        )


def test_default_draw_unchanged() -> None:
    # The log-normal formula, computed apart from draw_subject ...
    for seed in range(20):
        z = _latent(np.random.default_rng(seed))
        expected = round(min(2.0 * math.exp(1.177 * z), 45.0), 3)
        assert draw_subject(np.random.default_rng(seed), "x").pdff_pct == expected
    # ... and the values a default seed-1 cohort held before pdff_bins existed.
    pinned = {
        0: (3.576, 3.684, 4.22, 25.42, 1451.14),
        1: (0.776, 1.6044, 0.91, 28.48, 1669.43),
        2: (16.229, 15.4833, 14.66, 39.37, 2519.8),
    }
    keys = (
        "liver_pdff_pct",
        "liver_body_ff_expected_pct",
        "reference_pdff_pct",
        "bmi",
        "liver_volume_ml",
    )
    for index, values in pinned.items():
        _, record = build_subject(index, 1, "quarter", PhantomConfig(), "A")
        assert tuple(record[k] for k in keys) == values


def test_binned_pdff_follows_the_latent_and_keeps_the_bmi_relation() -> None:
    seed, config = 4, PhantomConfig(pdff_bins=((5, 33, 150), (33, 66, 50)))
    bins = assign_pdff_bins(seed, config)
    assert [bins.count((5.0, 33.0)), bins.count((33.0, 66.0))] == [150, 50]
    assert bins == assign_pdff_bins(seed, PhantomConfig(pdff_bins=((33, 66, 50), (5, 33, 150))))
    assert bins != assign_pdff_bins(seed + 1, config)
    pdff, bmi, vat, z = [], [], [], []
    for index, (low, high) in enumerate(bins):
        binned = draw_subject(_subject_rng(seed, index), "x", pdff_bin=(low, high))
        default = draw_subject(_subject_rng(seed, index), "x")
        # Only liver fat differs from the default draw.
        assert dataclasses.replace(binned, pdff_pct=default.pdff_pct) == default
        latent = _latent(_subject_rng(seed, index))
        assert binned.pdff_pct == pytest.approx(
            low + (high - low) * stats.norm.cdf(latent), abs=5e-4
        )
        assert low <= binned.pdff_pct < high
        pdff.append(binned.pdff_pct)
        bmi.append(binned.bmi)
        vat.append(binned.vat_fraction)
        z.append(latent)
    pdff, bmi, vat, z = map(np.array, (pdff, bmi, vat, z))
    low = np.array([b[0] for b in bins])
    assert stats.spearmanr(pdff, bmi).statistic > 0.15
    for lo in (5, 33):
        inside = low == lo
        rho = stats.spearmanr(pdff[inside], bmi[inside]).statistic
        assert rho > 0.3
        # PDFF is a monotone function of the latent within a bin.
        assert rho == pytest.approx(stats.spearmanr(z[inside], bmi[inside]).statistic, abs=0.02)
        assert stats.spearmanr(pdff[inside], vat[inside]).statistic > 0.2


def test_binned_subject_images_and_draws_match_the_default_but_liver_fat() -> None:
    config = PhantomConfig(pdff_bins=((60, 66, 1),), swap_fraction=0.0)
    arrays, record = build_subject(0, 2, "quarter", config, "A")
    default_arrays, default = build_subject(
        0, 2, "quarter", dataclasses.replace(config, pdff_bins=None), "A"
    )
    assert np.array_equal(arrays["labels"], default_arrays["labels"])
    fat_dependent = {"liver_pdff_pct", "liver_body_ff_expected_pct", "reference_pdff_pct"}
    assert {k: v for k, v in record.items() if k not in fat_dependent} == {
        k: v for k, v in default.items() if k not in fat_dependent
    }
    assert 60 <= record["liver_pdff_pct"] < 66
    # The imaging model holds for a fat-dominant liver: its fat fraction follows the bias curve.
    ff = fat_fraction(arrays["water"], arrays["fat"])
    liver = arrays["labels"] == LABELS["liver"]
    assert np.median(ff[liver]) == pytest.approx(record["liver_body_ff_expected_pct"], abs=1.5)
    assert record["liver_body_ff_expected_pct"] == pytest.approx(
        0.95 * math.hypot(record["liver_pdff_pct"], 1.5), abs=1e-3
    )


def test_reference_stays_within_percent_range() -> None:
    config = PhantomConfig(reference_outlier_fraction=0.5)
    rng = np.random.default_rng(0)
    readings = [simulate_reference(99.5, config, rng)[0] for _ in range(500)]
    assert max(readings) == 100.0 and min(readings) > 60
    assert PhantomConfig(proportional_bias=1.2).body_ff(100.0) == 100.0


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        (((5, 40, 2), (33, 66, 2)), "overlap"),
        (((-1, 5, 2),), "0 <= low < high <= 100"),
        (((50, 101, 2),), "0 <= low < high <= 100"),
        (((33, 33, 2),), "0 <= low < high <= 100"),
        (((5, 33, -1),), "integer >= 0"),
        (((5, 33, 1.5),), "integer >= 0"),
        (((5, 33),), "not \\(low_pct, high_pct, count\\)"),
        (((5, "33", 1),), "must be numbers"),
        ((), "at least one"),
        (5, "triples"),
    ],
)
def test_bad_bins_refused_in_one_line(bins, message) -> None:
    with pytest.raises(LiverfatError, match=message) as caught:
        PhantomConfig(pdff_bins=bins)
    assert "\n" not in str(caught.value)


def test_counts_must_add_up_to_n(tmp_path: Path, capsys) -> None:
    config = PhantomConfig(pdff_bins=((5, 33, 38), (33, 66, 11)))
    with pytest.raises(LiverfatError, match="add up to 49, not to --n 50"):
        generate_cohort(50, tmp_path / "a", config=config, executor="serial", progress=False)
    assert not (tmp_path / "a").exists()
    argv = ["phantom", "--n", "50", "--out", str(tmp_path / "b"), "--pdff-bins"]
    assert main([*argv, "5:33:38", "33:66:11"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "49" in err[0] and "50" in err[0]
    assert main([*argv, "5:40:38", "33:66:12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlap" in err[0]


@pytest.mark.parametrize(
    "value", ["5:33", "5:33:1:2", "a:33:1", "5:33:1.5", "33:5:1", "5:101:1", "nan:33:1", "5:33:-1"]
)
def test_malformed_cli_bin_is_a_one_line_parser_error(value, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["phantom", "--out", str(tmp_path), "--pdff-bins", "5:33:1", value])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--pdff-bins" in errors[0] and repr(value) in errors[0]


def test_reference_fraction_puts_every_subject_in_split_a(tmp_path: Path) -> None:
    argv = ["phantom", "--n", "4", "--seed", "1", "--scale", "quarter", "--executor", "serial"]
    assert main([*argv, "--reference-fraction", "1", "--out", str(tmp_path / "all")]) == 0
    subjects = pd.read_csv(tmp_path / "all" / "subjects.csv")
    assert (subjects["split"] == "A").all() and subjects["liver_pdff_pct"].notna().all()
