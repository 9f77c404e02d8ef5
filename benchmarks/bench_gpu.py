"""The GPU check: what the CUDA paths do on one GPU, within about 8 minutes, as JSON.

    python -m benchmarks gpu --out DIR        (also: make bench-gpu)

Parts, each timed with ``torch.cuda.synchronize()`` at both ends and each reported even when
another fails (printed as it finishes, so a run cut short still shows what it measured):

* ``cuda_tests``: the tests marked ``gpu`` (``pytest -m gpu`` on the files that have them);
* ``training``: ResNet50 at the paper profile's settings (batch 32, full-size 176 x 376 formats,
  mean-variance head, mixed precision, channels-last, random-normal targets): iterations per
  second over 300 iterations, from the difference of a 320- and a 20-iteration run after a
  20-iteration warm-up run (so set-up, cuDNN autotuning and the first steps cancel), projected
  minutes per 6000-iteration split, the precision and the skipped steps;
* ``inference``: subjects per minute from formats in memory (batch 64), and through
  ``DeepEngine.predict`` on a full-scale phantom cohort, from NIfTI (formats computed by worker
  processes) and again from the cached formats;
* ``segmentation``: the U-Net's training iterations per second (batch 16, mixed precision) at
  the full-scale slice size, and seconds per volume through ``SegmentationEngine.predict``
  (``benchmarks.bench_segmentation``);
* ``atlas``: the torch backend's ``optimise`` seconds per registration at the full
  neck-to-knee grid, on its own, three templates in one batched call, and one fireants
  registration end to end (``benchmarks.bench_atlas.cuda_figures``);
* peak GPU memory of each part.

Without CUDA it imports everything the check uses (so the import path on the lent machine's
bare image is checked on a CPU too) and returns ``skipped`` with the reason. The lent machine
has no SimpleITK or MONAI: carry them as wheels (``make gpu-wheels``; the ``run`` command line
is in docs/gpu.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from liverfat.deep.engine import DeepEngine
from liverfat.deep.profiles import PROFILES
from liverfat.deep.training import TrainingLog, TrainSettings, predict_network, train_network
from liverfat.errors import one_line
from liverfat.nn.registry import build_model

ROOT = Path(__file__).resolve().parent.parent
#: The liver-fat format's shape (channels, rows, columns).
LIVERFAT_FORMAT = (1, 176, 376)
#: A test (or class) marked ``gpu``: the decorator at the start of a line.
GPU_MARK = re.compile(r"^\s*@pytest\.mark\.gpu\b", re.MULTILINE)


@dataclass(frozen=True)
class Sizes:
    """How much each part does: :data:`ON_GPU` for the figures, :data:`SMOKE` to run every part
    in seconds on a CPU (a test), so the first GPU minute finds no error a CPU could have."""

    format_shape: tuple[int, int, int] = LIVERFAT_FORMAT
    warm_up_iterations: int = 20
    timed_iterations: int = 300
    batch_size: int = PROFILES["paper"]["batch_size"]
    training_subjects: int = 256
    formats_in_memory: int = 2048
    nifti_subjects: int = 32
    nifti_scale: str = "full"
    fit_iterations: int = 20
    atlas_scale: str = "full"
    unet_slice: tuple[int, int] = (176, 224)  # the full-scale phantom's 174 x 224 slices


ON_GPU = Sizes()
SMOKE = Sizes((1, 44, 94), 1, 2, 2, 4, 4, 6, "quarter", 1, "quarter", (48, 64))


def environment() -> dict:
    """Versions and the device: what the figures were measured with."""
    import monai
    import SimpleITK as sitk

    info = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "monai": monai.__version__,
        "simpleitk": sitk.Version_VersionString(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(
            device=properties.name,
            memory_gib=round(properties.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        )
    return info


def gpu_test_files() -> list[str]:
    """Test files with a test marked ``gpu``, relative to the repository root."""
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    marked = [p for p in tests if GPU_MARK.search(p.read_text(encoding="utf-8"))]
    return [str(p.relative_to(ROOT)) for p in marked]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_tests(_work: Path, _device: torch.device, _sizes: Sizes, timeout_s: int = 240) -> dict:
    files = gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    lines = done.stdout.strip().splitlines() or [done.stderr.strip()]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1])}
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    figures = {"files": files, "exit_code": done.returncode, **counts, "failures": failures[:10]}
    if done.returncode != 0:
        figures["error"] = f"pytest -m gpu exited {done.returncode}: {one_line(lines[-1])}"
    return figures


def _train_seconds(
    formats: np.ndarray, targets: np.ndarray, iterations: int, device: torch.device, batch: int
) -> tuple[float, TrainingLog]:
    paper = PROFILES["paper"]
    settings = TrainSettings(
        iterations=iterations,
        batch_size=batch,
        learning_rate=paper["learning_rate"],
        max_shift_px=16,
    )
    model = build_model(paper["model"], formats.shape[1], 2)
    _synchronise(device)
    start = time.perf_counter()
    log = train_network(model, formats, targets, settings, device=device, progress=False)
    _synchronise(device)
    return time.perf_counter() - start, log


def training(_work: Path, device: torch.device, sizes: Sizes) -> dict:
    rng = np.random.default_rng(0)
    shape = (sizes.training_subjects, *sizes.format_shape)
    formats = rng.integers(0, 256, shape, dtype=np.uint8)
    targets = rng.normal(size=(sizes.training_subjects, 1))
    short_run, long_run = (
        sizes.warm_up_iterations,
        sizes.warm_up_iterations + sizes.timed_iterations,
    )
    _train_seconds(formats, targets, short_run, device, sizes.batch_size)  # warm-up
    short, _ = _train_seconds(formats, targets, short_run, device, sizes.batch_size)
    long, log = _train_seconds(formats, targets, long_run, device, sizes.batch_size)
    per_s = sizes.timed_iterations / max(long - short, 1e-9)
    return {
        "model": PROFILES["paper"]["model"],
        "format_shape": list(sizes.format_shape),
        "batch_size": sizes.batch_size,
        "timed_iterations": sizes.timed_iterations,
        "iterations_per_s": float(f"{per_s:.3g}"),  # 3 digits: a slow CPU runs < 1 it/s
        "projected_minutes_per_6000_iterations": round(6000 / per_s / 60, 2),
        "precision": log.precision,
        "skipped_steps": log.skipped_steps,
        "nonfinite_losses": log.nonfinite_losses,
        "target": "<= 2.5 minutes per 6000 iterations",
    }


def _subjects_per_min(fn: Callable[[], object], n: int, device: torch.device) -> float:
    _synchronise(device)
    start = time.perf_counter()
    fn()
    _synchronise(device)
    return round(60 * n / (time.perf_counter() - start), 0)


def inference(work: Path, device: torch.device, sizes: Sizes) -> dict:
    from liverfat.data.manifest import Manifest
    from liverfat.data.phantom import generate_cohort

    model = build_model(PROFILES["paper"]["model"], sizes.format_shape[0], 2)
    shape = (sizes.formats_in_memory, *sizes.format_shape)
    formats = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    predict_network(model, formats[:2], 1, "mean_variance", device=device)  # warm-up
    in_memory = _subjects_per_min(
        lambda: predict_network(model, formats, 1, "mean_variance", device=device),
        len(formats),
        device,
    )
    workers = max(1, min(16, (os.cpu_count() or 2) - 2))
    card = generate_cohort(
        sizes.nifti_subjects,
        work / "cohort",
        seed=3,
        scale=sizes.nifti_scale,
        n_workers=workers,
        progress=False,
    )
    manifest = Manifest.load(card)
    engine = DeepEngine(
        profile="paper",
        iterations=sizes.fit_iterations,
        device=str(device),
        executor="processes",
        n_workers=workers,
        work_dir=str(work / "fit"),
    ).fit(manifest.select(split="A"))
    engine.set_params(work_dir=str(work / "predict"))  # no cached formats: from NIfTI
    n = len(manifest.subject_ids)
    from_nifti = _subjects_per_min(lambda: engine.predict(manifest), n, device)
    from_cache = _subjects_per_min(lambda: engine.predict(manifest), n, device)
    return {
        "subjects_per_min_formats_in_memory_b64": in_memory,
        "subjects_per_min_engine_from_nifti": from_nifti,
        "subjects_per_min_engine_from_cached_formats": from_cache,
        "nifti_subjects": n,
        "nifti_scale": sizes.nifti_scale,
        "format_workers": workers,
        "target": ">= 1000 subjects per minute from cached formats",
    }


def atlas(work: Path, _device: torch.device, sizes: Sizes) -> dict:
    """The torch backend on this process's device (CUDA when present, as the engine picks)."""
    from benchmarks.bench_atlas import cuda_figures

    return cuda_figures(work / "atlas", scale=sizes.atlas_scale)


