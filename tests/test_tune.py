"""Tuning with Optuna against real storages: trials as MLflow runs, pruning, resume, workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
import pandas as pd
import pytest
import torch
from conftest import (invoke, process_env, runs_of, start_in_own_group, stderr_after, tiny_args, tiny_config,
                      wait_until_training)
from optuna.trial import TrialState

from pipeline import config, tracking
from pipeline import study as optuna_study
from pipeline.config import UserError
from pipeline.model import MLP, architecture
from pipeline.surgery import new_head, swap_head
from pipeline.train import predict


def test_objective_with_a_fixed_trial(experiment, tiny_data):
    cfg = tiny_config(**{"tune.epochs": 5})
    tracking.use_experiment(experiment)
    torch.manual_seed(0)
    model = swap_head(MLP(tiny_data.n_features, 16, 2), "head", new_head(16, 3))
    with tracking.start("tune", "tune") as stage_run:
        job = optuna_study.Job(cfg, tiny_data, architecture(model), model.state_dict(), tracking.setup(None),
                               stage_run, "unused", "fixed", target=1, timeout=None, seed=0,
                               epochs=optuna_study.trial_epochs(cfg, "head_swap"), train_seed=0)
        trial = optuna.trial.FixedTrial({"head_dropout": 0.1, "hidden_dropout": 0.2, "lr": 3e-3, "weight_decay": 1e-4})
        value = optuna_study.objective(trial, job, optuna_study._Gate(None))
    assert 0.0 <= value <= 1.0
    [run] = [r for r in runs_of(experiment) if r.data.tags.get("strategy") == "trial_0"]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == stage_run
    assert run.data.params["trial.hidden_dropout"] == "0.2"
    assert run.data.metrics["val/f1_macro"] == pytest.approx(value)
    assert len(mlflow_history(run.info.run_id, "epoch/val_f1_macro")) == 5  # the curve: one point an epoch
    assert len(mlflow_history(run.info.run_id, "val/f1_macro")) == 1  # the returned model's, off the curve


def mlflow_history(run_id, key):
    import mlflow

    return mlflow.MlflowClient().get_metric_history(run_id, key)


def _trials(experiment: str, store: str) -> tuple[optuna.Study, list]:
    [stage] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "tune" and "strategy" not in r.data.tags]
    storage = optuna_study.storage_url("", store)
    return optuna.load_study(study_name=stage.data.tags["optuna_study"], storage=storage), runs_of(experiment)


@pytest.mark.slow
def test_trials_map_to_runs_pruned_killed_and_resume_adds_exactly_n(experiment, store):
    # the untuned models train 2 epochs, the trials 30: a trial beats them, so the tune run logs the tuned model
    args = tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=0.5", "--set", "slim.epochs=2",
                     "--set", "slim.depth=false", "--set", "tune.n_trials=8", "--set", "tune.epochs=30")
    args[args.index("--epochs") + 1] = "2"
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
    assert stage.data.params["best.trial"] == str(study.best_trial.number) and stage.data.tags["tuned"] == "better"
    assert stage.data.metrics["best/val/f1_macro"] == pytest.approx(study.best_value)
    assert {"test/f1_macro", "test/log_loss", "cost/params"} <= set(stage.data.metrics)
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id)}
    assert {"optuna_history.png", "optuna_importances.png", "optuna_slice.png"} <= artifacts

    # the same training settings as the study's (another epoch budget would start a study of its own)
    resumed_args = tiny_args(experiment, "--n-trials", "3", "--set", "tune.epochs=30", "--set", "slim.epochs=2",
                             "--pruner", "none")
    resumed_args[resumed_args.index("--epochs") + 1] = "2"
    resumed = invoke("tune", *resumed_args)
    assert resumed.exit_code == 0, resumed.output
    study = optuna.load_study(study_name=study.study_name, storage=optuna_study.storage_url("", store))
    assert len(study.trials) == 11
    assert [t.number for t in study.trials if t.user_attrs.get("untuned")] == [0]  # enqueued once, when new
    assert all(r.info.status != "RUNNING" for r in runs_of(experiment))


NO_SLIM = ("--strategies", "finetune", "--set", "slim.keep_ratios=none", "--set", "slim.depth=false",
           "--set", "compare.reference=false")


def _tune_runs(experiment: str) -> tuple[object, object, list]:
    """(the tune stage run, the untuned source model's run, the trial runs by trial number) of an experiment."""
    runs = runs_of(experiment)
    [stage] = [r for r in runs if r.data.tags["stage"] == "tune" and "strategy" not in r.data.tags]
    [source] = [r for r in runs if r.info.run_id == stage.data.tags["source_run"]]
    trials = sorted((r for r in runs if r.data.tags.get("strategy", "").startswith("trial_")),
                    key=lambda r: int(r.data.tags["optuna_trial"]))
    return stage, source, trials


@pytest.mark.slow
def test_trial_scores_differ_across_a_search_space_that_matters(experiment, store):
    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=4", "--set", "tune.pruner=none",
                     "--set", "tune.lr_min=1e-5", "--set", "tune.lr_max=1")
    assert invoke("convert", *args).exit_code == 0
    study, _ = _trials(experiment, store)
    values = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(values) == 4 and len(set(values)) >= 3


