"""Phantom generation speed: seconds for 20 quarter-scale subjects and subjects per second at half
scale (both cores), without and with 30 % repeat scans (scans per second) and with realism
(docs/phantom.md), full-scale seconds per subject and peak memory."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import skip_cpu, skipped_cpu_only, time_and_peak_memory
from liverfat.data.phantom import PhantomConfig, generate_cohort
from liverfat.data.phantom.realism import realistic_config


def _one_full(out: str) -> None:
    generate_cohort(1, out, seed=7, scale="full", executor="serial", progress=False)


def _generate_s(
    n: int,
    out: Path,
    *,
    seed: int,
    scale: str,
    n_workers: int | None,
    config: PhantomConfig | None = None,
) -> float:
    """Wall seconds to generate ``n`` subjects (and their repeats) with the process pool."""
    start = time.perf_counter()
    generate_cohort(
        n,
        out,
        seed=seed,
        scale=scale,
        config=config,
        executor="processes",
        n_workers=n_workers,
        progress=False,
    )
    return time.perf_counter() - start


def run(work: Path) -> dict:
    if skip_cpu():
        return skipped_cpu_only()
    n_quarter = 20  # the size of the test suite's phantom cohort (tests/conftest.py)
    quarter_s = _generate_s(n_quarter, work / "quarter", seed=1, scale="quarter", n_workers=2)
    n_half = 16
    half_s = _generate_s(n_half, work / "half", seed=3, scale="half", n_workers=None)
    repeats = PhantomConfig(repeat_fraction=0.3)
    repeat_s = _generate_s(
        n_half, work / "half_repeats", seed=3, scale="half", n_workers=None, config=repeats
    )
    n_scans = n_half + round(0.3 * n_half)
    realism = realistic_config(PhantomConfig())
    realism_s = _generate_s(
        n_half, work / "half_realism", seed=3, scale="half", n_workers=None, config=realism
    )
    full = []
    for repeat in range(3):
        full.append(time_and_peak_memory(_one_full, str(work / f"full{repeat}")))
    full_s = sorted(t for t, _ in full)[1]
    return {
        "quarter_scale_subjects": n_quarter,
        "quarter_scale_s_2_workers": round(quarter_s, 2),
        "half_scale_subjects": n_half,
        "half_scale_subjects_per_s": round(n_half / half_s, 2),
        "half_scale_repeat_fraction_0.3_scans": n_scans,
        "half_scale_repeat_fraction_0.3_scans_per_s": round(n_scans / repeat_s, 2),
        "half_scale_realism_subjects_per_s": round(n_half / realism_s, 2),
        "full_scale_s_per_subject_median": round(full_s, 2),
        "full_scale_peak_memory_mib_max": round(max(m for _, m in full), 1),
        "targets": {
            "quarter_scale_s_2_workers": "< 60",
            "half_scale_subjects_per_s": ">= 2",
            "half_scale_repeat_fraction_0.3_scans_per_s": ">= 2",
            "half_scale_realism_subjects_per_s": ">= 2",
            "full_scale_s_per_subject": "< 5",
            "full_scale_peak_memory_mib": "< 2048",
        },
    }