def segmentation(work: Path, device: torch.device, sizes: Sizes) -> dict:
    from benchmarks.bench_segmentation import predict_seconds_per_volume, unet_figures
    from liverfat.data.manifest import Manifest
    from liverfat.data.phantom import generate_cohort

    figures = unet_figures(
        device, sizes.unet_slice, warm_up=sizes.warm_up_iterations, timed=sizes.timed_iterations
    )
    folder = generate_cohort(
        4, work / "unet", seed=3, scale=sizes.nifti_scale, executor="serial", progress=False
    )
    seconds = predict_seconds_per_volume(Manifest.load(folder), device=str(device))
    return {
        **figures,
        "predict_s_per_volume": round(seconds, 2),
        "predict_volumes_per_s": round(1.0 / seconds, 2),
    }


PARTS: dict[str, Callable[[Path, torch.device, Sizes], dict]] = {
    "cuda_tests": cuda_tests,
    "training": training,
    "inference": inference,
    "segmentation": segmentation,
    "atlas": atlas,
}


def run_parts(
    work: Path, device: torch.device, sizes: Sizes, names: Sequence[str] = tuple(PARTS)
) -> dict:
    """Run the named parts on ``device``; a part that fails is reported and the rest go on."""
    figures: dict = {}
    for name in names:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            figures[name] = PARTS[name](work, device, sizes)
        except Exception as exc:  # noqa: BLE001 - report the part and go on with the next
            figures[name] = {"error": f"{type(exc).__name__}: {one_line(exc)}"}
        figures[name]["wall_s"] = round(time.perf_counter() - start, 1)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            figures[name]["peak_gpu_memory_mib"] = round(peak / 2**20)
        print(json.dumps({name: figures[name]}), flush=True)
    figures["ok"] = not any("error" in figures[name] for name in names)
    return figures


def run(work: Path) -> dict:
    figures: dict = {"environment": environment()}
    if not torch.cuda.is_available():
        return {**figures, "skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    return {**figures, **run_parts(work, torch.device("cuda"), ON_GPU)}
