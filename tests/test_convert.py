"""End to end against a real MLflow store: runs, tags, statuses, metric keys, reuse, signals, `mlflow run`."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
from conftest import REPO, TINY, invoke, process_env, runs_of, settled, tiny_args, tiny_config
from mlflow.tracking import MlflowClient

from pipeline import checkpoint, registry, reuse, tracking
from pipeline.config import STRATEGIES

CLASSIFIER_KEYS = {"val/loss", "val/accuracy", "val/f1_macro", "test/accuracy", "test/balanced_accuracy",
                   "test/f1_macro", "test/roc_auc", "test/log_loss", "test/ece", "cost/params", "cost/flops",
                   "cost/latency_ms_per_1k", "cost/train_seconds"}



def by_stage(runs, stage):
    """The stage runs themselves (not their strategy runs)."""
    return [r for r in runs if r.data.tags.get("stage") == stage and "strategy" not in r.data.tags]


@pytest.mark.slow
def test_convert_logs_every_stage_and_strategy(experiment):
    result = invoke("convert", *tiny_args(experiment))
    assert result.exit_code == 0, result.output
    assert "Leaderboard" in result.output and "mlflow ui --backend-store-uri" in result.output
    runs = runs_of(experiment)
    assert settled(runs)
    [parent], [base], [swap] = by_stage(runs, "convert"), by_stage(runs, "baseline"), by_stage(runs, "head_swap")
    parent_of = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert parent_of[base.info.run_id] == parent.info.run_id and parent_of[swap.info.run_id] == parent.info.run_id

    strategies = [r for r in runs if "strategy" in r.data.tags and r.data.tags["stage"] == "head_swap"]
    assert sorted(r.data.tags["strategy"] for r in strategies) == sorted(STRATEGIES)
    assert all(parent_of[r.info.run_id] == swap.info.run_id and r.data.tags["stage"] == "head_swap" for r in strategies)
    for run in strategies:
        assert CLASSIFIER_KEYS <= set(run.data.metrics), run.data.tags["strategy"]
        assert run.data.params["train.lr"] == str(tiny_config().train.lr)
    client = MlflowClient()
    for run in strategies:
        if run.data.tags["strategy"] != "threshold":
            curve = client.get_metric_history(run.info.run_id, "epoch/train_loss")
            assert len(curve) >= TINY["train.epochs"] and curve[-1].value < curve[0].value
    assert {"val/rmse", "test/rmse", "test/mae", "test/r2", "test/f1_macro"} <= set(base.data.metrics)
    assert base.inputs.dataset_inputs and base.inputs.dataset_inputs[0].dataset.digest
    assert "split.train_rows" in base.data.params

    # leaderboard artifact equals the metrics on the runs; logged models load and predict
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert sorted(board[board["stage"] == "head_swap"]["strategy"]) == sorted(STRATEGIES)
    assert set(board[board["stage"] == "slim"]["strategy"]) == {"width_0.75", "width_0.5", "width_0.25", "depth_-1"}
    for row in board.itertuples():
        run = next(r for r in runs if r.info.run_id == row.best_run)
        assert row.n == 1 and row.f1_macro == pytest.approx(run.data.metrics["test/f1_macro"])
    warm = next(r for r in strategies if r.data.tags["strategy"] == "warm_start")
    # a run keeps its state and predictions, no MLflow model: that is made on request, from the state
    assert {a.path for a in client.list_artifacts(warm.info.run_id)} == {"state", "predictions.npz"}
    assert checkpoint.load_run_model(warm.info.run_id).head.out_features == 3
    uri = registry.export(warm.info.run_id)
    assert uri == f"runs:/{warm.info.run_id}/warm_start"  # named after its strategy
    meta = json.loads(tracking.read_artifact(warm.info.run_id, "state/meta.json"))
    served = mlflow.pyfunc.load_model(uri).predict(registry.example_input(meta["preprocessor"]))
    assert list(served.columns) == ["label", *(f"proba_{c}" for c in meta["class_names"])] and len(served) == 1


@pytest.mark.slow
def test_rerun_reuses_finished_stages_until_forced_or_code_changes(experiment, monkeypatch):
    assert invoke("convert", *tiny_args(experiment, "--strategies", "threshold,warm_start")).exit_code == 0
    again = invoke("convert", *tiny_args(experiment, "--strategies", "threshold,warm_start"))
    assert again.exit_code == 0 and "reusing finished run" in again.output
    runs = runs_of(experiment)
    assert len(by_stage(runs, "convert")) == 2 and len(by_stage(runs, "baseline")) == 1
    newest = max(by_stage(runs, "convert"), key=lambda r: r.info.start_time)
    assert newest.data.tags["baseline_run"] == by_stage(runs, "baseline")[0].info.run_id

    assert invoke("convert", *tiny_args(experiment, "--strategies", "threshold", "--force")).exit_code == 0
    assert len(by_stage(runs_of(experiment), "baseline")) == 2
    monkeypatch.setattr(reuse, "source_hash", lambda: "edited-code")
    assert invoke("convert", *tiny_args(experiment, "--strategies", "threshold")).exit_code == 0
    assert len(by_stage(runs_of(experiment), "baseline")) == 3


@pytest.mark.slow
def test_a_failed_stage_is_run_again(experiment):
    args = tiny_args(experiment)
    assert invoke("baseline", *args).exit_code == 0
    [base] = runs_of(experiment)
    MlflowClient().set_terminated(base.info.run_id, "FAILED")
    out = invoke("baseline", *args)
    assert out.exit_code == 0 and "reusing" not in out.output
    assert sorted(r.info.status for r in runs_of(experiment)) == ["FAILED", "FINISHED"]


def test_each_stage_runs_alone_on_the_one_before(experiment):
    """The stage commands in order, each the least work it can do: every stage module runs in the fast subset
    (convert's own tests are slow)."""
    args = tiny_args(experiment, "--epochs", "2")
    assert invoke("baseline", *args).exit_code == 0
    assert invoke("head-swap", *args, "--strategies", "threshold").exit_code == 0
    slim = invoke("slim", *args, "--keep-ratios", "0.5", "--set", "slim.depth=false", "--set", "slim.epochs=1")
    assert slim.exit_code == 0, slim.output
    tune = invoke("tune", *args, "--n-trials", "1", "--set", "tune.epochs=1")
    assert tune.exit_code == 0, tune.output
    runs = runs_of(experiment)
    assert {r.data.tags["stage"] for r in runs if "strategy" not in r.data.tags} == {"baseline", "head_swap", "slim",
                                                                                     "tune"}
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_head_swap_alone_builds_on_the_latest_baseline(experiment):
    assert invoke("baseline", *tiny_args(experiment)).exit_code == 0
    out = invoke("head-swap", *tiny_args(experiment, "--strategies", "threshold,linear_probe"))
    assert out.exit_code == 0, out.output
    [base] = by_stage(runs_of(experiment), "baseline")
    [swap] = by_stage(runs_of(experiment), "head_swap")
    assert swap.data.tags["baseline_run"] == base.info.run_id
    bad = invoke("head-swap", *tiny_args(experiment, "--baseline-run", "0123456789abcdef"))
    assert bad.exit_code == 1 and "not found in the tracking store" in bad.output
    # a baseline trained on another split is never picked up, nor accepted when named
    other = invoke("head-swap", *tiny_args(experiment, "--seed", "5"))
    assert other.exit_code == 1 and "no finished baseline run on this data, split and classes" in other.output
    named = invoke("head-swap", *tiny_args(experiment, "--seed", "5", "--baseline-run", base.info.run_id))
    assert named.exit_code == 1 and "was trained on other data, target, classes, features or seed" in named.output


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "target column 'nope' not in the data"),
    (["--classes", "thresholds:5,1"], "strictly increasing"),
    (["--strategies", "magic"], "unknown strategy magic"),
    (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
])
def test_bad_input_exits_with_one_line_and_leaves_no_run(experiment, args, message):
    result = invoke("convert", *tiny_args(experiment, *args))
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert runs_of(experiment) == []


