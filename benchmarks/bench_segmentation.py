"""U-Net segmentation throughput: training steps per second and seconds per volume.

CPU (``make bench``): the default U-Net (BasicUNet 16-16-32-64-128-16, 2.5D input of three
slices of water and fat) on the half-scale phantom's 112 x 96 slices, batch 16: training
iterations per second (elastic augmentation included), and inference seconds per volume through
:meth:`SegmentationEngine.predict` from NIfTI (preparation, every slice, the mask back on the
subject's grid, largest component, readout). The weights are untrained: speed does not depend
on them. On CUDA the GPU check (``python -m benchmarks gpu``, part ``segmentation``) runs
:func:`unet_figures` at the full-scale slice size with mixed precision.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import skip_cpu, skipped_cpu_only
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.segmentation.engine import SegmentationEngine
from liverfat.segmentation.training import SegmentationSettings, SliceBatches, train_segmentation


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_seconds(engine, batches, iterations: int, device: torch.device) -> tuple[float, str]:
    network = engine._build_network(6)
    settings = SegmentationSettings(iterations=iterations, batch_size=16)
    _synchronise(device)
    start = time.perf_counter()
    train_segmentation(network, batches, settings)
    _synchronise(device)
    return time.perf_counter() - start


def unet_figures(
    device: torch.device, slice_hw: tuple[int, int], *, warm_up: int, timed: int, volumes: int = 40
) -> dict:
    """Training iterations per second (the difference of a warm-up+timed and a warm-up run, so
    set-up cancels) on random slices of ``slice_hw`` pixels, batch 16, water + fat x 3 slices."""
    rng = np.random.default_rng(0)
    h, w = slice_hw
    vols = [rng.random((20, 2, h, w), dtype=np.float32) for _ in range(volumes)]
    labels = [(rng.random((20, h, w)) > 0.7).astype(np.uint8) for _ in range(volumes)]
    batches = SliceBatches(vols, labels, 1, device, seed=0)
    engine = SegmentationEngine(device=str(device))
    _train_seconds(engine, batches, warm_up, device)
    short = _train_seconds(engine, batches, warm_up, device)
    long = _train_seconds(engine, batches, warm_up + timed, device)
    # on a loaded machine the difference can vanish: then the long run's rate, set-up included
    positive = long - short > 0
    rate = timed / (long - short) if positive else (warm_up + timed) / long
    return {
        "slice_hw": [h, w],
        "batch_size": 16,
        "train_iterations_per_s": round(rate, 2),
        "rate_from": "difference" if positive else "long run, set-up included",
    }


def predict_seconds_per_volume(manifest: Manifest, device: str = "cpu") -> float:
    """Median seconds per volume of an (untrained) engine's predict, from NIfTI."""
    engine = SegmentationEngine(iterations=1, batch_size=2, device=device)
    engine.fit(manifest.select(subject_ids=manifest.subject_ids[:1]))
    times = []
    for sid in manifest.subject_ids:
        start = time.perf_counter()
        engine.predict(manifest.select(subject_ids=[sid]))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(work: Path) -> dict:
    if skip_cpu():
        return skipped_cpu_only()
    manifest = Manifest.load(
        generate_cohort(6, work / "half", seed=5, scale="half", executor="serial", progress=False)
    )
    cpu = torch.device("cpu")
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_unet": unet_figures(cpu, (112, 96), warm_up=3, timed=20),
        "cpu_predict_s_per_volume_half_scale": round(predict_seconds_per_volume(manifest), 2),
    }
