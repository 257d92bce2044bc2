"""Shared fixtures: a real MLflow SQLite store in a temp dir (MLFLOW_TRACKING_URI points at it), tiny data."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

from pipeline import config, data

# about 0.3 s of training per strategy: enough for losses to fall, small enough for a fast suite
# one split (--folds 1): auto would cross-fit 240 rows, tests/test_verdict.py covers the folds; one process
# (train.jobs 1): starting workers costs seconds a command, tests/test_jobs.py covers them
TINY = {"data.source": "synthetic:friedman1?rows=240&noise=0.5", "train.epochs": 12, "train.patience": 0,
        "model.width": 16, "train.batch_size": 32, "train.device": "cpu", "tune.n_trials": 3, "tune.epochs": 6,
        "data.folds": "1", "train.jobs": 1}


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory) -> str:
    """The session's SQLite store, made now: a test that polls it (runs_of) while its first command is still
    making it would have MLflow create tables that the command's copy of the empty store already holds."""
    from pipeline import backend

    root = tmp_path_factory.mktemp("mlflow")
    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        # MLflow fixes a store's default artifact root (./mlruns) in the folder where this process first opens the
        # store: here, so that experiments the tests make with mlflow.set_experiment keep theirs out of the repository
        mp.chdir(root)
        backend.setup(f"sqlite:///{root}/mlflow.db")
    mlflow.set_tracking_uri(before)  # each test points at it itself (use_store)
    return f"sqlite:///{root}/mlflow.db"


def use_store(mp: pytest.MonkeyPatch, store_uri: str, folder) -> None:
    """Point this process at `store_uri` (MLFLOW_TRACKING_URI and MLflow's own setting), with no run or
    experiment another test left in the environment, working in `folder`: for fixtures of any scope."""
    mp.setenv("MLFLOW_TRACKING_URI", store_uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        mp.delenv(var, raising=False)
    mp.chdir(folder)
    mlflow.set_tracking_uri(store_uri)


@pytest.fixture
def store(store_uri, tmp_path, monkeypatch) -> str:
    """The session's store, a fresh experiment name per test, artifacts under this test's tmp dir."""
    use_store(monkeypatch, store_uri, tmp_path)
    while mlflow.active_run():  # a failed test must not leave its run active for the next one
        mlflow.end_run("FAILED")
    return store_uri


@pytest.fixture
def experiment(store) -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


REPO = Path(__file__).resolve().parents[1]


def process_env(tracking_uri: str) -> dict[str, str]:
    """The environment of a real reg2cls or mlflow process started by a test: this one's without MLFLOW_*
    (a run id or experiment a test set must not leak in), the given store, and the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO)}


def exported_predictions(run_id: str):
    """What serving a run answers: `reg2cls export`'s model of it, loaded as a pyfunc, on one row of raw input made
    from the run's preprocessor (registry.example_input)."""
    import json

    from pipeline import registry, tracking

    meta = json.loads(tracking.read_artifact(run_id, "state/meta.json"))
    return mlflow.pyfunc.load_model(registry.export(run_id)).predict(registry.example_input(meta["preprocessor"]))


def tiny_config(**overrides) -> config.Config:
    return config.load(None, {**TINY, **overrides})


@pytest.fixture(scope="session")
def tiny_data() -> data.Prepared:
    cfg = tiny_config()
    return data.prepare(cfg.data, cfg.seed)


def settled(runs) -> bool:
    """Every run ended: FINISHED, or KILLED for a pruned tuning trial."""
    return all(r.info.status == "FINISHED"
               or (r.info.status == "KILLED" and r.data.tags.get("strategy", "").startswith("trial_"))
               for r in runs)


def runs_of(experiment: str) -> list:
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list", max_results=1000) if exp else []


def wait_until_training(experiment: str, proc: subprocess.Popen, n: int, strategy: str = "") -> None:
    """Wait until `n` runs of the experiment whose strategy starts with `strategy` (any, by default) are RUNNING:
    `proc` caught mid-training. Gives up after 120 s, or once `proc` has ended."""
    import time

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and sum(
            r.info.status == "RUNNING" and "strategy" in r.data.tags and r.data.tags["strategy"].startswith(strategy)
            for r in runs_of(experiment)) < n:
        time.sleep(0.5)


# a tiny convert whose tune stage finds a better configuration, so its leaderboard has a tuned row: every model is
# barely trained (2 epochs, slim's 1), slim recommends its smallest variant, and trials get 30 epochs. tune keeps
# no tuned row whose validation gain over its untuned start lies within the noise of ~40 validation rows (a
# standard error of ~0.05), so the untuned start must be far from what the data allows
TUNED_ROW = ("--epochs", "2", "--set", "slim.epochs=1", "--set", "slim.tolerance=0.99", "--set", "tune.epochs=30")


def tiny_args(experiment: str, *extra: str) -> list[str]:
    """CLI arguments for a tiny run of any stage command."""
    return ["--data", TINY["data.source"], "--epochs", str(TINY["train.epochs"]), "--device", "cpu", "--folds", "1",
            "--set", "model.width=16", "--set", "train.patience=0", "--set", "train.batch_size=32",
            "--set", "tune.n_trials=3", "--set", "tune.epochs=6", "--set", "train.jobs=1",
            # the champion's load in a clean process costs seconds a convert; tests/test_user_model.py runs it
            "--set", "compare.check_load=false", "--experiment", experiment, *extra]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts); yields its URL."""
    import subprocess

    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", proc, root / "server.log")
    yield url
    proc.terminate()
    proc.wait(20)
    log.close()


@pytest.fixture(scope="session")
def converted_on_server(mlflow_server, tmp_path_factory) -> str:
    """The experiment of a tiny convert (strategies threshold and finetune) that a real `reg2cls` process logged
    to the tracking server: one for the REST API and browser tests, which only read it."""
    experiment = f"server-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", *tiny_args(
        experiment, "--strategies", "threshold,finetune", "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false",
        "--set", "tune.n_trials=1")], env=process_env(mlflow_server), cwd=tmp_path_factory.mktemp("server-convert"),
        capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return experiment


def invoke(*args: str):
    """The CLI in-process; an unexpected exception (not a clean exit) fails the test with its traceback."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def wait_for_http(url: str, proc, log_path) -> None:
    """Poll `url` until it answers; fail with the server's log if its process dies or 120 s pass."""
    import time
    import urllib.request

    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"{url} did not answer: {open(log_path).read()[-3000:]}")
            time.sleep(0.5)


def start_in_own_group(command: str, args: list[str], tracking_uri: str, cwd) -> subprocess.Popen:
    """A real reg2cls `command` in its own process group, as a terminal gives it (a Ctrl+C to the group reaches
    its workers too), stdout and stderr piped; end it with `stderr_after`."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", command, *args], env=process_env(tracking_uri),
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stderr_after(proc: subprocess.Popen, stop) -> str:
    """A command started in its own process group: its stderr once it has exited after `stop()`; its whole group
    killed if it has not in 120 s."""
    try:
        stop()
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