@pytest.mark.slow
def test_user_error_in_a_real_process_has_no_traceback(store, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--data", str(tmp_path / "nope.csv")],
                          capture_output=True, text=True, env=process_env(store), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Error: data file {tmp_path / 'nope.csv'} not found "
                                   "(or use builtin:diabetes / synthetic:friedman1?rows=N)")


@pytest.mark.slow
def test_help_and_argument_errors_import_neither_torch_nor_mlflow():
    code = ("import sys; from pipeline.cli import cli\n"
            "try: cli(['convert', '--device', 'tpu'], prog_name='reg2cls')\n"
            "except SystemExit as e: assert e.code == 2\n"
            "heavy = {'torch', 'mlflow', 'pandas'} & set(sys.modules); assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Invalid value for '--device'" in proc.stderr


@pytest.mark.slow
def test_sigterm_ends_every_run_killed(experiment, store):
    # enough epochs that the process is still training when the signal arrives
    args = tiny_args(experiment).copy()
    args[args.index("--epochs") + 1] = "100000"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "convert", *args], env=process_env(store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not any(r.data.tags.get("stage") == "baseline" for r in runs_of(experiment)):
            time.sleep(0.3)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    statuses = {r.data.tags["stage"]: r.info.status for r in runs_of(experiment)}
    assert statuses == {"convert": "KILLED", "baseline": "KILLED"}


@pytest.mark.slow
def test_real_mlflow_run_of_the_convert_entry_point(store, tmp_path):
    experiment_file = tmp_path / "exp.yaml"
    # small work: this test is about the entry point and its parameters, not the default sizes; two jobs, as the
    # entry point's default gives on any machine with two cores: a worker must not adopt the entry point's run
    experiment_file.write_text("data:\n  classes: quantile:2\n  folds: '1'\ntrain:\n  epochs: 3\n  patience: 0\n"
                               "  jobs: 2\nmodel:\n  width: 16\ntune:\n  n_trials: 2\n  epochs: 3\n")
    proc = subprocess.run(
        ["mlflow", "run", str(REPO), "-e", "convert", "--env-manager", "local", "--experiment-name", "mlflow-run",
         "-P", f"config={experiment_file}", "-P", f"data={TINY['data.source']}", "-P", "seed=07",
         "-P", "strategies=threshold,warm_start"],
        capture_output=True, text=True, env=process_env(store), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_of("mlflow-run")
    assert settled(runs)
    [parent] = by_stage(runs, "convert")
    assert parent.info.run_name == f"friedman1 → {parent.data.tags['champion']}"  # data and outcome
    # parameters left empty keep the experiment file's values; `seed` as typed and as resolved
    params = parent.data.params
    assert params["data.classes"] == "quantile:2" and params["train.epochs"] == "3"
    assert params["seed"] == "07" and params["resolved.seed"] == "7"
    assert {r.data.tags.get("strategy") for r in runs} >= {"threshold", "warm_start"}
    children = {r.data.tags["stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {"baseline", "head_swap", "slim", "tune", "compare"}
    assert "mlflow.parentRunId" not in parent.data.tags
