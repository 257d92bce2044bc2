"""Independent trainings side by side: worker processes, one torch thread each.

`workers(n)` opens a pool of `n` processes for the duration of a command; stages hand it their independent
trainings (head-swap strategies and seeds, slim variants, each fold's baseline and tuned refit) through
`run(fn, tasks)`, and work that may overlap a stage (the gradient-boosting reference, fitted while the
baseline trains) through `submit`. A task runs in a worker exactly as it would here: its MLflow runs nest
under the parent run id the task names, in the same store and experiment, so the store holds the same runs,
tags and metrics whatever `--jobs` is (only their order may differ). With one job, or outside `workers`,
`run` calls every task here, in order, and `submit` calls it at once. Data travel with the task: its tensors
in shared memory (torch's reduction for multiprocessing), the rest pickled, so workers neither read the data
file nor copy the data.

Each tensor's shared memory is handed over as a file descriptor, which a thread of the command serves on a
socket (multiprocessing's resource sharer); a worker that dies in the middle of that hand-over breaks the
socket, which the thread reports with a traceback of its own: `_quiet_handover` drops it, as the pool
already reports the death in one line (`result`).

Workers are forked from a fork server: a fresh interpreter that has only imported what they need (`PRELOAD`),
so none inherits torch, SQLite or MLflow state, and those imports (seconds of CPU) are paid once, not once a
worker. The command starts the server first thing (`start_forkserver`), so that it imports while the command
imports and reads its data; each worker then takes the command's directory and environment (`_start_worker`).
The command ends the server at its own exit (`_end_forkserver`). A command killed outright (SIGKILL) ends
nothing itself: each worker watches it and, once it is gone, stops and ends the fork server (`watch_owner`).
Where there is no fork server (Windows) each worker is spawned and imports for itself.

Stopping: a terminal's Ctrl+C goes to the whole process group, workers included. Workers never act on it
(the fork server starts with SIGINT blocked, see `spawning`, and ignores it; so do the workers it forks):
the command receives it and stops them (`_terminate`, SIGTERM). Inside a task a SIGTERM stops the training
at its next epoch (`interrupt`, stop.py), so the task's open runs end KILLED; an idle worker simply
exits. No worker prints a traceback.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

from . import stop

_POOL: ProcessPoolExecutor | None = None
_SIZE = 0     # its number of workers
_LOCK = None  # a lock shared by the pool's workers (the tune workers' count gate, study.work); theirs only


def usable_cores() -> int:
    """The cores this process may run on (its affinity), the default for --jobs."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def count(jobs: int) -> int:
    """`train.jobs` as a number of processes: 0 means every usable core."""
    return jobs or usable_cores()


def interrupt(signum, frame):
    """SIGTERM's handler in a worker: a stop request and nothing more (see stop.py): the training loop raises
    KeyboardInterrupt at its next epoch, so the task's open runs end KILLED; a task past its training
    finishes first."""
    stop.request(KeyboardInterrupt)


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Start child processes inside this block: they begin life with SIGINT blocked, so a Ctrl+C that
    reaches them while they still import (seconds) cannot kill them with a traceback; `become_worker`
    then ignores it for good. A Ctrl+C meant for this process waits until the block ends; it is not lost."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to share a Ctrl+C with
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def become_worker() -> None:
    """First thing in a process started under `spawning`: ignore Ctrl+C (the command stops its workers), and
    nest runs under the command's open runs without reading them back (tracking.parents_held)."""
    from . import tracking

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one is dropped: ignored
    tracking.parents_held()


# what a worker imports whatever it runs: what its first task would otherwise import on the way (torch._dynamo, to
# make an optimizer: over a second). The modules of the task functions themselves are named by the command
# (`start_forkserver`'s `preload`): this module knows nothing of what runs above it. Imported in the fork server,
# these pages are shared by every worker; what a worker does not need (matplotlib, MLflow's model flavors) is
# imported neither here nor by the stages' modules.
PRELOAD = [f"{__package__}.gc_off", "torch._dynamo"]  # gc_off first: the imports after it run uncollected


