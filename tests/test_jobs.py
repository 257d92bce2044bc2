"""--jobs: strategies and variants trained side by side in worker processes, logging exactly what one
process would; a worker that dies leaves no run RUNNING."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest

from conftest import (TUNED_ROW, invoke, runs_of, settled, start_in_own_group, stderr_after, tiny_args, use_store,
                      wait_until_training)

# scratch: on one split it starts while the baseline trains (head_swap.start_early), nested under convert's run
# until head_swap adopts it; lp_ft: the workers take it first (strategies.STRATEGY longest_first)
ARGS = ("--strategies", "threshold,finetune,warm_start,scratch,lp_ft", "--set", "slim.keep_ratios=0.5",
        "--set", "slim.depth=false", "--set", "tune.n_trials=1")


def _signature(experiment: str) -> dict[tuple[str, str, str], tuple]:
    """(stage, strategy or run name, fold) -> (its parent's name, sorted tag keys, sorted metric keys), for every
    run of the experiment."""
    runs = runs_of(experiment)
    names = {r.info.run_id: r.info.run_name for r in runs}
    return {(r.data.tags["stage"], r.data.tags.get("strategy", r.info.run_name), r.data.tags.get("fold", "")):
            (names.get(r.data.tags.get("mlflow.parentRunId")), tuple(sorted(r.data.tags)),
             tuple(sorted(r.data.metrics))) for r in runs}


# cross-fitted: the folds' baselines and tune stages run side by side too (TUNED_ROW: the best trial beats its
# untuned start, so the folds' runs make a tuned row), each fold's study with one worker
FOLDS = ("--folds", "3", "--strategies", "threshold,finetune", "--set", "slim.keep_ratios=0.5", "--set",
         "slim.depth=false", "--set", "tune.n_trials=3", "--set", "tune.workers=1", *TUNED_ROW)


@pytest.fixture(scope="module", params=["one split", "3 folds"])
def one_and_two(request, store_uri, tmp_path_factory):
    """The same tiny convert with --jobs 1 and --jobs 2, in two experiments of one store: on one split, and
    cross-fitted over 3 folds."""
    args = ARGS if request.param == "one split" else FOLDS
    name = request.param.replace(" ", "-")
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp_path_factory.mktemp("jobs"))
        for jobs in ("1", "2"):
            result = invoke("convert", *tiny_args(f"{name}-jobs-{jobs}", *args, "--jobs", jobs))
            assert result.exit_code == 0, result.output
            OUTPUT[f"{name}-jobs-{jobs}"] = result.output
    return f"{name}-jobs-1", f"{name}-jobs-2"


OUTPUT: dict[str, str] = {}  # what each of one_and_two's converts printed, by experiment


@pytest.mark.slow
def test_the_estimate_is_said_first_whether_timed_here_or_in_a_worker(one_and_two):
    for experiment in one_and_two:
        out = OUTPUT[experiment]
        assert out.index("data:") < out.index("estimate: about") < out.index("baseline"), out


@pytest.mark.slow
def test_two_jobs_log_the_same_runs_tags_and_metric_keys_as_one(one_and_two):
    one, two = one_and_two
    assert settled(runs_of(two))
    assert _signature(two) == _signature(one)


@pytest.mark.slow
@pytest.mark.parametrize("one_and_two", ["one split"], indirect=True)
def test_the_workers_take_the_longest_strategy_first_and_threshold_last(one_and_two):
    """lp_ft (a probe, then a fine-tune) taken last would leave the other worker idle at the stage's end."""
    runs = [r for r in runs_of(one_and_two[1]) if r.data.tags["stage"] == "head_swap"
            and r.data.tags.get("strategy", "scratch") != "scratch"]  # scratch started with the baseline
    order = [r.data.tags["strategy"] for r in sorted(runs, key=lambda r: r.info.start_time)]
    assert "lp_ft" in order[:2] and order[-1] == "threshold", order  # two workers take their first runs together


@pytest.mark.slow
@pytest.mark.parametrize("one_and_two", ["3 folds"], indirect=True)
def test_folds_run_their_baselines_and_tune_stages_in_the_workers(one_and_two):
    runs = runs_of(one_and_two[1])
    [convert] = [r for r in runs if r.data.tags["stage"] == "convert"]
    bases = [r for r in runs if r.data.tags["stage"] == "baseline" and "fold" in r.data.tags]
    tunes = [r for r in runs if r.data.tags["stage"] == "tune" and "fold" in r.data.tags
             and "strategy" not in r.data.tags]  # each fold's tune stage run, not its trials
    assert sorted(r.data.tags["fold"] for r in bases) == sorted(r.data.tags["fold"] for r in tunes) == ["0", "1", "2"]
    # worker processes logged them: each run's owner (liveness tags) is not the command's own process
    assert all(r.data.tags["owner.pid"] != convert.data.tags["owner.pid"] for r in bases + tunes)
    # the tuned row is the folds' tune runs: each fold's own choice
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=convert.info.run_id,
                                                            artifact_path="leaderboard.csv"))
    [tuned] = board[board["strategy"] == "tuned"].itertuples()
    assert sorted(tuned.runs.split(",")) == sorted(r.info.run_id for r in tunes)


