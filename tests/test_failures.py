"""Nothing lost, nothing silent: runs of killed processes are ended, two commands share a store,
bad input is one line, and the quiet ways to a wrong result are closed. Kill and concurrency cases use
real processes against a real SQLite store."""
from __future__ import annotations

import io
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY, invoke, process_env, runs_of, settled, tiny_args, tiny_config, use_store
from mlflow.tracking import MlflowClient

from pipeline import backend, checkpoint, data, liveness, serving, tracking
from pipeline.config import Data, UserError
from pipeline.train import fit

# the smallest convert that still runs every stage: ~8 s as a process on 2 cores
FAST = ("--strategies", "threshold,warm_start", "--set", "data.folds=1", "--set", "slim.keep_ratios=0.5",
        "--set", "slim.depth=false", "--set", "slim.epochs=5", "--set", "compare.reference=false",
        "--set", "tune.n_trials=2")


def fast_args(experiment: str, *extra: str) -> list[str]:
    return tiny_args(experiment, *FAST, *extra)


def lines_of(output: str) -> list[str]:
    """The output without the data summary (a wrapped line's continuation starts with spaces), the orphan sweep's
    line and MLflow's INFO log lines."""
    return [ln for ln in output.strip().splitlines()
            if not ln.startswith(("data: ", "store: ended", "    ")) and " INFO mlflow" not in ln]


def statuses(experiment: str) -> list[str]:
    return [r.info.status for r in runs_of(experiment)]


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def start_convert(uri: str, args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "convert", *args], env=process_env(uri), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------------------ owners and heartbeats
@pytest.fixture
def other_process():
    """A live process that is not this one (its tags as a run owner), killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free
    return proc.pid


ME = liveness.owner_tags()
NOW = time.time()


@pytest.mark.parametrize("case", ["mine", "live-other-process", "dead-pid", "pid-reused", "no-owner-tags",
                                  "other-host-fresh-heartbeat", "other-host-stale-heartbeat"])
def test_orphan_reason_judges_only_provably_gone_owners(case, other_process):
    tags = dict({
        "mine": ME,
        "live-other-process": {**ME, "owner.pid": str(other_process.pid),
                               "owner.start": liveness.process_start(other_process.pid)},
        "dead-pid": {**ME, "owner.pid": str(_dead_pid())},
        "pid-reused": {**ME, "owner.pid": str(other_process.pid), "owner.start": "12345"},
        "no-owner-tags": {liveness.HEARTBEAT_TAG: "0"},
        "other-host-fresh-heartbeat": {**ME, "owner.host": "elsewhere", liveness.HEARTBEAT_TAG: str(int(NOW - 60))},
        "other-host-stale-heartbeat": {**ME, "owner.host": "elsewhere", liveness.HEARTBEAT_TAG: str(int(NOW - 3600))},
    }[case])
    tags[liveness.HEARTBEAT_TAG] = tags.get(liveness.HEARTBEAT_TAG, str(int(NOW - 3600)))  # local: beat is ignored
    gone = case in ("dead-pid", "pid-reused", "other-host-stale-heartbeat")
    reason = liveness.orphan_reason(tags, now=NOW, limit=600)
    assert (reason is not None) == gone, reason


def test_open_runs_carry_their_owner_and_a_fresh_heartbeat(experiment, monkeypatch):
    monkeypatch.setenv("REG2CLS_HEARTBEAT_S", "0.2")
    backend.use_experiment(experiment)
    with tracking.start("probe", "baseline") as run_id:
        first = tracking.get_run(run_id).data.tags
        time.sleep(1.5)
        later = tracking.get_run(run_id).data.tags
        assert tracking.end_orphans() == 0  # never this process's own runs
    assert {k: first[k] for k in liveness.OWNER_TAGS} == ME
    assert int(later[liveness.HEARTBEAT_TAG]) > int(first[liveness.HEARTBEAT_TAG])
    assert tracking.get_run(run_id).info.status == "FINISHED"


HOLD_RUN = """
import sys, time
from pipeline import backend, tracking
backend.setup(None); backend.use_experiment(sys.argv[1])
with tracking.start("held", "tune", strategy="trial_0") as run_id:
    print(run_id, flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_sweep_spares_a_live_owner_and_ends_a_dead_ones_runs(experiment, store):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_RUN, experiment], env=process_env(store),
                            stdout=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
        backend.use_experiment(experiment)
        assert tracking.end_orphans() == 0 and tracking.get_run(run_id).info.status == "RUNNING"
    finally:
        proc.kill()
        proc.wait()
    # a run of an owner on another machine, silent for an hour
    client = MlflowClient()
    far = client.create_run(tracking.current_experiment_id(), tags={
        **ME, "owner.host": "elsewhere", liveness.HEARTBEAT_TAG: str(int(time.time() - 3600))}).info.run_id
    assert tracking.end_orphans() == 2
    for rid in (run_id, far):
        run = tracking.get_run(rid)
        assert run.info.status == "KILLED" and run.data.tags[liveness.KILLED_REASON_TAG]