def start_forkserver(n: int, preload: tuple[str, ...] = ()):
    """The multiprocessing context `workers(n)` starts its processes in. For n > 1, the fork server is started
    now, if it is not running yet; it imports `PRELOAD` and `preload` (the modules of the functions the command
    will run in its workers, by name) in the background while this process goes on, then forks each worker in
    milliseconds. Where there is none (Windows), the spawn context, whose workers import as they unpickle."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver, resource_tracker

    context = multiprocessing.get_context("forkserver")
    if n > 1:
        context.set_forkserver_preload([*PRELOAD, *preload])
        resource_tracker.ensure_running()  # not inside `spawning`: its first start unblocks SIGINT on the way out
        with spawning():  # the server, and so every worker it forks, starts with SIGINT blocked
            forkserver.ensure_running()
        atexit.unregister(_end_forkserver)  # once, however often this is called
        atexit.register(_end_forkserver)
    return context


def _end_forkserver() -> None:
    """At the command's exit: end the fork server at once. Left to notice the exit itself, it would tear down
    an interpreter that imported torch and MLflow, holding the command's stdout and stderr open
    all along, so that whoever reads them (a pipe, CI, `mlflow run`) would wait for it. It holds no run and
    no file; its workers have exited."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # multiprocessing keeps no public handle on it
    with contextlib.suppress(OSError):
        if server._forkserver_pid is not None:
            os.kill(server._forkserver_pid, signal.SIGTERM)  # it handles only SIGCHLD and SIGINT
            server._stop()  # reaps it and forgets it: a later start in this process is a fresh server


def _start_worker(tracking_uri: str, experiment_id: str, lock, cwd: str, environ: dict[str, str],
                  owner: tuple[int, str]) -> None:
    """A pool worker's set-up: Ctrl+C ignored, one thread, the command's directory, environment, store and
    experiment, and a watch on the command (`owner`: its pid and start time) that ends this worker if the
    command dies (`watch_owner`)."""
    import gc

    # the objects the fork server imported are shared with it page by page until written: out of the collector's
    # reach, its passes no longer write to each of them and copy their pages into this worker (gc.freeze's docs);
    # the collector, off in the server while it imported (gc_off), then watches what this worker makes
    gc.freeze()
    gc.enable()
    import mlflow

    from .train import use_threads

    global _LOCK
    become_worker()
    watch_owner(*owner)
    os.chdir(cwd)  # the fork server's are those of the moment it started
    os.environ.clear()
    os.environ.update(environ)
    _LOCK = lock
    use_threads(1)  # the cores are shared out between processes, not threads (see train.use_threads)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    # atexit runs the last registered first: handlers that tasks register later still run before this one
    atexit.register(_exit_at_once)


def watch_owner(pid: int, start: str = "") -> None:
    """In a worker process: end it once the command `pid` (started at `start`) is gone (`_watch_owner`)."""
    import threading

    threading.Thread(target=_watch_owner, args=(pid, start), name="reg2cls-owner-watch", daemon=True).start()