@pytest.mark.slow
@pytest.mark.parametrize("one_and_two", ["3 folds"], indirect=True)
def test_folds_queue_their_strategies_and_variants_before_their_stage_runs_open(one_and_two):
    """With workers, every fold's head-swap strategies (and then slim variants) are queued at once, so a later
    fold's runs start while an earlier fold is still being decided; each fold's stage run adopts its own. With
    one process, a fold's runs start inside its own stage run."""
    def early_starts(experiment) -> list[bool]:
        runs = runs_of(experiment)
        out = []
        for stage in ("head_swap", "slim"):
            for fold in ("1", "2"):
                [stage_run] = [r for r in runs if r.data.tags["stage"] == stage and r.data.tags.get("fold") == fold
                               and "strategy" not in r.data.tags]
                children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage_run.info.run_id]
                assert children and all(r.data.tags.get("fold") == fold for r in children)  # adopted by its fold
                out.append(min(r.info.start_time for r in children) < stage_run.info.start_time)
        return out

    one, two = one_and_two
    assert not any(early_starts(one))
    assert all(early_starts(two)[2:])  # slim: every fold's single variant is taken at once by a free worker
    assert any(early_starts(two)[:2])  # head_swap: a worker free after fold 0's threshold takes fold 1's finetune


@pytest.mark.slow
def test_two_jobs_give_the_same_numbers_as_one(one_and_two):
    one, two = one_and_two
    key = "val/f1_macro"

    def values(experiment):
        return {(r.data.tags["stage"], r.data.tags.get("strategy", ""), r.data.tags.get("fold", "")):
                r.data.metrics.get(key) for r in runs_of(experiment) if "strategy" in r.data.tags}

    assert values(two) == pytest.approx(values(one))  # every training is seeded, wherever it runs


def _children(pid: str, pattern: str = ".") -> list[str]:
    return subprocess.run(["pgrep", "-P", pid, "-f", pattern], capture_output=True, text=True).stdout.split()


def _fork_server_of(proc: subprocess.Popen) -> list[str]:
    """The command's fork server (not multiprocessing's resource tracker, its other child)."""
    return _children(str(proc.pid), "multiprocessing.forkserver")


def _workers_of(proc: subprocess.Popen) -> list[str]:
    """The pids of the pool's workers: the children of the command's fork server."""
    return [pid for server in _fork_server_of(proc) for pid in _children(server)]


