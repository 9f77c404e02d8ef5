"""The atlas benchmark times the right thing and runs where only the GPU stack is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch")

from benchmarks import bench_atlas, bench_radiomics  # noqa: E402
from benchmarks.common import SKIP_CPU_VAR, skip_cpu  # noqa: E402
from liverfat.data.phantom import generate_cohort  # noqa: E402


@pytest.fixture(scope="module")
def quarter_pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "pair"
    card = generate_cohort(2, out, seed=5, scale="quarter", executor="serial", progress=False)
    return card


def test_cuda_figures_on_this_device_at_a_small_grid(tmp_path):
    figures = bench_atlas.cuda_figures(tmp_path, scale="quarter", repeats=3)
    fixed, _ = bench_atlas.phantom_pair(tmp_path / "cuda_quarter" / "manifest.yaml")
    assert figures["scale"] == "quarter"
    assert figures["grid_zyx"] == list(sitk.GetArrayViewFromImage(fixed.channels[0]).shape)
    assert figures["device"] == "cpu"  # no GPU here: the same figures, without GPU memory
    assert figures["peak_gpu_mib"] is None
    assert len(figures["optimise_s"]) == 3  # the first (warm-up) call is reported apart
    assert figures["optimise_s_median"] == sorted(figures["optimise_s"])[1]
    assert all(t > 0 for t in figures["optimise_s"])
    assert 0.0 <= figures["folding_fraction"] < 1e-3


def test_full_grid_job_reports_the_optimiser_apart_from_the_whole_registration(quarter_pair):
    row = bench_atlas.full_grid_registration(("torch", str(quarter_pair), 1))
    assert row["seconds_warm"] == [row["seconds_warm_median"]]
    assert row["optimise_s"] == [row["optimise_s_median"]]
    assert row["optimise_s_median"] > 0 and row["seconds_warm_median"] > 0
    assert row["device"] == "cpu" and row["peak_gpu_mib"] is None
    assert row["dice_single"] > 0.7
    assert math.isfinite(row["folding_fraction"])


def test_skip_cpu_switch_leaves_out_the_cpu_only_backends_and_benchmarks(monkeypatch, tmp_path):
    monkeypatch.delenv(SKIP_CPU_VAR, raising=False)
    assert not skip_cpu()
    assert bench_atlas.benchmarked_backends("torch,deform,elastix") == [
        "torch",
        "deform",
        "elastix",
    ]
    for off in ("0", "false", ""):
        monkeypatch.setenv(SKIP_CPU_VAR, off)
        assert not skip_cpu()
    monkeypatch.setenv(SKIP_CPU_VAR, "1")
    assert skip_cpu()
    assert bench_atlas.benchmarked_backends("torch,deform,elastix") == ["torch"]
    assert "skipped" in bench_radiomics.run(tmp_path)  # needs pyradiomics: not on a GPU box
    # only CPU-only backends asked for: nothing is registered, nothing imports itk or pydeform
    monkeypatch.setenv("LIVERFAT_BENCH_ATLAS_BACKENDS", "deform,elastix")
    monkeypatch.setenv("LIVERFAT_BENCH_ATLAS_FULL_GRID", "elastix")
    figures = bench_atlas.run(tmp_path)
    assert "full_grid" not in figures and "skipped" in figures
    assert figures["skipped_cpu_only"] == ["elastix", "deform"]


def test_pool_benchmark_summary_and_flag_on_constructed_rows():
    """The CHAOS pool table: medians per setting, empty readouts counted, the flag's targets."""
    from benchmarks import bench_atlas_pool as pool
    from liverfat.atlas.reliability import AGREEMENT_FLAG_BELOW

    def row(target, dice, purity, agreement):
        cell = {"dice": dice, "purity": purity, "agreement": agreement, "seconds": 6.0}
        return {"target": target, "rows": {"paper/weighted": {**cell, "registrations": 3}}}

    low = AGREEMENT_FLAG_BELOW - 0.2
    results = [row("1", 0.8, 0.99, 0.8), row("2", 0.6, None, low), row("3", 0.9, 0.97, 0.9)]
    table = pool.summarise(results)["paper/weighted"]
    assert table["dice_median"] == 0.8 and table["dice_mean"] == round((0.8 + 0.6 + 0.9) / 3, 4)
    assert table["purity_median"] == 0.98 and table["purity_min"] == 0.97
    assert table["empty_readouts"] == 1
    assert table["seconds_per_target"] == 6.0 and table["seconds_per_registration"] == 2.0
    flag = pool.flag_figures(results, "paper/weighted")
    assert flag["flagged"] == ["2"] and flag["agreement_dice"]["2"] == (round(low, 3), 0.6)


def test_selection_rho_on_constructed_rows():
    """The selection's foresight: perfect ranking 1, reversed -1, the median over targets."""
    from benchmarks.bench_atlas_pool import selection_rho

    good = {
        "similarity": {"a": 0.9, "b": 0.5, "c": 0.1},
        "dice_single": {"a": 0.8, "b": 0.7, "c": 0.2},
    }
    bad = {
        "similarity": {"a": 0.9, "b": 0.5, "c": 0.1},
        "dice_single": {"a": 0.2, "b": 0.7, "c": 0.8},
    }
    assert selection_rho([good]) == 1.0 and selection_rho([bad]) == -1.0
    assert selection_rho([good, good, bad]) == 1.0


def test_mask_figures_read_the_slice_spacing_along_the_array_s_first_axis():
    """Two one-voxel masks a slice apart on a (1, 1, 3) mm grid are 3 mm apart, not 1."""
    reference_array = np.zeros((4, 5, 6), np.uint8)
    reference_array[1, 2, 3] = 1
    mask_array = np.roll(reference_array, 1, axis=0)
    reference, mask = sitk.GetImageFromArray(reference_array), sitk.GetImageFromArray(mask_array)
    for image in (reference, mask):
        image.SetSpacing((1.0, 1.0, 3.0))
    apart = {"dice": 0.0, "hd95_mm": 3.0, "assd_mm": 3.0}
    assert bench_atlas.mask_figures(mask, reference) == apart
    same = {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0}
    assert bench_atlas.mask_figures(reference, reference) == same