def _watch_owner(pid: int, start: str, every_s: float = 1.0, grace_s: float = 30.0) -> None:
    """A worker's watch on the command that owns it. A command killed outright (SIGKILL, the OOM killer, a CI
    timeout) runs no handler and never stops its workers, which would sleep on for hours holding their memory;
    so once the command is gone the worker stops itself as the command would (SIGTERM: a task's open runs end
    KILLED, an idle worker exits), ends the fork server it was forked from on the way, and exits outright if
    its task has not stopped within `grace_s`."""
    import time

    from .liveness import alive

    while alive(pid, start):
        time.sleep(every_s)
    parent = os.getppid()
    if parent not in (1, pid):  # the fork server (none on Windows: there a worker's parent is the command)
        with contextlib.suppress(OSError):
            os.kill(parent, signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    _exit_at_once(137)


def _exit_at_once(code: int = 0) -> None:
    """A worker's exit, once the pool has shut it down or the command stopped it: every run it held has
    ended, so it skips the interpreter's teardown of torch, MLflow and scikit-learn (over a second, which
    the command would wait for)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _in_worker(fn: Callable, args: tuple):
    """fn(*args) in a pool worker, with SIGTERM as a stop request for its duration only (`interrupt`):
    outside a task (idle, or unpickling the next one) SIGTERM just ends the worker, which holds no run then."""
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return fn(*args)
    except KeyboardInterrupt:  # stopped by the command (_terminate), its runs ended: exit, do not wait idle
        _exit_at_once(143)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if stop.requested():  # a stop that came after the task's training: the task finished; exit all the same
            _exit_at_once(143)


def pool_size() -> int:
    """How many workers the command's pool has (0: none, trainings run here)."""
    return _SIZE


def pool_lock():
    """In a pool worker: the lock its fellow workers share (None elsewhere)."""
    return _LOCK


@contextlib.contextmanager
def workers(n: int, preload: tuple[str, ...] = ()) -> Iterator[None]:
    """Run the block with `n` worker processes available to `run` (none when n is 1); `preload`: the modules of
    the functions they will run (`start_forkserver`)."""
    global _POOL, _SIZE
    if n <= 1:
        yield
        return
    from . import backend, tracking

    backend.enable_concurrent_writes()  # SQLite in WAL mode: the workers' writes do not lock each other out
    context = start_forkserver(n, preload)
    # under `mlflow run`, MLFLOW_RUN_ID names the run MLflow made for the entry point, which this process adopts
    # when its stage opens (tracking.start), after the pool: a worker that inherited it would adopt that run for
    # its first task instead, renaming the command's run after a strategy
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    # the lock travels in the initializer's arguments: a multiprocessing lock passes only at a process's start
    from .liveness import process_start

    _POOL = ProcessPoolExecutor(n, mp_context=context, initializer=_start_worker,
                                initargs=(backend.setup(None), tracking.current_experiment_id(), context.Lock(),
                                          os.getcwd(), environ, (os.getpid(), process_start(os.getpid()))))
    _SIZE = n
    with _quiet_handover():
        try:
            for _ in range(n):  # the pool starts a worker per task submitted: start all now, each setting itself
                submit(int)     # up (`_start_worker`) while the first stage trains, not when a stage's task waits
            yield
        except BaseException:
            if _POOL is not None:  # not closed early (`close`)
                _terminate(_POOL)
            raise
        finally:
            close()


def close() -> None:
    """End the pool's workers and its fork server now, once no more tasks will come: their memory (each holds
    torch) goes back before the command's last steps, such as the champion's check in a fresh process
    (registry.checking_loads). Later tasks run in this process. Nothing to do without a pool."""
    global _POOL, _SIZE
    if _POOL is None:
        return
    _POOL.shutdown(wait=True, cancel_futures=True)
    _POOL, _SIZE = None, 0
    _end_forkserver()


@contextlib.contextmanager
def _quiet_handover() -> Iterator[None]:
    """Drop the traceback that multiprocessing's resource-sharer thread prints (it calls sys.excepthook itself)
    when a worker that was fetching a tensor's file descriptor dies mid-way: the broken socket is that death,
    which the pool reports as one line. Every other exception still reaches the previous hook."""
    previous = sys.excepthook
    sharer = os.path.join("multiprocessing", "resource_sharer.py")

    def hook(kind, value, tb):
        if not (issubclass(kind, (ConnectionError, EOFError)) and tb is not None
                and tb.tb_frame.f_code.co_filename.endswith(sharer)):
            previous(kind, value, tb)

    sys.excepthook = hook
    try:
        yield
    finally:
        sys.excepthook = previous


def _terminate(pool: ProcessPoolExecutor, grace_s: float = 30) -> None:
    """SIGTERM every worker: each ends its open runs KILLED (see `interrupt`) and exits. One still alive after
    `grace_s` (stuck in a call that does not return to Python) is SIGKILLed, and its runs ended KILLED here,
    so that stopping never hangs."""
    import time

    processes = list((pool._processes or {}).values())  # the executor keeps no public handle on them
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in processes if p.is_alive()]
    for process in stuck:
        process.kill()
        process.join()
    if stuck:
        from . import tracking

        tracking.end_orphans(status="KILLED")


def submit(fn: Callable, *args) -> Future:
    """fn(*args) started now: in the pool when there is one (collect it with `result` later, while this
    process goes on), else here, at once."""
    if _POOL is not None:
        with spawning():  # the pool starts its workers on demand, inside submit
            return _POOL.submit(_in_worker, fn, args)
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


def run(fn: Callable, tasks: list[tuple], costs: list[float] | None = None) -> list:
    """fn(*task) for every task, in the pool when there is one, else here; results in the order of `tasks`.
    `costs`: each task's expected cost; in the pool the costliest are submitted first (a long task taken last
    leaves the other workers idle), here they run in the order given."""
    order = list(range(len(tasks)))
    if _POOL is not None and costs is not None:
        order.sort(key=lambda i: -costs[i])
    futures = dict(zip(order, [submit(fn, *tasks[i]) for i in order]))
    return [result(futures[i]) for i in range(len(tasks))]