def _head_swap_caught_training(experiment, store, tmp_path, strategies: str, running: int) -> subprocess.Popen:
    """`head-swap --jobs 2` in its own process group (its workers too), once `running` strategy runs train
    (running=0: once its fork server exists, still importing what the workers need)."""
    assert invoke("baseline", *tiny_args(experiment)).exit_code == 0
    args = tiny_args(experiment, "--jobs", "2", "--strategies", strategies)
    args[args.index("--epochs") + 1] = "100000"  # long enough to be caught training
    proc = start_in_own_group("head-swap", args, store, tmp_path)
    if running:
        wait_until_training(experiment, proc, running)
        return proc
    deadline = time.time() + 120
    while time.time() < deadline and not _fork_server_of(proc):
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_a_worker_that_dies_leaves_no_run_running(experiment, store, tmp_path):
    proc = _head_swap_caught_training(experiment, store, tmp_path, "finetune,scratch,lp_ft,linear_probe", running=1)
    workers = _workers_of(proc)

    def kill_workers():
        assert workers, "no worker process found"
        for pid in workers:  # SIGKILL: the worker cannot end its own run
            subprocess.run(["kill", "-9", pid])

    err = stderr_after(proc, kill_workers)
    assert proc.returncode == 1 and "a worker process died" in err and "Traceback" not in err, err[-2000:]
    runs = runs_of(experiment)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    assert any(r.info.status == "FAILED" and r.data.tags.get("strategy") for r in runs)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_no_trial_running(experiment, store, tmp_path):
    """A worker SIGKILLed while it runs one of convert's tune trials: its trial is failed at once and queued for a
    retry, as a stale one would be, not left RUNNING until a later command finds its heartbeat stale."""
    import optuna
    from optuna.trial import TrialState

    args = tiny_args(experiment, "--jobs", "2", "--strategies", "finetune", "--set", "slim.keep_ratios=none",
                     "--set", "slim.depth=false", "--set", "tune.n_trials=2", "--set", "tune.epochs=100000",
                     "--set", "tune.pruner=none")
    proc = start_in_own_group("convert", args, store, tmp_path)

    def kill_a_worker_mid_trial():
        wait_until_training(experiment, proc, 2, "trial_")
        subprocess.run(["kill", "-9", _workers_of(proc)[0]])

    err = stderr_after(proc, kill_a_worker_mid_trial)
    assert proc.returncode == 1 and "a worker process died" in err, err[-2000:]
    [tune] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "tune" and "strategy" not in r.data.tags]
    study = optuna.load_study(study_name=tune.data.tags["optuna_study"], storage=tune.data.tags["optuna_storage"])
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states, states
    assert states.count(TrialState.FAIL) == 2 and states.count(TrialState.WAITING) == 1, states  # the retry


def test_a_worker_dying_while_it_fetches_a_tensor_prints_no_traceback(capfd):
    """A task's tensors reach its worker as file descriptors, which a thread of the command serves on a socket
    (multiprocessing's resource sharer). A worker that dies while it fetches one breaks that socket, here played
    by a peer that connects and hangs up at once: the pool reports the death in one line, the thread nothing."""
    import multiprocessing.resource_sharer as sharer
    import socket

    from pipeline import jobs

    fd = os.open(os.devnull, os.O_RDONLY)
    served = sharer.DupFd(fd)  # starts the thread, as pickling a tensor for a worker does
    os.close(fd)
    with jobs._quiet_handover():
        with socket.socket(socket.AF_UNIX) as peer:
            peer.connect(sharer._resource_sharer._address)
        # a whole fetch, which the thread serves after the broken one (one connection at a time): once it
        # returns, the thread has met the hang-up (its challenge unanswered: EOFError) and reported it
        os.close(served.detach())
    assert "Traceback" not in capfd.readouterr().err


def test_other_uncaught_exceptions_still_print_while_workers_run(capfd):
    from pipeline import jobs

    with jobs._quiet_handover():
        sys.excepthook(ValueError, ValueError("a bug"), None)
    assert "ValueError: a bug" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to the command", "Ctrl+C to its process group"])
