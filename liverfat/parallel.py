"""One way to map a per-subject function: serial, a local process pool, or a Dask cluster.

Every batch command (phantom generation, registration, feature extraction, ingestion) goes through
:func:`map_subjects`. It yields :class:`Outcome` objects as jobs finish, so callers can write each
subject's result atomically the moment it exists (which makes batches resumable), and it turns
every exception, including a worker process killed by a native crash, into an ``error`` string
for that one item while the rest of the batch goes on.
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


def _call(fn: Callable[[Any], Any], item: Any, n_threads: int) -> Any:
    limit_threads(n_threads)
    return fn(item)


def map_subjects(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    executor: Executor = "serial",
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    progress: str | None = None,
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
    """
    items = list(items)
    if executor not in EXECUTORS:
        raise LiverfatError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    n_workers = n_workers or os.cpu_count() or 1
    runner = {"serial": _serial, "processes": _processes, "dask": _dask}[executor]
    bar = tqdm(total=len(items), desc=progress, disable=progress is None, unit="subject")
    try:
        for outcome in runner(fn, items, n_workers, threads_per_worker, scheduler):
            bar.update(1)
            yield outcome
    finally:
        bar.close()


def _serial(fn, items, n_workers, threads_per_worker, scheduler) -> Iterator[Outcome]:
    for index, item in enumerate(items):
        try:
            yield Outcome(index, item, value=fn(item))
        except Exception as exc:  # noqa: BLE001 - one subject's failure must not stop the batch
            yield Outcome(index, item, error=_describe(exc))


def _pool(n_workers: int) -> cf.ProcessPoolExecutor:
    # forkserver: never fork a parent holding torch/ITK threads; cheaper than spawn per task.
    return cf.ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("forkserver"))


def _processes(fn, items, n_workers, threads_per_worker, scheduler) -> Iterator[Outcome]:
    suspects: list[int] = []
    with _pool(min(n_workers, max(len(items), 1))) as pool:
        futures = {
            pool.submit(_call, fn, item, threads_per_worker): i for i, item in enumerate(items)
        }
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
                value = alone.submit(_call, fn, items[index], threads_per_worker).result()
                yield Outcome(index, items[index], value=value)
            except cf.process.BrokenProcessPool:
                yield Outcome(index, items[index], error="worker process crashed (native code)")
            except Exception as exc:  # noqa: BLE001
                yield Outcome(index, items[index], error=_describe(exc))


def _dask(fn, items, n_workers, threads_per_worker, scheduler) -> Iterator[Outcome]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None and _DEFAULT_SCHEDULER:
        scheduler = _DEFAULT_SCHEDULER[-1]
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster if cluster is not None else scheduler)
    try:
        futures = client.map(
            _call, [fn] * len(items), items, [threads_per_worker] * len(items), pure=False
        )
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
