"""Helpers for benchmarks: repeated timing with medians, and peak memory of a child process."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any


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
