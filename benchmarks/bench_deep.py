"""Deep engine throughput on CPU: liver-fat formats per second from NIfTI (half-scale phantom,
one process), ResNet50 inference subjects per second (batch 16, float32, channels-last) on
full-size formats (the paper profile) and on half-size formats (the quick profile), and the
combined seconds per subject (target: at most 0.5 s on 2 cores), and the host milliseconds to
build one training batch (paper shapes and the cpu profile's). The CUDA figures (training
iterations per second, inference on a GPU) are the GPU check's: ``python -m benchmarks gpu``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import median_time_s, skip_cpu, skipped_cpu_only
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.deep.formats import compute_format
from liverfat.deep.training import TrainingBatches, TrainSettings, predict_network
from liverfat.nn.registry import build_model

CPU = torch.device("cpu")


def _formats_per_s(manifest: Manifest) -> float:
    times = []
    for sid in manifest.subject_ids:
        start = time.perf_counter()
        compute_format(manifest, sid, "liverfat")
        times.append(time.perf_counter() - start)
    return 1 / statistics.median(times)


def _inference_per_s(
    device: torch.device, batch: int, n_batches: int = 3, input_scale: float = 1.0
) -> float:
    model = build_model("resnet50", 1, 2)
    images = np.random.default_rng(0).integers(0, 255, (batch, 1, 176, 376), dtype=np.uint8)
    predict_network(model, images[:2], 1, "mean_variance", input_scale=input_scale, device=device)

    def one_batch() -> None:
        predict_network(
            model,
            images,
            1,
            "mean_variance",
            input_scale=input_scale,
            device=device,
            batch_size=batch,
        )

    return batch / median_time_s(one_batch, n_batches)[0]


def _ms_per_batch(batch: int, input_scale: float, max_shift_px: int) -> float:
    """Median host time (ms) to build one training batch from 240 uint8 liver-fat formats."""
    rng = np.random.default_rng(0)
    formats = rng.integers(0, 255, (240, 1, 176, 376), dtype=np.uint8)
    settings = TrainSettings(batch_size=batch, max_shift_px=max_shift_px)
    batches = TrainingBatches(formats, rng.normal(size=(240, 1)), settings, input_scale, CPU)
    for _ in range(20):
        batches.next()
    return 1000 * median_time_s(batches.next, 300)[0]


def run(work: Path) -> dict:
    if skip_cpu():
        return skipped_cpu_only()
    manifest = Manifest.load(
        generate_cohort(8, work / "half", seed=5, scale="half", executor="serial", progress=False)
    )
    formats_per_s = _formats_per_s(manifest)
    cpu_per_s = _inference_per_s(CPU, 16)
    quick_per_s = _inference_per_s(CPU, 16, input_scale=0.5)
    figures = {
        "torch_threads": torch.get_num_threads(),
        "cpu_formats_per_s_half_scale_from_nifti": round(formats_per_s, 2),
        "cpu_resnet50_inference_subjects_per_s": round(cpu_per_s, 2),
        "cpu_s_per_subject_format_plus_inference": round(1 / formats_per_s + 1 / cpu_per_s, 3),
        "cpu_resnet50_quick_profile_inference_subjects_per_s": round(quick_per_s, 2),
        "cpu_s_per_subject_format_plus_inference_quick_profile": round(
            1 / formats_per_s + 1 / quick_per_s, 3
        ),
        # the host work of one training step's batch: paper shapes, and the cpu profile's
        "cpu_ms_per_training_batch_b32_full_size": round(_ms_per_batch(32, 1.0, 16), 3),
        "cpu_ms_per_training_batch_b16_cpu_profile": round(_ms_per_batch(16, 0.25, 4), 3),
        "targets": {"cpu_s_per_subject_format_plus_inference": "<= 0.5"},
    }
    return figures
