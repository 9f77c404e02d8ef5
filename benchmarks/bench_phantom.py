"""Phantom generation speed: subjects per second at half scale (both cores), full-scale seconds
per subject and peak memory."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import time_and_peak_memory
from liverfat.data.phantom import generate_cohort


def _one_full(out: str) -> None:
    generate_cohort(1, out, seed=7, scale="full", executor="serial", progress=False)


def run(work: Path) -> dict:
    n_half = 16
    start = time.perf_counter()
    generate_cohort(
        n_half, work / "half", seed=3, scale="half", executor="processes", progress=False
    )
    half_s = time.perf_counter() - start
    full = []
    for repeat in range(3):
        full.append(time_and_peak_memory(_one_full, str(work / f"full{repeat}")))
    full_s = sorted(t for t, _ in full)[1]
    return {
        "half_scale_subjects": n_half,
        "half_scale_subjects_per_s": round(n_half / half_s, 2),
        "full_scale_s_per_subject_median": round(full_s, 2),
        "full_scale_peak_memory_mib_max": round(max(m for _, m in full), 1),
        "targets": {
            "half_scale_subjects_per_s": ">= 2",
            "full_scale_s_per_subject": "< 5",
            "full_scale_peak_memory_mib": "< 2048",
        },
    }