@pytest.mark.slow
def test_trial_0_is_the_untuned_configuration(experiment, store):
    # auto batch for ~170 training rows at one step an epoch: batch 256, lr scaled by sqrt(256 / 64) = 2
    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=2", "--set", "train.batch_size=auto",
                     "--set", "train.max_steps_per_epoch=1", "--set", "train.weight_decay=0.001")
    assert invoke("convert", *args).exit_code == 0
    study, _ = _trials(experiment, store)
    _, source, _ = _tune_runs(experiment)
    assert float(source.data.params["train.lr"]) == pytest.approx(6e-3)  # the lr the untuned fit used
    assert study.trials[0].params == {"head_dropout": 0.0, "hidden_dropout": 0.0,
                                      "lr": float(source.data.params["train.lr"]), "weight_decay": 0.001}
    assert study.trials[0].user_attrs["untuned"] is True and "untuned" not in study.trials[1].user_attrs


@pytest.mark.slow
def test_trial_0_retrains_the_untuned_run_exactly(experiment, store):
    # tune.epochs 0: trials get the untuned run's budget (train.epochs 12, same batch, lr, seed)
    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=1", "--set", "tune.epochs=0",
                     "--set", "tune.pruner=none")
    assert invoke("convert", *args).exit_code == 0
    stage, _, [trial_0] = _tune_runs(experiment)
    assert trial_0.data.tags["untuned"] == "true"
    assert trial_0.data.metrics["val/f1_macro"] == stage.data.metrics["untuned/val/f1_macro"]


@pytest.mark.slow
def test_a_trial_starts_from_the_start_weights_not_the_trained_ones(experiment, store, tiny_data):
    # a learning rate of ~1e-9 for one epoch leaves a trial's model where it started
    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=1", "--set", "tune.epochs=1",
                     "--set", "tune.pruner=none", "--set", "tune.lr_min=1e-9", "--set", "tune.lr_max=2e-9")
    assert invoke("convert", *args).exit_code == 0
    _, source, [trial] = _tune_runs(experiment)
    trained = tracking.load_run_model(source.info.run_id)
    start = tracking.rebuild(architecture(trained))
    start.load_state_dict(trained.reg2cls_start)
    x = tiny_data.val.x
    tried = predict(tracking.load_run_model(trial.info.run_id), x)
    assert torch.allclose(tried, predict(start, x), atol=1e-4)
    assert not torch.allclose(tried, predict(trained, x), atol=1e-2)


@pytest.mark.slow
def test_when_no_trial_beats_the_untuned_model_there_is_no_tuned_row(experiment, store):
    # every trial's learning rate is ~1e-9: none can improve on the trained model it competes with
    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=2", "--set", "tune.pruner=none",
                     "--set", "tune.lr_min=1e-9", "--set", "tune.lr_max=2e-9")
    result = invoke("convert", *args)
    assert result.exit_code == 0, result.output
    assert "trial 0 is the untuned configuration, moved into the search space: lr 0.003 -> 2e-09" in result.output
    assert "tune: no trial beat the untuned finetune" in result.output
    stage, source, _ = _tune_runs(experiment)
    assert stage.data.tags["tuned"] == "no_better" and stage.data.tags["model_run"] == source.info.run_id
    [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert list(board["strategy"]) == ["finetune"]
    assert "Tuning: the Optuna study found nothing better than the untuned finetune" in \
        parent.data.tags["mlflow.note.content"]


@pytest.mark.parametrize("name", ["lr", "weight_decay"])
def test_a_search_range_with_min_not_below_max_is_refused(name):
    with pytest.raises(UserError, match=f"tune.{name}_min and tune.{name}_max must be positive with min < max"):
        config.load(None, {f"tune.{name}_min": 0.1, f"tune.{name}_max": 0.01})


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_ctrl_c_stops_two_local_workers_cleanly(experiment, store, tmp_path):
    """A terminal's Ctrl+C reaches the spawned worker too: both trials end FAIL, their runs KILLED, and no
    process prints a traceback."""
    assert invoke("convert", *tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=none",
                                        "--set", "tune.n_trials=0")).exit_code == 0
    proc = start_in_own_group("tune", tiny_args(experiment, "--n-trials", "4", "--workers", "2", "--pruner", "none",
                                                "--set", "tune.epochs=100000"), store, tmp_path)

    def interrupt_once_both_train():  # inside stderr_after: should the wait fail, the group is still killed
        wait_until_training(experiment, proc, 2, "trial_")
        os.killpg(proc.pid, signal.SIGINT)

    err = stderr_after(proc, interrupt_once_both_train)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    study, runs = _trials(experiment, store)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    trial_runs = [r for r in runs if r.data.tags.get("strategy", "").startswith("trial_")]
    assert len(trial_runs) == 2 and all(r.info.status == "KILLED" for r in trial_runs)
    assert all(r.info.status != "RUNNING" for r in runs)


POSTGRES = os.environ.get("REG2CLS_TEST_POSTGRES")


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_a_study_keeps_apart_trials_trained_otherwise():
    arch = {"base": {"kind": "mlp"}, "ops": []}
    name = optuna_study.study_name(tiny_config(), arch, "abcdef12")
    for other in ({"train.class_weight": "balanced"}, {"tune.lr_max": 0.1}, {"train.epochs": 7}):
        assert optuna_study.study_name(tiny_config(**other), arch, "abcdef12") != name, other
    # where it runs does not change what a trial is
    assert optuna_study.study_name(tiny_config(**{"train.jobs": 2, "train.threads": 2}), arch, "abcdef12") == name
