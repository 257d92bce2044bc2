"""Independent trainings side by side: worker processes, one torch thread each.

`workers(n)` opens a pool of `n` spawned processes (fresh interpreters: no forked torch, SQLite or MLflow
state) for the duration of a command; stages hand it their independent trainings (head-swap strategies
and seeds, slim variants, each fold's baseline and tuned refit) through `run(fn, tasks)`, and work that may
overlap a stage (the gradient-boosting reference, fitted while the baseline trains) through `submit`. A
task runs in a worker exactly as it would here: its MLflow runs nest under the parent run id the task
names, in the same store and experiment, so the store holds the same runs, tags and metrics whatever
`--jobs` is (only their order may differ). With one job, or outside `workers`, `run` calls every task here,
in order, and `submit` calls it at once. Data travel with the task: its tensors in shared memory (torch's
reduction for multiprocessing), the rest pickled, so workers neither read the data file nor copy the data.
"""
from __future__ import annotations

import contextlib
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

_POOL: ProcessPoolExecutor | None = None
_MALLOC_TRIM = None  # glibc's malloc_trim, once looked up (False where there is none)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), the default for --jobs."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def count(jobs: int) -> int:
    """`train.jobs` as a number of processes: 0 means every usable core."""
    return jobs or usable_cores()


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a terminated worker unwinds: its open runs end KILLED


def _start_worker(tracking_uri: str, experiment_id: str) -> None:
    import mlflow

    from .train import use_threads

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the command, which terminates the workers
    use_threads(1)  # the cores are shared out between processes, not threads (see train.use_threads)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)


@contextlib.contextmanager
def workers(n: int) -> Iterator[None]:
    """Run the block with `n` worker processes available to `run` (none when n is 1)."""
    global _POOL
    if n <= 1:
        yield
        return
    import multiprocessing

    from . import tracking

    tracking.enable_concurrent_writes()  # SQLite in WAL mode: the workers' writes do not lock each other out
    _POOL = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                initargs=(tracking.setup(None), tracking.current_experiment_id()))
    try:
        yield
    except BaseException:
        _terminate(_POOL)
        raise
    finally:
        _POOL.shutdown(wait=True, cancel_futures=True)
        _POOL = None


def _terminate(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker: each ends its open runs KILLED (see _interrupt) before it exits."""
    for process in list((pool._processes or {}).values()):  # the executor keeps no public handle on them
        with contextlib.suppress(Exception):
            process.terminate()


def release_freed_memory() -> None:
    """Hand the heap pages freed by the run that just ended back to the kernel (glibc's malloc_trim). glibc
    keeps freed blocks of a few MB inside the process once it has raised its mmap threshold, so each
    process (the command, every worker) otherwise stays about 130 MB larger at 100,000 rows than at 10,000
    after its first runs, although no data is held (bench/bench_scale.py). Takes milliseconds; does
    nothing where malloc_trim does not exist."""
    import ctypes
    import ctypes.util

    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def submit(fn: Callable, *args) -> Future:
    """fn(*args) started now: in the pool when there is one (collect it with `result` later, while this
    process goes on), else here, at once."""
    if _POOL is not None:
        return _POOL.submit(fn, *args)
    done: Future = Future()
    done.set_result(fn(*args))
    return done


def result(future: Future):
    """A submitted task's result (its exception raised here). A worker that dies (killed, out of memory) ends
    its open runs FAILED and raises one clear UserError."""
    try:
        return future.result()
    except BrokenProcessPool:
        from . import tracking

        from .config import UserError

        # the futures fail before the pool has stopped its other workers (each ends its runs KILLED on the way
        # out): wait until they are gone, so that every run still RUNNING has a dead owner and is ended here
        _POOL.shutdown(wait=True, cancel_futures=True)
        ended = tracking.end_orphans(status="FAILED")
        raise UserError(f"a worker process died (killed, or out of memory); {ended} of its run(s) ended FAILED; "
                        "run again, or with --jobs 1 to see the failure in this process") from None


def run(fn: Callable, tasks: list[tuple]) -> list:
    """fn(*task) for every task, in the pool when there is one, else here; results in the order of `tasks`."""
    return [result(future) for future in [submit(fn, *task) for task in tasks]]