# ------------------------------------------------------------------------------ SIGKILL, then a rerun
KILL_POINTS = {  # where to kill: (override that keeps the process there, the run to wait for)
    "baseline-training": (("--epochs", "100000"), ("baseline", None)),
    "tune-trial": (("--set", "tune.epochs=100000"), ("tune", "trial_0")),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_rerun_leaves_no_run_running_and_a_sound_store(point, tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    override, (stage, strategy) = KILL_POINTS[point]
    proc = start_convert(uri, fast_args("chaos", *override), tmp_path)
    mlflow.set_tracking_uri(uri)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and not any(
                r.data.tags.get("stage") == stage and r.data.tags.get("strategy") == strategy
                for r in (runs_of("chaos") if db.exists() else [])):
            time.sleep(0.2)
        time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert "RUNNING" in statuses("chaos")
        rerun = subprocess.run([sys.executable, "-m", "pipeline", "convert", *fast_args("chaos")], cwd=tmp_path,
                               env=process_env(uri), capture_output=True, text=True, timeout=180)
    finally:
        proc.kill()
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "store: ended" in rerun.stdout
    runs = runs_of("chaos")
    assert "RUNNING" not in [r.info.status for r in runs]
    killed = [r for r in runs if r.info.status == "KILLED" and liveness.KILLED_REASON_TAG in r.data.tags]
    assert {r.data.tags["stage"] for r in killed} >= {"convert", stage}
    assert integrity(db) == "ok"


@pytest.mark.slow
def test_two_converts_started_together_on_a_fresh_store_both_finish_and_leave_it_whole(tmp_path):
    """One of them with --jobs 2, which puts the store in WAL mode (as Optuna's file always is). The commands skip
    the interpreter's final garbage collections at exit (cli._exit_quickly) after closing every database
    connection themselves: the last to close folds the write-ahead log back, so each store is one whole file."""
    db = tmp_path / "mlflow.db"
    procs = [start_convert(f"sqlite:///{db}", fast_args("together", *jobs), tmp_path) for jobs in ([], ["--jobs", "2"])]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-1500:] for o in outs)
    assert sorted(p.name for p in tmp_path.glob("*.db*")) == ["mlflow.db", "mlflow.db.lock", "optuna.db",
                                                               "optuna.db.lock"]
    assert integrity(tmp_path / "optuna.db") == "ok"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = runs_of("together")
    assert sum(r.data.tags.get("stage") == "convert" for r in runs) == 2
    assert settled(runs) and integrity(db) == "ok"  # FINISHED, or KILLED for a pruned trial


