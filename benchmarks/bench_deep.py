"""Deep engine throughput on CPU: liver-fat formats per second from NIfTI (half-scale phantom,
one process), ResNet50 inference subjects per second (batch 16, float32, channels-last) on
full-size formats (the paper profile) and on half-size formats (the quick profile), and the
combined seconds per subject (target: at most 0.5 s on 2 cores). On a CUDA device, also
inference at batch 64 with mixed precision and seconds per 1000 training iterations (batch 32)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import median_time_s
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.deep.formats import compute_format
from liverfat.deep.training import TrainSettings, predict_network, to_input, train_network
from liverfat.nn.registry import build_model


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
    x = to_input(images, input_scale)
    predict_network(model, x[:2], 1, "mean_variance", device=device)  # warm-up

    def one_batch() -> None:
        predict_network(model, x, 1, "mean_variance", device=device, batch_size=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch / median_time_s(one_batch, n_batches)[0]


def run(work: Path) -> dict:
    manifest = Manifest.load(
        generate_cohort(8, work / "half", seed=5, scale="half", executor="serial", progress=False)
    )
    formats_per_s = _formats_per_s(manifest)
    cpu_per_s = _inference_per_s(torch.device("cpu"), 16)
    quick_per_s = _inference_per_s(torch.device("cpu"), 16, input_scale=0.5)
    figures = {
        "torch_threads": torch.get_num_threads(),
        "cpu_formats_per_s_half_scale_from_nifti": round(formats_per_s, 2),
        "cpu_resnet50_inference_subjects_per_s": round(cpu_per_s, 2),
        "cpu_s_per_subject_format_plus_inference": round(1 / formats_per_s + 1 / cpu_per_s, 3),
        "cpu_resnet50_quick_profile_inference_subjects_per_s": round(quick_per_s, 2),
        "cpu_s_per_subject_format_plus_inference_quick_profile": round(
            1 / formats_per_s + 1 / quick_per_s, 3
        ),
        "targets": {"cpu_s_per_subject_format_plus_inference": "<= 0.5"},
    }
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        figures["cuda_resnet50_inference_subjects_per_min_b64_amp"] = round(
            60 * _inference_per_s(cuda, 64), 0
        )
        images = np.random.default_rng(0).integers(0, 255, (256, 1, 176, 376), dtype=np.uint8)
        model = build_model("resnet50", 1, 2)
        settings = TrainSettings(iterations=200, batch_size=32)
        start = time.perf_counter()
        train_network(
            model, to_input(images, 1.0), np.zeros((256, 1)), settings, device=cuda, progress=False
        )
        torch.cuda.synchronize()
        figures["cuda_s_per_1000_training_iterations_b32"] = round(
            (time.perf_counter() - start) * 1000 / 200, 1
        )
        figures["targets"].update(
            {"cuda_inference_subjects_per_min": ">= 1000", "cuda_s_per_6000_iterations": "<= 150"}
        )
    return figures
