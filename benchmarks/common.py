"""Helpers for benchmarks: repeated timing with medians, peak memory of a child process, and
the switch that skips CPU-only parts on a GPU machine."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

#: Set to 1 on a machine with only the GPU stack (torch, numpy, scipy, SimpleITK, MONAI): the
#: benchmarks skip their CPU-only parts (elastix and pydeform comparisons, radiomics, phantom
#: generation and ingestion), which need packages absent there or measure nothing GPU-bound.
SKIP_CPU_VAR = "LIVERFAT_BENCH_SKIP_CPU"


def skip_cpu() -> bool:
    """Whether ``$LIVERFAT_BENCH_SKIP_CPU`` asks to skip the CPU-only benchmark parts."""
    return os.environ.get(SKIP_CPU_VAR, "").strip().lower() not in ("", "0", "false", "no")


def skipped_cpu_only() -> dict:
    """The figures of a benchmark skipped by :data:`SKIP_CPU_VAR`."""
    return {"skipped": f"CPU-only benchmark ({SKIP_CPU_VAR} is set)"}


def median_time_s(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall time (s) of ``fn()`` over ``repeats`` calls, and all the times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _child(fn, args, queue) -> None:
    import resource

    start = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - start
    queue.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def time_and_peak_memory(fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """Run ``fn(*args)`` in a fresh process; return (wall seconds, peak resident memory in MiB).

    The peak includes the interpreter and imports, so it is what a user's process would need.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(fn, args, queue))
    process.start()
    elapsed, peak_mib = queue.get()
    process.join()
    return elapsed, peak_mib
