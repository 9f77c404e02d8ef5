"""liverfat.parallel: the same results from every executor; failures cost one item."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from liverfat.errors import LiverfatError
from liverfat.parallel import map_subjects

REPO = Path(__file__).resolve().parents[1]


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


def test_cuda_work_gets_at_most_max_cuda_workers_and_a_share_of_memory_each():
    from liverfat.parallel import MAX_CUDA_WORKERS, cuda_memory_fraction, workers_for_device

    assert MAX_CUDA_WORKERS == 4
    for device in ("cuda", "cuda:0", "cuda:1"):
        assert [workers_for_device(n, device) for n in (1, 3, 4, 5, 16)] == [1, 3, 4, 4, 4]
        assert cuda_memory_fraction(4, device) == pytest.approx(0.9 / 4)
    for device in ("cpu", None, "mps"):  # CPU work keeps the workers asked for, uncapped
        assert workers_for_device(16, device) == 16
        assert cuda_memory_fraction(16, device) is None
    assert workers_for_device(0, "cuda") == 1


def _recording_runner(seen: list):
    def runner(worker, items, n_workers, scheduler):
        seen.append((n_workers, worker.device, worker.memory_fraction, worker.n_threads))
        yield from ()

    return runner


@pytest.mark.parametrize(
    ("executor", "device", "scheduler", "expected"),
    [
        ("processes", "cuda", None, (4, "cuda", 0.9 / 4, 2)),
        ("processes", "cuda:1", None, (4, "cuda:1", 0.9 / 4, 2)),
        ("processes", "cpu", None, (8, "cpu", None, 2)),
        ("processes", None, None, (8, None, None, 2)),
        ("dask", "cuda", None, (4, "cuda", 0.9 / 4, 2)),  # a LocalCluster on this machine
        ("dask", "cuda", "tcp://elsewhere:8786", (8, None, None, 2)),  # its cluster decides
    ],
)
def test_map_subjects_hands_the_cuda_plan_to_its_workers(
    monkeypatch, executor, device, scheduler, expected
):
    from liverfat import parallel

    seen: list = []
    monkeypatch.setattr(parallel, f"_{executor}", _recording_runner(seen))
    items = list(range(10))
    list(
        map_subjects(
            square,
            items,
            executor=executor,
            n_workers=8,
            threads_per_worker=2,
            scheduler=scheduler,
            device=device,
        )
    )
    assert len(seen) == 1
    n_workers, worker_device, fraction, threads = seen[0]
    assert (n_workers, worker_device, threads) == expected[:2] + expected[3:]
    assert fraction == pytest.approx(expected[2])


def test_a_small_batch_shares_the_gpu_among_the_workers_it_starts(monkeypatch):
    from liverfat import parallel

    seen: list = []
    monkeypatch.setattr(parallel, "_processes", _recording_runner(seen))
    list(map_subjects(square, [1, 2], executor="processes", n_workers=8, device="cuda"))
    assert seen[0][:3] == (2, "cuda", pytest.approx(0.45))


def test_a_worker_caps_cuda_memory_only_for_cuda_work(monkeypatch):
    pytest.importorskip("torch")
    from liverfat import parallel
    from liverfat.nn import device

    for var in parallel._THREAD_VARS:  # limit_threads sets them: restored after the test
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    calls = []
    monkeypatch.setattr(device, "limit_cuda_memory", lambda f, d: calls.append((f, d)))
    monkeypatch.setattr(device, "set_torch_threads", lambda n: None)
    assert parallel._Worker(square, 1, "cuda:1", 0.3)(3) == 9
    assert parallel._Worker(square, 1, "cpu", None)(3) == 9
    assert calls == [(0.3, "cuda:1")]


def test_process_pools_never_fork():
    """The parent may have initialised CUDA (``torch.cuda.is_available``); a forked child of
    such a parent fails on its first CUDA call."""
    from liverfat import parallel

    with parallel._pool(1) as pool:  # no worker starts until a job is submitted
        assert pool._mp_context.get_start_method() in ("forkserver", "spawn")


def cuda_worker(_: int) -> tuple[int, float | None]:
    import torch

    torch.ones(1, device="cuda").sum().item()  # a CUDA call in a worker of a CUDA parent
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    return os.getpid(), None if get is None else get(0)


@pytest.mark.gpu
def test_cuda_workers_start_under_a_parent_that_initialised_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU in this environment")
    torch.ones(1, device="cuda").sum().item()  # the parent's own CUDA context
    outcomes = list(
        map_subjects(cuda_worker, range(12), executor="processes", n_workers=8, device="cuda")
    )
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert len({o.value[0] for o in outcomes}) <= 4
    fractions = [o.value[1] for o in outcomes if o.value[1] is not None]
    assert all(f == pytest.approx(0.9 / 4) for f in fractions), fractions


def test_importing_the_atlas_engine_and_parallel_skips_optional_packages():
    """The torch path runs on a machine with only the GPU stack: importing the atlas engine or
    liverfat.parallel pulls in none of the packages only other paths need."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    optional = ["dask", "distributed", "itk", "pydeform", "pingouin", "xgboost", "radiomics"]
    code = (
        "import sys, liverfat.atlas.engine, liverfat.parallel\n"
        f"print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_pool_workers_end_with_their_parent(tmp_path, sig):
    """A SIGTERM or SIGKILL to a `processes` batch leaves no worker computing."""
    code = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from liverfat.parallel import map_subjects

        def work(i):
            Path({str(tmp_path)!r}, f"worker{{i}}.pid").write_text(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            list(map_subjects(work, range(2), executor="processes", n_workers=2))
        """
    )
    script = tmp_path / "batch.py"
    script.write_text(code, encoding="utf-8")
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("worker*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.read_text()) for p in tmp_path.glob("worker*.pid")]
    assert len(workers) == 2, "workers did not start"
    parent.send_signal(sig)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [w for w in workers if psutil.pid_exists(w) and psutil.Process(w).status() != "zombie"]
    assert not left, f"workers {left} still alive after the parent got {sig.name}"
