"""One way to map a per-subject function: serial, a local process pool, or a Dask cluster.

Every batch command (phantom generation, registration, feature extraction, ingestion) goes through
:func:`map_subjects`. It yields :class:`Outcome` objects as jobs finish, so callers can write each
subject's result atomically the moment it exists (which makes batches resumable), and it turns
every exception, including a worker process killed by a native crash, into an ``error`` string
for that one item while the rest of the batch goes on.

Work on a CUDA device (``device="cuda"``) runs in at most :data:`MAX_CUDA_WORKERS` local
workers, each with its share of the GPU's memory. Workers are started by forkserver (process
pool) or spawn (Dask), never fork: the parent may have initialised CUDA (``is_available``), and a
forked child of such a parent crashes on its first CUDA call.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from tqdm.auto import tqdm

from liverfat.errors import LiverfatError, one_line

Executor = Literal["serial", "processes", "dask"]
EXECUTORS = ("serial", "processes", "dask")
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


#: Local worker processes that may share one CUDA device: each holds its own CUDA context
#: (about 0.5 GB) and caching allocator, and more than a few only queue for the same GPU.
MAX_CUDA_WORKERS = 4
#: Part of the device's memory the workers' allocators may hold together; the rest is left for
#: their CUDA contexts, which the allocator's cap does not count.
CUDA_MEMORY_SHARE = 0.9


def workers_for_device(requested: int, device: str | None) -> int:
    """Local worker processes for ``requested`` workers whose work runs on ``device`` (``cpu``,
    ``cuda``, ``cuda:1``; None: no torch): at most :data:`MAX_CUDA_WORKERS` on CUDA."""
    if _is_cuda(device):
        return max(1, min(requested, MAX_CUDA_WORKERS))
    return max(1, requested)


def cuda_memory_fraction(n_workers: int, device: str | None) -> float | None:
    """Each of ``n_workers`` local workers' share of ``device``'s memory; None off CUDA."""
    return CUDA_MEMORY_SHARE / max(1, n_workers) if _is_cuda(device) else None


def _is_cuda(device: str | None) -> bool:
    return device is not None and str(device).split(":")[0] == "cuda"  # no torch import here


#: Scheduler used by ``executor="dask"`` calls that name none (see :func:`dask_scheduler`).
_DEFAULT_SCHEDULER: list[str] = []


@contextlib.contextmanager
def dask_scheduler(address: str | None) -> Iterator[None]:
    """Within the block, Dask jobs that name no scheduler go to ``address`` (None: no change).

    This is how a study sends every engine's per-subject work to one cluster without each
    engine having to know about it.
    """
    if address is None:
        yield
        return
    _DEFAULT_SCHEDULER.append(address)
    try:
        yield
    finally:
        _DEFAULT_SCHEDULER.pop()


@dataclass(frozen=True)
class Outcome:
    """The result of one job: ``value`` when it worked, otherwise a one-line ``error``."""

    index: int
    item: Any
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def limit_threads(n_threads: int) -> None:
    """Cap the native thread pools of this process (OpenMP, BLAS, ITK, torch) at ``n_threads``.

    ITK's *global* default is set rather than a per-filter count: a per-call thread count makes
    itk-elastix's B-spline registration segfault.
    """
    for var in _THREAD_VARS:
        os.environ[var] = str(n_threads)
    try:  # only where these libraries are already in use; importing them here would be wasteful
        import sys

        if "itk" in sys.modules:
            sys.modules["itk"].MultiThreaderBase.SetGlobalDefaultNumberOfThreads(n_threads)
        if "SimpleITK" in sys.modules:
            sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(n_threads)
        if "torch" in sys.modules:
            from liverfat.nn.device import set_torch_threads

            set_torch_threads(n_threads)
    except Exception:  # noqa: BLE001 - thread caps are an optimisation, never a failure
        pass


def _describe(exc: BaseException) -> str:
    text = one_line(exc)
    return text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class _Worker:
    """``fn`` as a worker process runs it: its native threads capped first and, for CUDA work,
    its allocator's share of the device (picklable: a module-level ``fn`` travels by name)."""

    fn: Callable[[Any], Any]
    n_threads: int
    device: str | None = None
    memory_fraction: float | None = None

    def __call__(self, item: Any) -> Any:
        limit_threads(self.n_threads)
        if self.memory_fraction is not None:
            from liverfat.nn.device import limit_cuda_memory

            limit_cuda_memory(self.memory_fraction, self.device)
        return self.fn(item)