def test_switching_to_wal_waits_for_another_commands_write(tmp_path):
    """SQLite refuses the switch to write-ahead logging at once, timeout or not, while another process holds a
    write transaction (waiting could deadlock); two converts on one fresh store met that once in CI."""
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (x)")
    writer = subprocess.Popen([sys.executable, "-c", f"""import sqlite3, time
db = sqlite3.connect({str(db)!r}, isolation_level=None)
db.execute("BEGIN IMMEDIATE"); db.execute("INSERT INTO t VALUES (1)")
print("writing", flush=True); time.sleep(1); db.execute("COMMIT")"""], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        backend.enable_concurrent_writes()
    finally:
        mlflow.set_tracking_uri(previous)
    assert writer.wait(timeout=30) == 0
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert check.execute("SELECT x FROM t").fetchall() == [(1,)]


# ------------------------------------------------------------------------------ bad input: one line
BOOM = """import torch
from torch import nn


class InitBoom(nn.Module):
    def __init__(self, input_dim: int = 10):
        super().__init__()
        raise RuntimeError("cannot build: no GPU kernels for this layer")


class TrainBoom(nn.Module):
    # converts (its forward works in eval mode), then fails once training starts

    def __init__(self, input_dim: int = 10):
        super().__init__()
        self.fc = nn.Linear(input_dim, 1)

    def forward(self, x):
        if self.training:
            raise ValueError("dropout schedule not set")
        return self.fc(x)
"""

BAD_INPUT = {  # case -> (extra convert arguments, a piece of the one line)
    "lr-nan": (["--lr", "nan"], "is not a finite number"),
    "lr-inf": (["--lr", "inf"], "is not a finite number"),
    "weight-decay-negative": (["--set", "train.weight_decay=-1"], "train.weight_decay must be 0 or more"),
    "patience-negative": (["--set", "train.patience=-3"], "train.patience must be 0"),
    "fraction-out-of-range": (["--set", "data.test_fraction=0.9"], "data.test_fraction must be between"),
    "dropout-nan": (["--set", "model.dropout=nan"], "is not a finite number"),
    "tolerance-inf": (["--set", "slim.tolerance=inf"], "is not a finite number"),
    "lp-ft-factor-zero": (["--set", "head_swap.lp_ft_lr_factor=0"], "lp_ft_lr_factor must be positive"),
    "width-unallocatable": (["--set", "model.width=100000000"], "GiB to train"),
    "seed-too-large": (["--seed", str(2**40)], "seed + seeds must stay below"),
    "tracking-uri-bogus": (["--tracking-uri", "bogus://x"], "MLflow has no store for the scheme 'bogus'"),
    "store-is-text-file": (["--tracking-uri", "sqlite:///{tmp}/notes.txt"], "is not an SQLite database"),
    "store-is-folder": (["--tracking-uri", "sqlite:///{tmp}"], "is a folder, not a file"),
    "store-folder-missing": (["--tracking-uri", "sqlite:///{tmp}/no/such/mlflow.db"], "does not exist"),
    "experiment-not-a-model-name": (["--experiment", "team/prices"], "which MLflow refuses"),
    "register-name-invalid": (["--set", "compare.register=a:b"], "which MLflow refuses"),
    "register-name-not-a-uri": (["--set", "compare.register=a@b"], "it contains '@'"),
    "experiment-newline": (["--experiment", "a\nb"], "holds the control character '\\n'"),
    "study-name-too-long": (["--set", "tune.study_name=" + "s" * 300], "300 characters long"),
    "features-repeated": (["--features", "x0,x0,x1"], "--features names 'x0' more than once"),
    "synthetic-no-rows": (["--data", "synthetic:friedman1?rows=0"], "rows must lie in"),
    "synthetic-negative-noise": (["--data", "synthetic:friedman1?rows=200&noise=-1"], "noise be a finite number"),
    "target-near-1e200": (["--data", "{tmp}/huge.csv"], "overflows float32"),
    "features-include-target": (["--features", "x0,x1,target"], "--features includes 'target'"),
    "model-init-raises": (["--model", "{tmp}/boom.py:InitBoom", "--retrain"], "InitBoom(**{}) raised RuntimeError"),
    "stale-limit-not-a-number": (["{env}REG2CLS_STALE_AFTER_S=soon"], "must be a positive number of seconds"),
}
if not torch.cuda.is_available():
    BAD_INPUT["device-cuda-without-gpu"] = (["--device", "cuda"], "torch sees no CUDA device")


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_before_any_run(case, experiment, store, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a database\n")
    (tmp_path / "boom.py").write_text(BOOM)
    frame = data.load(TINY["data.source"])
    frame["target"] = frame["target"] * 1e199
    frame.to_csv(tmp_path / "huge.csv", index=False)
    extra, message = BAD_INPUT[case]
    args = []
    for a in extra:
        if a.startswith("{env}"):
            monkeypatch.setenv(*a[5:].split("=", 1))
        else:
            args.append(a.replace("{tmp}", str(tmp_path)))
    result = invoke("convert", *fast_args(experiment, *args))  # a repeated option: click keeps the last
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = lines_of(result.output)
    assert len(lines) == 1 and message in lines[0], result.output
    mlflow.set_tracking_uri(store)  # the command pointed this process's MLflow at its --tracking-uri
    assert runs_of(experiment) == []


def test_user_code_failing_mid_run_is_one_line_and_ends_its_runs_failed(experiment, tmp_path):
    (tmp_path / "boom.py").write_text(BOOM)
    result = invoke("convert", *fast_args(experiment, "--model", f"{tmp_path}/boom.py:TrainBoom", "--retrain"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    [error] = [ln for ln in result.output.splitlines() if ln.startswith("Error")]  # after the stages' progress
    assert "your model code raised ValueError: dropout schedule not set" in error
    assert f"{tmp_path}/boom.py, line" in error
    assert sorted(set(statuses(experiment))) == ["FAILED"]


EXITS = (REPO / "tests" / "exits.py").read_text()  # a model that exits where EXIT_AT says


@pytest.mark.parametrize("at, message", [
    ("import", "cannot import {tmp}/exits.py: SystemExit: 2 ({tmp}/exits.py, line 10, in <module>)"),
    ("init", "ended the process with sys.exit(3) at {tmp}/exits.py, line 17, in __init__"),
    ("training", "ended the process with sys.exit(9) at {tmp}/exits.py, line 22, in forward"),
    ("os-exit", "ended the process with os._exit(6) at {tmp}/exits.py, line 24, in forward"),
], ids=lambda v: v if v in ("import", "init", "training", "os-exit") else "")
def test_model_code_that_exits_is_one_line_and_ends_its_runs_failed(at, message, experiment, tmp_path,
                                                                    monkeypatch):
    (tmp_path / "exits.py").write_text(EXITS)
    monkeypatch.setenv("EXIT_AT", at)
    result = invoke("convert", *fast_args(experiment, "--model", f"{tmp_path}/exits.py:Net", "--retrain"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    [error] = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert message.format(tmp=tmp_path) in error
    assert set(statuses(experiment)) <= {"FAILED"}


@pytest.mark.slow
def test_model_code_that_exits_in_a_worker_is_one_line_and_ends_its_runs_failed(experiment, store, tmp_path):
    (tmp_path / "exits.py").write_text(EXITS)
    env = {**process_env(store), "EXIT_AT": "worker"}  # a head-swap strategy's training, in a pool worker
    proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", *fast_args(
        experiment, "--model", f"{tmp_path}/exits.py:Net", "--retrain", "--set", "train.jobs=2")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"sys.exit(7) at {tmp_path}/exits.py, line 26, in forward" in proc.stderr.splitlines()[-1]
    status = {r.data.tags.get("strategy", r.data.tags["stage"]): r.info.status for r in runs_of(experiment)}
    assert status["convert"] == status["head_swap"] == "FAILED" and "RUNNING" not in status.values(), status


@pytest.mark.parametrize("command, option", [("compare", "--run-id"), ("slim", "--from-run")])
def test_a_run_that_does_not_exist_is_one_line(command, option, experiment):
    extra = ["--experiment", experiment] if command == "compare" else tiny_args(experiment, "--set", "data.folds=1")
    result = invoke(command, option, "0123456789abcdef0123456789abcdef", *extra)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = lines_of(result.output)
    assert len(lines) == 1 and "not found" in lines[0], result.output
    assert "RUNNING" not in statuses(experiment)


# ------------------------------------------------------------------------------ a champion, and predict
NET = """from torch import nn


class Net(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU())
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.out(self.body(x))
"""


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A champion converted from a user model brought by a *relative* path: (store URI, model URI, folder,
    experiment, a finished head_swap strategy run)."""
    root = tmp_path_factory.mktemp("champion")
    (root / "project").mkdir()
    (root / "project" / "net.py").write_text(NET)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, uri, root / "project")
        result = invoke("convert", *fast_args("champ", "--model", "net.py:Net", "--model-kwargs",
                                              '{"input_dim": 10}', "--retrain", "--set", "tune.n_trials=0"))
        assert result.exit_code == 0, result.output
        strategy = next(r for r in runs_of("champ") if r.data.tags.get("strategy") == "warm_start").info.run_id
    return uri, "models:/champ-friedman1@champion", root, "champ", strategy


def raw_rows(n: int = 20) -> pd.DataFrame:
    return data.load(TINY["data.source"]).drop(columns=["target"]).head(n)


@pytest.mark.slow
def test_the_champion_of_a_relative_model_file_predicts_from_another_folder(champion, tmp_path):
    uri, model, _, _, _ = champion
    raw_rows().to_csv(tmp_path / "in.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--model-uri", model, "--input", "in.csv",
                           "--output", "out.csv"], cwd=tmp_path, env=process_env(uri), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == 20 and out.filter(like="proba_").sum(axis=1).round(4).eq(1).all()


PREDICT_REFUSED = {  # case -> a piece of predict's one line
    "text-only-column": "column 'x0' should hold numbers", "output-folder-missing": "does not exist",
    "not-a-champion": "is not a reg2cls champion", "output-is-input": "is the --input file",
    "beyond-float32": "row(s) 2 hold values too large for the model",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["text-and-inf-become-missing", "header-only", "to-standard-output",
                                  *PREDICT_REFUSED])
def test_predict_input_problems(case, champion, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as the console script sets it
    uri, model, root, _, strategy_run = champion
    frame, output = raw_rows(), root / "out.csv"
    if case == "text-and-inf-become-missing":
        frame["x0"] = frame["x0"].astype(object)
        frame.loc[[1, 2], "x0"] = "?"
        frame.loc[3, "x1"] = np.inf
    elif case == "text-only-column":
        frame["x0"] = "abc"
    elif case == "output-folder-missing":
        output = root / "nowhere" / "out.csv"
    elif case == "not-a-champion":
        model = f"runs:/{strategy_run}/warm_start"  # a head_swap strategy's PyTorch model, not a champion
    elif case == "output-is-input":
        output = root / "in.csv"
    elif case == "beyond-float32":
        frame.loc[2, "x0"] = 1e308  # finite in float64, beyond float32 once scaled: convert refuses it too
    elif case == "header-only":
        frame = frame.head(0)
    frame.to_csv(root / "in.csv", index=False)
    output_args = [] if case == "to-standard-output" else ["--output", str(output)]
    result = invoke("predict", "--model-uri", model, "--input", str(root / "in.csv"), *output_args,
                    "--tracking-uri", uri)
    assert "Traceback" not in result.output
    if case in PREDICT_REFUSED:
        assert result.exit_code == 1 and len(lines_of(result.output)) == 1, result.output
        assert PREDICT_REFUSED[case] in result.output
        assert pd.read_csv(root / "in.csv").shape == frame.shape  # the input is never touched
        return
    assert result.exit_code == 0, result.output
    if case == "to-standard-output":
        out = pd.read_csv(io.StringIO(result.stdout))
        assert "wrote 20 predictions to standard output" in result.stderr
    else:
        out = pd.read_csv(output)
    assert len(out) == len(frame) and out.columns[0] == "label"
    assert np.isfinite(out.filter(like="proba_").to_numpy(dtype=float)).all()
    if case == "text-and-inf-become-missing":
        assert "2 text value(s) in numeric columns and 1 infinite value(s) treated as missing" in result.output


@pytest.mark.slow
def test_the_served_champion_answers_empty_and_out_of_range_input_without_a_stack_trace(champion):
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(champion[0])
    model = mlflow.pyfunc.load_model(champion[1])  # what `mlflow models serve` calls for each request
    assert model.predict(raw_rows().head(0)).shape == (0, 4)
    frame = raw_rows()
    frame.loc[1, "x3"] = 3.5e38
    with pytest.raises(MlflowException) as err:
        model.predict(frame)
    assert "row(s) 1 hold values too large" in err.value.message
    assert "stack_trace" not in err.value.serialize_as_json()  # the HTTP answer's body


@pytest.mark.slow
def test_the_champion_alias_never_moves_to_other_classes(champion):
    uri, _, root, experiment, _ = champion
    mlflow.set_tracking_uri(uri)
    before = len(runs_of(experiment))
    result = invoke("convert", *fast_args(experiment, "--classes", "quantile:2", "--tracking-uri", uri))
    assert result.exit_code == 1 and "has a champion (version 1) with other classes" in result.output, result.output
    assert len(lines_of(result.output)) == 1 and len(runs_of(experiment)) == before


# ------------------------------------------------------------------------------ silent wrong results
def test_numbers_with_stray_strings_are_numbers_with_missing_values(tmp_path):
    frame = data.load(TINY["data.source"])
    frame[["x0", "target"]] = frame[["x0", "target"]].astype(object)
    frame.loc[[3, 8, 13], "x0"] = "?"
    frame.loc[[5], "target"] = "n/a"  # a stray in the target: the row is dropped like a missing target
    frame.to_csv(tmp_path / "q.csv", index=False)
    prepared = data.prepare(Data(source=str(tmp_path / "q.csv"), folds="1"), 0)
    assert prepared.summary["n_features"] == 10 and prepared.summary["strings_as_missing"] == 3
    assert prepared.summary["rows_dropped_missing_target"] == 1


@pytest.mark.parametrize("features, classes", [("x0,target", "quantile:3"), ("x0,x1,grade", "label:grade")])
def test_the_target_or_label_column_is_never_a_feature(features, classes, tmp_path):
    frame = data.load(TINY["data.source"])
    frame["grade"] = np.where(frame["target"] > frame["target"].median(), "high", "low")
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match="leave the target"):
        data.prepare(Data(source=str(tmp_path / "t.csv"), features=tuple(features.split(",")), classes=classes,
                          folds="1"), 0)


def test_predict_reads_booleans_and_separators_as_training_did():
    frame = pd.DataFrame({"flag": [True, None, False], "n": ["1,200.5", "3", None]})  # a CSV's boolean with a gap
    out, n_text, _ = serving.clean(frame, ["flag", "n"])
    assert n_text == 0 and out["flag"].tolist()[::2] == [1.0, 0.0] and np.isnan(out["flag"][1])
    assert out["n"].tolist()[:2] == [1200.5, 3.0]


def test_predict_cleaning_counts_text_and_infinities():
    frame = pd.DataFrame({"a": [1.0, np.inf, -np.inf, 2.0], "b": ["1", "?", "3", None], "c": ["x", "y", "z", "x"]})
    out, n_text, n_inf = serving.clean(frame, ["a", "b"])
    assert (n_text, n_inf) == (1, 2)
    assert out["a"].isna().tolist() == [False, True, True, False] and out["b"].isna().sum() == 2


@pytest.mark.parametrize("lr, diverged, improved", [(3e-3, False, True), (1e12, True, False), (0.0, False, False)])
def test_history_tells_a_diverged_or_unimproved_training(lr, diverged, improved, tiny_data):
    from pipeline.model import MLP

    cfg = tiny_config()
    torch.manual_seed(0)
    model = MLP(tiny_data.n_features, width=16, out_dim=tiny_data.n_classes)
    hist = fit(model, tiny_data.train, tiny_data.val, "multiclass", epochs=8, batch_size=32, lr=lr, seed=cfg.seed)
    assert (hist.diverged, hist.improved) == (diverged, improved)
    assert all(math.isfinite(float(p.detach().abs().max())) for p in model.parameters())


def test_liveness_settings_are_checked(monkeypatch):
    monkeypatch.setenv("REG2CLS_HEARTBEAT_S", "400")
    assert "at most a third" in liveness.check_env()
    monkeypatch.setenv("REG2CLS_HEARTBEAT_S", "5")
    assert liveness.check_env() is None


# ------------------------------------------------------------------------------ the store and its files
def test_a_sqlite_store_keeps_new_experiments_artifacts_beside_it(tmp_path, monkeypatch):
    (tmp_path / "store").mkdir()
    (tmp_path / "work").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    use_store(monkeypatch, uri, tmp_path / "work")
    backend.setup(uri)
    backend.use_experiment("beside")
    with mlflow.start_run():
        mlflow.log_text("x", "x.txt")
    assert (tmp_path / "store" / "mlruns").is_dir() and not (tmp_path / "work" / "mlruns").exists()
    location = MlflowClient().get_experiment_by_name("beside").artifact_location
    assert location.startswith((tmp_path / "store" / "mlruns").as_uri())


def test_a_deleted_experiment_of_the_same_name_is_one_line_with_the_fix(experiment):
    MlflowClient().delete_experiment(MlflowClient().create_experiment(experiment))
    result = invoke("convert", *fast_args(experiment))
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = lines_of(result.output)
    assert f"experiment '{experiment}' was deleted" in line and "mlflow experiments restore" in line


def test_loading_a_run_model_leaves_no_temporary_copy(tiny_data, experiment, tmp_path, monkeypatch):
    import tempfile

    from pipeline.model import MLP

    backend.use_experiment(experiment)
    model = MLP(tiny_data.n_features, width=8, out_dim=1)
    with tracking.start("baseline", "baseline") as run_id:
        checkpoint.log_state(model)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    checkpoint.load_run_model(run_id)
    tracking.read_artifact(run_id, "state/architecture.json")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_champion_alias_reg2cls_did_not_set_is_never_moved(experiment, store):
    client = MlflowClient()
    name = f"foreign-{experiment}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source="file:///nowhere/model")  # a plain model: no reg2cls tags
    client.set_registered_model_alias(name, "champion", version.version)
    result = invoke("convert", *fast_args(experiment, "--set", f"compare.register={name}"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = lines_of(result.output)
    assert "that reg2cls did not register" in line and "--register NAME" in line
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    assert runs_of(experiment) == []


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path):
    import zipfile

    from pipeline.model import load_checkpoint

    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 2**27)  # 128 MB inflated, 0.1 MB on disk
    with pytest.raises(UserError, match="declares 128 MB of content in a 0.1 MB file"):
        load_checkpoint(torch.nn.Linear(3, 1), str(tmp_path / "bomb.pt"))


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh")) + \
    "head_swap:\n  strategies: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"  # 9**9 strings once expanded


@pytest.mark.parametrize("case, text, message", [
    ("alias-bomb", LAUGHS, "expands to more than 10,000 values"),
    ("deeply-nested", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("too-large", "# " + "x" * 1_100_000 + "\n", "bytes; an experiment file holds a few overrides"),
])
def test_a_hostile_config_fails_fast_in_one_line(case, text, message, tmp_path):
    from pipeline import config

    (tmp_path / "c.yaml").write_text(text)
    started = time.monotonic()
    with pytest.raises(UserError, match=message) as err:
        config.load(tmp_path / "c.yaml")
    assert time.monotonic() - started < 10 and "\n" not in str(err.value)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, theirs, ...), read from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if liveness.alive(p)}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_sigkill_of_a_command_leaves_no_worker_or_fork_server_behind(tmp_path):
    """SIGKILL (an OOM killer, a CI timeout) runs no handler: the workers notice the command is gone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_convert(uri, fast_args("orphans", "--epochs", "100000", "--set", "train.jobs=2"), tmp_path)
    children: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(descendants(proc.pid)) < 4:
            time.sleep(0.5)  # the resource tracker, the fork server and its two workers
        children = descendants(proc.pid)
        assert proc.poll() is None and len(children) >= 4, children
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while alive(children) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(children)
    finally:
        for pid in alive(descendants(proc.pid) | children):
            os.kill(pid, signal.SIGKILL)
