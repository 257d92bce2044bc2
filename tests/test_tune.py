"""Tuning with Optuna against real storages: trials as MLflow runs, pruning, resume, workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import torch
from conftest import invoke, process_env, runs_of, tiny_args, tiny_config
from optuna.trial import TrialState

from pipeline import study as optuna_study
from pipeline import tracking
from pipeline.model import MLP, architecture
from pipeline.surgery import new_head, swap_head


def test_objective_with_a_fixed_trial(experiment, tiny_data):
    cfg = tiny_config(**{"tune.epochs": 5})
    tracking.use_experiment(experiment)
    torch.manual_seed(0)
    model = swap_head(MLP(tiny_data.n_features, 16, 2), "head", new_head(16, 3))
    with tracking.start("tune", "tune") as stage_run:
        job = optuna_study.Job(cfg, tiny_data, architecture(model), model.state_dict(), tracking.setup(None),
                               stage_run, "unused", "fixed", target=1, timeout=None, seed=0)
        trial = optuna.trial.FixedTrial({"head_dropout": 0.1, "hidden_dropout": 0.2, "lr": 3e-3, "weight_decay": 1e-4})
        value = optuna_study.objective(trial, job, optuna_study._Gate(None))
    assert 0.0 <= value <= 1.0
    [run] = [r for r in runs_of(experiment) if r.data.tags.get("strategy") == "trial_0"]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == stage_run
    assert run.data.params["trial.hidden_dropout"] == "0.2"
    assert run.data.metrics["val/f1_macro"] == pytest.approx(value)
    assert len(mlflow_history(run.info.run_id, "val/f1_macro")) == 6  # 5 epochs + the returned model


def mlflow_history(run_id, key):
    import mlflow

    return mlflow.MlflowClient().get_metric_history(run_id, key)


def _trials(experiment: str, store: str) -> tuple[optuna.Study, list]:
    [stage] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "tune" and "strategy" not in r.data.tags]
    storage = optuna_study.storage_url("", store)
    return optuna.load_study(study_name=stage.data.tags["optuna_study"], storage=storage), runs_of(experiment)


def test_trials_map_to_runs_pruned_killed_and_resume_adds_exactly_n(experiment, store):
    args = tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=0.5",
                     "--set", "slim.depth=false", "--set", "tune.n_trials=8", "--set", "tune.epochs=30")
    assert invoke("convert", *args).exit_code == 0
    study, runs = _trials(experiment, store)
    assert len(study.trials) == 8
    by_run = {r.info.run_id: r for r in runs}
    states = {t.state for t in study.trials}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    expected = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
    for t in study.trials:
        run = by_run[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == expected[t.state] and run.data.tags["strategy"] == f"trial_{t.number}"
    [stage] = [r for r in runs if r.data.tags["stage"] == "tune" and "strategy" not in r.data.tags]
    assert stage.data.params["best.trial"] == str(study.best_trial.number)
    assert stage.data.metrics["best/val/f1_macro"] == pytest.approx(study.best_value)
    assert {"test/f1_macro", "test/log_loss", "cost/params"} <= set(stage.data.metrics)
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id)}
    assert {"optuna_history.png", "optuna_importances.png", "optuna_slice.png"} <= artifacts

    resumed = invoke("tune", *tiny_args(experiment, "--n-trials", "3", "--set", "tune.epochs=30"))
    assert resumed.exit_code == 0, resumed.output
    study = optuna.load_study(study_name=study.study_name, storage=optuna_study.storage_url("", store))
    assert len(study.trials) == 11
    assert all(r.info.status != "RUNNING" for r in runs_of(experiment))


def test_a_study_with_another_objective_is_refused(experiment, store):
    base = tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=0.5",
                     "--set", "tune.n_trials=2", "--set", "tune.epochs=3", "--set", "tune.study_name=shared")
    assert invoke("convert", *base).exit_code == 0
    n_runs = len(runs_of(experiment))
    refused = invoke("tune", *tiny_args(experiment, "--study-name", "shared", "--metric", "val/log_loss",
                                        "--n-trials", "1"))
    assert refused.exit_code == 1
    assert "study 'shared' optimises val/f1_macro (maximize), not val/log_loss (minimize)" in refused.output
    assert len(runs_of(experiment)) == n_runs


def test_two_local_workers_finish_n_trials_between_them(experiment, store):
    assert invoke("convert", *tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=0.5",
                                        "--set", "tune.n_trials=0")).exit_code == 0
    result = invoke("tune", *tiny_args(experiment, "--n-trials", "6", "--workers", "2", "--set", "tune.epochs=8",
                                       "--pruner", "none"))
    assert result.exit_code == 0, result.output
    assert result.output.count("started (pid") == 1 and "worker 0 runs in this process" in result.output
    study, runs = _trials(experiment, store)
    assert len(study.trials) == 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    trial_runs = [r for r in runs if r.data.tags.get("strategy", "").startswith("trial_")]
    assert len(trial_runs) == 6 and all(r.info.status == "FINISHED" for r in trial_runs)


POSTGRES = os.environ.get("REG2CLS_TEST_POSTGRES")


@pytest.mark.skipif(not POSTGRES, reason="needs PostgreSQL: .ci/run starts it and sets REG2CLS_TEST_POSTGRES")
def test_postgres_study_survives_a_worker_killed_mid_trial(mlflow_server, tmp_path):
    """Three workers (this process and two spawned) on one PostgreSQL study and one MLflow tracking
    server; a spawned one is SIGKILLed mid-trial."""
    import mlflow

    name = f"pg-{uuid.uuid4().hex[:8]}"
    env = process_env(mlflow_server)
    common = tiny_args(name)
    prep = subprocess.run([sys.executable, "-m", "pipeline", "convert", *common, "--strategies", "finetune",
                           "--set", "slim.keep_ratios=0.5", "--set", "tune.n_trials=0"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    common[common.index("--epochs") + 1] = "1"
    proc = subprocess.Popen([sys.executable, "-u", "-m", "pipeline", "tune", *common, "--storage", POSTGRES,
                             "--study-name", name, "--n-trials", "4", "--workers", "3", "--pruner", "none",
                             "--set", "tune.epochs=800"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = []
        for line in proc.stdout:
            if "started (pid" in line:
                pids.append(int(line.rsplit("pid ", 1)[1].rstrip(")\n")))
            if len(pids) == 2:
                break
        study = optuna.load_study(study_name=name, storage=POSTGRES)
        deadline = time.time() + 120
        while len(study.get_trials(states=(TrialState.RUNNING,))) < 3 and time.time() < deadline:
            time.sleep(0.3)
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)  # mid-trial: no chance to clean up
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "exited with code -9" in out
    trials = optuna.load_study(study_name=name, storage=POSTGRES).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert len(failed) == 1
    retried = [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials]
    assert failed[0].number in retried
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=[name], output_format="list", max_results=500)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    killed_run = next(r for r in runs if r.info.run_id == failed[0].user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "FAILED"


def test_timeout_stops_starting_trials(experiment, store):
    assert invoke("convert", *tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=0.5",
                                        "--set", "tune.n_trials=0")).exit_code == 0
    started = time.time()
    result = invoke("tune", *tiny_args(experiment, "--n-trials", "50", "--timeout", "1", "--pruner", "none",
                                       "--set", "tune.epochs=400"))
    assert result.exit_code == 0, result.output
    study, runs = _trials(experiment, store)
    assert 1 <= len(study.trials) < 50 and time.time() - started < 60
    assert all(r.info.status != "RUNNING" for r in runs)
