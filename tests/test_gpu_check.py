"""The GPU check (``python -m benchmarks gpu``) on a CPU: it imports with only what the lent
machine's bare image has plus the carried SimpleITK and MONAI, and skips with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks import bench_gpu

ROOT = Path(__file__).resolve().parent.parent
#: Installed here, absent on the lent machine (docs/gpu.md).
ABSENT_THERE = (
    "dask",
    "distributed",
    "pingouin",
    "pydicom",
    "itk",
    "pydeform",
    "radiomics",
    "xgboost",
)


def test_the_check_imports_and_skips_without_the_packages_the_gpu_machine_lacks(tmp_path):
    code = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        from pathlib import Path

        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ABSENT_THERE!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (absent there)")

        sys.meta_path.insert(0, Absent())
        from benchmarks import bench_atlas, bench_gpu
        import liverfat.atlas.engine, liverfat.atlas.registration, liverfat.data.phantom
        import liverfat.deep.engine, liverfat.parallel, liverfat.segmentation.engine
        from liverfat.atlas import torch_registration
        figures = bench_gpu.run(Path({str(tmp_path)!r}))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {ABSENT_THERE!r})
        print(json.dumps({{"figures": figures, "loaded": loaded}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    if not torch.cuda.is_available():
        assert "no CUDA device" in result["figures"]["skipped"]
        assert result["figures"]["environment"]["cuda_available"] is False


def test_the_cuda_tests_part_finds_and_runs_the_gpu_marked_tests(tmp_path):
    files = bench_gpu.gpu_test_files()
    assert "tests/deep/test_training.py" in files and "tests/nn/test_device.py" in files
    assert "tests/test_gpu_check.py" not in files  # only files with a marked test
    figures = bench_gpu.cuda_tests(tmp_path, torch.device("cpu"), bench_gpu.SMOKE)
    assert figures["exit_code"] == 0, figures
    marked = sum(len(bench_gpu.GPU_MARK.findall(Path(ROOT, f).read_text())) for f in files)
    ran = figures.get("passed", 0) + figures.get("skipped", 0)
    assert ran >= marked  # parametrised tests count more than once
    if not torch.cuda.is_available():
        assert figures.get("skipped") == ran and "error" not in figures


@pytest.mark.slow
def test_every_part_runs_small_on_a_cpu(tmp_path):
    """The parts the GPU will run, at smoke sizes on a CPU: an error a CPU can find is found
    here, not in the first minute of a lent GPU."""
    names = [n for n in bench_gpu.PARTS if n != "cuda_tests"]  # tested above
    figures = bench_gpu.run_parts(tmp_path, torch.device("cpu"), bench_gpu.SMOKE, names)
    assert figures["ok"], figures
    training = figures["training"]
    assert training["precision"] == "float32" and training["skipped_steps"] == 0
    assert training["iterations_per_s"] > 0
    minutes = 6000 / training["iterations_per_s"] / 60
    # both from the same timing, each rounded
    assert training["projected_minutes_per_6000_iterations"] == pytest.approx(minutes, rel=0.02)
    inference = figures["inference"]
    assert inference["nifti_subjects"] == bench_gpu.SMOKE.nifti_subjects
    assert inference["subjects_per_min_engine_from_cached_formats"] > 0
    atlas = figures["atlas"]
    assert atlas["scale"] == "quarter" and atlas["optimise_s_median"] > 0
    assert atlas["batch"]["templates"] == 3 and atlas["batch"]["per_template_s"] > 0
    assert atlas["fireants"]["seconds_warm"] > 0 and atlas["fireants"]["dice_single"] > 0.5
    unet = figures["segmentation"]
    assert unet["slice_hw"] == [48, 64] and unet["train_iterations_per_s"] > 0
    assert unet["predict_s_per_volume"] > 0
    # both from the same timing, each rounded: seconds to 0.005, the rate to 0.005
    seconds = unet["predict_s_per_volume"]
    rate = unet["predict_volumes_per_s"]
    assert rate == pytest.approx(1 / seconds, rel=0.006 / seconds, abs=0.006)