def map_subjects(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    executor: Executor = "serial",
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    progress: str | None = None,
    device: str | None = None,
) -> Iterator[Outcome]:
    """Apply ``fn`` to each item, yielding an :class:`Outcome` per item as it finishes.

    Parameters
    ----------
    fn:
        A picklable (module-level) function of one item.
    executor:
        ``serial`` (in this process), ``processes`` (a local pool; a worker killed by a native
        crash costs only its own item), or ``dask`` (a ``distributed`` cluster at ``scheduler``,
        or a LocalCluster of ``n_workers`` processes when ``scheduler`` is None).
    n_workers:
        Worker processes (default: the CPU count).
    threads_per_worker:
        Native threads each worker may use.
    progress:
        Label of a progress bar on stderr; None for no bar.
    device:
        Where ``fn``'s torch work runs (``cpu``, ``cuda``, ``cuda:1``; None: no torch). On CUDA
        a process pool or local Dask cluster gets at most :data:`MAX_CUDA_WORKERS` workers, each
        allocator capped at its share of the device's memory (:func:`cuda_memory_fraction`);
        a remote scheduler's workers are left as its cluster set them up.
    """
    items = list(items)
    if executor not in EXECUTORS:
        raise LiverfatError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    n_workers = n_workers or os.cpu_count() or 1
    if executor == "processes":
        n_workers = min(n_workers, max(len(items), 1))
    worker = _Worker(fn, threads_per_worker)
    local = executor == "processes" or (scheduler is None and not _DEFAULT_SCHEDULER)
    if executor != "serial" and local:
        n_workers = workers_for_device(n_workers, device)
        worker = _Worker(fn, threads_per_worker, device, cuda_memory_fraction(n_workers, device))
    runner = {"serial": _serial, "processes": _processes, "dask": _dask}[executor]
    bar = tqdm(total=len(items), desc=progress, disable=progress is None, unit="subject")
    try:
        for outcome in runner(worker, items, n_workers, scheduler):
            bar.update(1)
            yield outcome
    finally:
        bar.close()


def _serial(worker: _Worker, items, n_workers, scheduler) -> Iterator[Outcome]:
    for index, item in enumerate(items):
        try:  # this process's own threads and GPU memory are the caller's to set
            yield Outcome(index, item, value=worker.fn(item))
        except Exception as exc:  # noqa: BLE001 - one subject's failure must not stop the batch
            yield Outcome(index, item, error=_describe(exc))


#: Start method of the process pools. Never fork: the parent may hold torch/ITK threads or an
#: initialised CUDA driver; forkserver forks from a clean server, cheaper than spawn per task.
START_METHOD = "forkserver"


#: How often (s) a pool worker checks that the process that started the pool is alive.
PARENT_POLL_S = 0.5


def _pool(n_workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(
        n_workers,
        mp_context=multiprocessing.get_context(START_METHOD),
        initializer=_end_with_parent,
        initargs=(os.getpid(),),
    )


def _end_with_parent(parent_pid: int) -> None:
    """In a pool worker: exit as soon as the process that started the pool is gone.

    A SIGTERM or SIGKILL to the parent runs none of its clean-up, and a forkserver worker's own
    parent is the fork server, so without this the workers would compute on for minutes.
    """
    import threading
    import time

    import psutil

    def alive() -> bool:
        try:  # a killed parent its own parent has not reaped yet is a zombie: gone as well
            return psutil.Process(parent_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def watch() -> None:
        while alive():
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _processes(worker: _Worker, items, n_workers, scheduler) -> Iterator[Outcome]:
    suspects: list[int] = []
    with _pool(n_workers) as pool:
        futures = {pool.submit(worker, item): i for i, item in enumerate(items)}
        for future in cf.as_completed(futures):
            index = futures[future]
            try:
                yield Outcome(index, items[index], value=future.result())
            except cf.process.BrokenProcessPool:
                suspects.append(index)  # a crash breaks every job in flight: retry them alone
            except Exception as exc:  # noqa: BLE001
                yield Outcome(index, items[index], error=_describe(exc))
    for index in sorted(suspects):
        with _pool(1) as alone:
            try:
                value = alone.submit(worker, items[index]).result()
                yield Outcome(index, items[index], value=value)
            except cf.process.BrokenProcessPool:
                yield Outcome(index, items[index], error="worker process crashed (native code)")
            except Exception as exc:  # noqa: BLE001
                yield Outcome(index, items[index], error=_describe(exc))


def _dask(worker: _Worker, items, n_workers, scheduler) -> Iterator[Outcome]:
    from distributed import Client, LocalCluster, as_completed  # here: imports without dask

    cluster = None
    if scheduler is None and _DEFAULT_SCHEDULER:
        scheduler = _DEFAULT_SCHEDULER[-1]
    if scheduler is None:  # its worker processes are spawned (distributed's default), not forked
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster if cluster is not None else scheduler)
    try:
        futures = client.map(worker, items, pure=False)
        index_of = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed(futures):
            index = index_of[future.key]
            try:
                yield Outcome(index, items[index], value=future.result())
            except Exception as exc:  # noqa: BLE001 - includes KilledWorker after native crashes
                yield Outcome(index, items[index], error=_describe(exc))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