def test_stopping_the_command_ends_the_workers_runs_killed(how, experiment, store, tmp_path):
    """Stopping the command while its workers train: every run, the workers' included, ends KILLED. A
    terminal's Ctrl+C reaches every process of the group, the workers too."""
    proc = _head_swap_caught_training(experiment, store, tmp_path, "finetune,scratch", running=2)
    err = stderr_after(proc, (lambda: proc.send_signal(signal.SIGTERM)) if how.startswith("SIGTERM")
                        else lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == (143 if how.startswith("SIGTERM") else 130), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    statuses = {r.data.tags.get("strategy", r.data.tags["stage"]): r.info.status for r in runs_of(experiment)}
    assert statuses == {"baseline": "FINISHED", "head_swap": "KILLED", "finetune": "KILLED", "scratch": "KILLED"}


@pytest.mark.slow
def test_stopping_convert_while_scratch_trains_beside_the_baseline_ends_every_run_killed(experiment, store,
                                                                                       tmp_path):
    """On one split, scratch starts in a worker while the baseline trains here (head_swap.start_early), nested
    under convert's run until head_swap adopts it: a Ctrl+C then ends it KILLED with the rest."""
    args = tiny_args(experiment, "--jobs", "2", "--strategies", "threshold,scratch")
    args[args.index("--epochs") + 1] = "100000"  # long enough to be caught training
    proc = start_in_own_group("convert", args, store, tmp_path)
    wait_until_training(experiment, proc, 1, strategy="scratch")
    err = stderr_after(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    runs = {r.data.tags.get("strategy", r.data.tags["stage"]): r for r in runs_of(experiment)}
    assert {name: r.info.status for name, r in runs.items()} == {"convert": "KILLED", "baseline": "KILLED",
                                                                  "scratch": "KILLED"}
    assert runs["scratch"].data.tags["mlflow.parentRunId"] == runs["convert"].info.run_id


@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_prints_no_traceback(experiment, store, tmp_path):
    """Ctrl+C in the seconds the fork server spends importing for the workers: it does not die of it with a
    traceback, nor does any worker."""
    proc = _head_swap_caught_training(experiment, store, tmp_path, "finetune,scratch", running=0)
    err = stderr_after(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    statuses = {r.data.tags.get("strategy", r.data.tags["stage"]): r.info.status for r in runs_of(experiment)}
    assert statuses.pop("baseline") == "FINISHED" and set(statuses.values()) <= {"KILLED"}, statuses


@pytest.mark.slow
def test_workers_start_with_their_tasks_imports_done(experiment, store):
    """Forked from the fork server, a worker already holds the stages (named by the command: jobs imports nothing
    above it) and what a first task would import on the way (torch._dynamo to make an optimizer): seconds no task
    waits for."""
    import multiprocessing.forkserver

    import mlflow

    from pipeline import cli, jobs

    mlflow.set_experiment(experiment)
    multiprocessing.forkserver._forkserver._stop()  # a server started by an earlier test preloaded other modules
    wanted = [*jobs.PRELOAD, *cli.WORKER_IMPORTS]
    code = f"sorted(set({wanted!r}) - set(__import__('sys').modules))"
    with jobs.workers(2, cli.WORKER_IMPORTS):
        assert jobs.run(eval, [(code,), (code,)]) == [[], []]  # eval: a task function every worker can unpickle


@pytest.mark.slow
def test_workers_hold_no_figures_library_no_mlflow_model_flavor_and_no_scikit_learn(experiment, store):
    """A worker's memory holds what a training needs: no matplotlib (figures are drawn by the command), no
    mlflow.pytorch (runs keep their state, not an MLflow model), no scikit-learn (runs are scored without it;
    the worker that fits the reference imports it for that)."""
    import multiprocessing.forkserver

    import mlflow

    from pipeline import cli, jobs

    mlflow.set_experiment(experiment)
    multiprocessing.forkserver._forkserver._stop()  # a server started by an earlier test preloaded other modules
    code = "sorted({'matplotlib', 'mlflow.pytorch', 'sklearn'} & set(__import__('sys').modules))"
    with jobs.workers(2, cli.WORKER_IMPORTS):
        assert jobs.run(eval, [(code,), (code,)]) == [[], []]


@pytest.mark.slow
def test_workers_see_the_commands_directory_and_environment_not_the_fork_servers(experiment, store, tmp_path,
                                                                                  monkeypatch):
    """The fork server keeps the directory and environment it started with; each worker takes the command's, as
    they are when the pool opens."""
    import multiprocessing.forkserver

    import mlflow

    from pipeline import jobs

    mlflow.set_experiment(experiment)
    multiprocessing.forkserver._forkserver._stop()  # CPython's own tests' way: the next start is a fresh server
    monkeypatch.setenv("REG2CLS_GONE", "set when the fork server started")
    jobs.start_forkserver(2)
    monkeypatch.delenv("REG2CLS_GONE")
    monkeypatch.setenv("REG2CLS_NEW", "set after")
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "later")
    with jobs.workers(2):
        assert jobs.run(os.getenv, [("REG2CLS_GONE",), ("REG2CLS_NEW",)]) == [None, "set after"]
        assert jobs.run(os.getcwd, [(), ()]) == [str(tmp_path / "later")] * 2


@pytest.mark.slow
def test_the_workers_take_the_costliest_tasks_first_and_results_keep_the_tasks_order(experiment, store):
    """tune's fold studies go costliest first (jobs.run's `costs`: its source's training seconds): one taken last
    would leave the other worker idle at the stage's end."""
    from pipeline import jobs

    # when the task started, then 0.3 s of work: a builtin every worker unpickles without importing this module
    started_at = ("__import__('time').time() + (__import__('time').sleep(0.3) or 0)",)
    with jobs.workers(2):
        started = jobs.run(eval, [started_at] * 3, costs=[0.1, 5.0, 2.0])
    assert started.index(max(started)) == 0  # the cheapest waited for a free worker
    here = jobs.run(eval, [started_at] * 2, costs=[1.0, 2.0])
    assert here[0] < here[1]  # without workers, in the order given


@pytest.mark.slow
def test_closing_the_pool_ends_its_workers_and_fork_server_and_later_tasks_run_here(experiment, store):
    """compare closes the pool once its last worker task is done (jobs.close): the memory of the workers and the
    fork server goes back before the champion's check, and anything submitted afterwards runs in this process."""
    import multiprocessing.forkserver

    import mlflow

    from pipeline import jobs

    mlflow.set_experiment(experiment)
    with jobs.workers(2):
        pids = set(jobs.run(os.getpid, [(), ()]))
        server = multiprocessing.forkserver._forkserver._forkserver_pid
        jobs.close()
        assert jobs.pool_size() == 0 and jobs.run(os.getpid, [()]) == [os.getpid()]
        assert not any(os.path.exists(f"/proc/{pid}") for pid in pids | {server})


@pytest.mark.slow
def test_workers_keep_the_fork_servers_objects_out_of_the_collectors_reach(experiment, store):
    """A collector pass writes to every object it visits: the objects a worker shares with the fork server are
    frozen first thing (gc.freeze), so their pages stay shared instead of being copied into every worker."""
    import mlflow

    from pipeline import jobs

    mlflow.set_experiment(experiment)
    with jobs.workers(2):
        frozen = jobs.run(eval, [("__import__('gc').get_freeze_count()",)] * 2)
    assert min(frozen) > 10_000  # torch and MLflow alone are hundreds of thousands of objects


@pytest.mark.slow
def test_the_fork_server_imports_uncollected_and_its_workers_collect(experiment, store):
    """Collections during the fork server's imports would walk ever more of torch's and MLflow's objects (over a
    second the first task waits for): it imports with the collector off (gc_off, first in jobs.PRELOAD), and each
    worker turns it back on for what it makes itself. A worker's collection counts start as the server's."""
    import multiprocessing.forkserver

    import mlflow

    from pipeline import cli, jobs

    mlflow.set_experiment(experiment)
    multiprocessing.forkserver._forkserver._stop()  # a fresh server: it imports now, as a command's would
    code = "(__import__('gc').isenabled(), __import__('gc').get_stats()[2]['collections'])"
    with jobs.workers(2, cli.WORKER_IMPORTS):
        states = jobs.run(eval, [(code,), (code,)])
    assert all(enabled for enabled, _ in states)
    assert max(full for _, full in states) <= 1  # with the collector on, the imports alone make several


@pytest.mark.slow
def test_a_workers_reference_fit_runs_on_one_thread(experiment, store):
    """The worker that fits the gradient-boosting reference imports scikit-learn itself, after its one-thread limit
    was set: the OpenMP and BLAS pools that import brings are held to one thread too, not one per core."""
    import mlflow

    from pipeline import cli, jobs

    mlflow.set_experiment(experiment)
    code = ("(__import__('pipeline.stages.reference', fromlist=['_'])._import_estimators(), "
            "sorted({i['num_threads'] for i in __import__('threadpoolctl').threadpool_info()}))[1]")
    with jobs.workers(2, cli.WORKER_IMPORTS):
        assert jobs.run(eval, [(code,)]) == [[1]]


@pytest.mark.slow
def test_the_fork_server_is_gone_when_the_command_exits(experiment, store, tmp_path):
    """Left to notice the command's exit itself, the fork server would tear down torch and MLflow for over a
    second, holding the command's stdout and stderr open: whoever reads them would wait for it."""
    proc = _head_swap_caught_training(experiment, store, tmp_path, "threshold", running=0)
    [server] = _fork_server_of(proc)
    try:
        assert proc.wait(timeout=120) == 0
        assert not os.path.exists(f"/proc/{server}")
    finally:
        proc.communicate()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from Linux's /proc")
def test_release_freed_memory_hands_freed_heap_pages_back():
    """glibc keeps freed MB-sized blocks in the heap (below a block still in use); every run's end releases them."""
    import numpy as np

    from pipeline import memory

    def resident_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    freed = np.ones(2**18)
    del freed  # a freed 2 MB block: glibc raises its mmap threshold above it, so 1 MB blocks now come from the heap
    blocks = [np.ones(2**17) for _ in range(400)]
    del blocks[:-1]  # 399 MB freed below the last block, which stays in use
    before = resident_mib()
    memory.release_freed_memory()
    assert resident_mib() < before - 300
