"""liverfat.parallel: the same results from every executor; failures cost one item."""

from __future__ import annotations

import os

import pytest

from liverfat.errors import LiverfatError
from liverfat.parallel import map_subjects


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("subject 3 is broken\nsecond line")
    if x == 5:
        os._exit(1)  # a native crash kills the worker process
    return x * x


def square(x: int) -> int:
    return x * x


def _collect(executor: str, fn, items, **kwargs) -> dict:
    return {
        o.item: (o.value, o.error) for o in map_subjects(fn, items, executor=executor, **kwargs)
    }


def test_serial_and_processes_agree_and_isolate_failures() -> None:
    items = [0, 1, 2, 3, 4, 6, 7]
    serial = _collect("serial", square_or_fail, items)
    pooled = _collect("processes", square_or_fail, items, n_workers=2)
    assert serial == pooled
    assert serial[3] == (None, "ValueError: subject 3 is broken second line")
    assert serial[7] == (49, None)


def test_worker_crash_costs_one_item() -> None:
    results = _collect("processes", square_or_fail, list(range(8)), n_workers=2)
    assert results[5][0] is None and "crashed" in results[5][1]
    assert {k: v for k, (v, e) in results.items() if e is None} == {
        k: k * k for k in (0, 1, 2, 4, 6, 7)
    }


@pytest.mark.slow
def test_dask_local_cluster_gives_same_results() -> None:
    results = _collect("dask", square, list(range(6)), n_workers=2)
    assert results == {k: (k * k, None) for k in range(6)}


def test_unknown_executor() -> None:
    with pytest.raises(LiverfatError, match="unknown executor"):
        list(map_subjects(square, [1], executor="threads"))


def worker_address(_: int) -> str:
    from distributed import get_worker

    return get_worker().address


@pytest.mark.slow
def test_default_scheduler_is_used_by_jobs_naming_none() -> None:
    from distributed import LocalCluster

    from liverfat.parallel import dask_scheduler

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with dask_scheduler(cluster.scheduler_address):
            results = _collect("dask", worker_address, [1, 2])
        workers = set(cluster.scheduler_info["workers"])
    assert {value for value, _ in results.values()} <= workers


def test_limit_threads_caps_torch_through_the_shared_helper(monkeypatch):
    pytest.importorskip("torch")
    from liverfat import parallel
    from liverfat.nn import device

    for var in parallel._THREAD_VARS:  # restored after the test
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    calls = []
    monkeypatch.setattr(device, "set_torch_threads", calls.append)
    parallel.limit_threads(1)
    assert calls == [1]
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_importing_parallel_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = "import liverfat.parallel, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
