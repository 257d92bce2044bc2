"""Tuning with Optuna against real storages: trials as MLflow runs, pruning, resume, workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from conftest import (invoke, process_env, runs_of, start_in_own_group, stderr_after, tiny_args, tiny_config,
                      use_store, wait_until_training)
from optuna.trial import TrialState

from pipeline import backend, checkpoint, config, data, tracking
from pipeline import study as optuna_study
from pipeline.config import UserError
from pipeline.model import MLP, architecture
from pipeline.stages.common import StageResult
from pipeline.stages.tune import start_weights
from pipeline.surgery import new_head, swap_head
from pipeline.train import predict


def test_objective_with_a_fixed_trial(experiment, tiny_data):
    cfg = tiny_config(**{"tune.epochs": 5})
    backend.use_experiment(experiment)
    torch.manual_seed(0)
    model = swap_head(MLP(tiny_data.n_features, 16, 2), "head", new_head(16, 3))
    with tracking.start("tune", "tune") as stage_run:
        job = optuna_study.Job(cfg, tiny_data, architecture(model), model.state_dict(), backend.setup(None),
                               stage_run, "unused", "fixed", target=1, timeout=None, seed=0,
                               recipe=optuna_study.Recipe(((5, 1.0, False),)), train_seed=0)
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial({"head_dropout": 0.1, "hidden_dropout": 0.2, "lr": 3e-3, "weight_decay": 1e-4})
        value = optuna_study.objective(study.ask(), job, optuna_study._Gate(None))
    assert 0.0 <= value <= 1.0
    [run] = [r for r in runs_of(experiment) if r.data.tags.get("strategy") == "trial_0"]
    assert tracking.read_artifact(run, "state/weights.pt") is not None  # the first trial may be the best
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == stage_run
    assert run.data.params["trial.hidden_dropout"] == "0.2"
    assert run.data.metrics["val/f1_macro"] == pytest.approx(value)
    assert len(mlflow_history(run.info.run_id, "epoch/val_f1_macro")) == 5  # the curve: one point an epoch
    assert len(mlflow_history(run.info.run_id, "val/f1_macro")) == 1  # the returned model's, off the curve


def _study_with(direction: str, *values: float) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for v in values:
        study.add_trial(optuna.trial.create_trial(value=v))
    return study


@pytest.mark.parametrize("direction, value, best", [
    ("maximize", 0.9, True), ("maximize", 0.8, False), ("maximize", 0.95, True),
    ("minimize", 0.5, True), ("minimize", 0.6, False)])
def test_only_a_trial_as_good_as_every_one_before_it_could_be_the_best(direction, value, best):
    done = (0.9, 0.7) if direction == "maximize" else (0.5, 0.55)
    assert optuna_study.could_be_best(_study_with(direction, *done), value) is best


def test_a_first_trial_could_be_the_best():
    assert optuna_study.could_be_best(_study_with("maximize"), 0.1)


def test_a_trial_behind_the_best_keeps_no_weights_and_says_why(experiment, tiny_data):
    cfg = tiny_config(**{"tune.epochs": 2})
    backend.use_experiment(experiment)
    model = swap_head(MLP(tiny_data.n_features, 16, 2), "head", new_head(16, 3))
    with tracking.start("tune", "tune") as stage_run:
        job = optuna_study.Job(cfg, tiny_data, architecture(model), model.state_dict(), backend.setup(None),
                               stage_run, "unused", "behind", target=2, timeout=None, seed=0,
                               recipe=optuna_study.Recipe(((2, 1.0, False),)), train_seed=0)
        study = _study_with("maximize", 1.01)  # above any macro-F1
        optuna_study.objective(study.ask(), job, optuna_study._Gate(None))
    [run] = [r for r in runs_of(experiment) if r.data.tags.get("strategy", "").startswith("trial_")]
    assert run.info.status == "FINISHED" and run.data.tags["state"] == optuna_study.NOT_KEPT
    assert tracking.read_artifact(run, "state/weights.pt") is None and "val/f1_macro" in run.data.metrics
    with pytest.raises(UserError, match="behind the study's best"):
        checkpoint.load_run_model(run.info.run_id)


def test_a_pruned_trials_run_says_it_keeps_no_model(experiment):
    backend.use_experiment(experiment)
    with pytest.raises(optuna.TrialPruned), tracking.start("trial_0", "tune", tags={"optuna_trial": "0"},
                                                           killed_on=(optuna.TrialPruned,)) as run_id:
        raise optuna.TrialPruned("pruned at epoch 2")
    with pytest.raises(UserError, match=r"not a finished run \(stage=tune, status=KILLED\) \(a tuning trial stopped"):
        checkpoint.load_run_model(run_id)


def test_a_copy_of_the_study_file_alone_holds_every_trial_once_the_log_is_folded(tmp_path):
    """Workers end without closing their SQLite connections: what sits in optuna.db-wal would be missing from a
    copy of optuna.db alone, unless run_workers folds the log into the file when they are done."""
    import shutil
    import sqlite3

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    writer = sqlite3.connect(tmp_path / "optuna.db")  # a worker's connection, never closed
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE trials (n INTEGER)")
    writer.executemany("INSERT INTO trials VALUES (?)", [(i,) for i in range(50)])
    writer.commit()
    assert (tmp_path / "optuna.db-wal").stat().st_size > 0
    optuna_study.fold_log(url)
    shutil.copy(tmp_path / "optuna.db", tmp_path / "copy.db")
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("SELECT COUNT(*) FROM trials").fetchone() == (50,)
    writer.close()


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
def test_trial_0_retrains_the_untuned_run_exactly_and_is_no_tuned_row(experiment, store):
    # tune.epochs 0: trials get the untuned run's recipe (lp_ft: a probe, then a fine-tune at lr * 0.1; train.epochs
    # 12, same batch, lr, seed). Its lr and weight decay of 0 lie outside the searched ranges, which widen to hold them
    args = tiny_args(experiment, *NO_SLIM, "--strategies", "lp_ft", "--set", "tune.n_trials=1",
                     "--set", "tune.epochs=0", "--set", "tune.pruner=none", "--set", "train.weight_decay=0",
                     "--set", "tune.lr_min=1e-9", "--set", "tune.lr_max=2e-9")
    result = invoke("convert", *args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # a console line is wrapped at the terminal's width
    assert "the search space widened to hold it: lr up to 0.003, weight_decay from 0" in said
    stage, source, [trial_0] = _tune_runs(experiment)
    assert trial_0.data.tags["untuned"] == "true" and source.data.tags["strategy"] == "lp_ft"
    assert (trial_0.data.params["trial.lr"], trial_0.data.params["trial.weight_decay"]) == ("0.003", "0.0")
    assert trial_0.data.metrics["val/f1_macro"] == stage.data.metrics["untuned/val/f1_macro"]
    # the same model again is no improvement: the untuned model stays, and there is no tuned row
    assert stage.data.metrics["best/gain"] == 0 and "tune: no trial beat the untuned lp_ft" in result.output
    assert stage.data.tags["tuned"] == "no_better" and stage.data.tags["model_run"] == source.info.run_id
    [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert "tuned" not in set(board["strategy"])


@pytest.fixture(scope="module")
def cross_fitted(store_uri, tmp_path_factory):
    """A convert over 2 outer folds whose trial 0 trains the untuned model again (so no fold keeps a tuned model),
    with the validation classes each fold's keep decision read; then the same convert again."""
    experiment = f"tune-folds-{uuid.uuid4().hex[:6]}"
    judged = []
    improvement = optuna_study.improvement

    def recorded(c, *args, **kwargs):
        judged.append(c.copy())
        return improvement(c, *args, **kwargs)

    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=1", "--set", "tune.epochs=0",
                     "--set", "tune.pruner=none")
    args[args.index("--folds") + 1] = "2"
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp_path_factory.mktemp("tune-folds"))
        mp.setattr(optuna_study, "improvement", recorded)
        first = invoke("convert", *args)
        assert first.exit_code == 0, first.output
        runs = runs_of(experiment)
        again = invoke("convert", *args)
        assert again.exit_code == 0, again.output
        yield {"output": first.output, "runs": runs, "judged": judged, "again": again.output,
               "runs_again": runs_of(experiment), "store": store_uri}


def _fold_tune_runs(runs) -> tuple[list, object]:
    """The fold runs of the (newest) cross-fitted tune stage run among `runs`, in fold order."""
    by_id = {r.info.run_id: r for r in runs}
    stage = max((r for r in runs if r.data.tags["stage"] == "tune" and "fold_runs" in r.data.tags),
                key=lambda r: r.info.start_time)
    return [by_id[i] for i in stage.data.tags["fold_runs"].split(",")], stage


@pytest.mark.slow
def test_each_fold_tunes_its_own_study_on_its_own_validation_rows(cross_fitted):
    """Cross-fitted, nested: every outer fold searches its own study and makes its own keep decision on its own
    validation rows (another fold's validation rows are some fold's test rows)."""
    runs = cross_fitted["runs"]
    by_id = {r.info.run_id: r for r in runs}
    folds, stage = _fold_tune_runs(runs)
    assert [f.data.tags["fold"] for f in folds] == ["0", "1"] and stage.data.tags["tuned"] == "no_better"
    assert len({f.data.tags["optuna_study"] for f in folds}) == 2  # a study of its own
    cfg = tiny_config(**{"data.folds": "2"})
    splits = data.prepare_folds(cfg.data, cfg.seed, 2)
    for fold, split, c in zip(folds, splits, cross_fitted["judged"]):
        study = optuna.load_study(study_name=fold.data.tags["optuna_study"],
                                  storage=optuna_study.storage_url("", cross_fitted["store"]))
        trials = [by_id[t.user_attrs["mlflow_run_id"]] for t in study.trials]
        # its trials are nested under it and trained and scored on its own split
        assert len(trials) == 1 and all(t.data.tags["mlflow.parentRunId"] == fold.info.run_id for t in trials)
        assert {t.data.tags["split_key"] for t in trials} == {fold.data.tags["split_key"]} == {split.split_key}
        assert np.array_equal(c, split.val.c.numpy())  # its keep decision read its own validation rows


@pytest.mark.slow
def test_a_fold_that_keeps_its_untuned_model_logs_it_and_no_fold_kept_means_no_tuned_row(cross_fitted):
    runs = cross_fitted["runs"]
    by_id = {r.info.run_id: r for r in runs}
    folds, _ = _fold_tune_runs(runs)
    for fold in folds:  # trial 0 is the untuned model again: no gain, so the fold's run holds the untuned model
        source = by_id[fold.data.tags["source_run"]]
        assert fold.data.tags["model_run"] == fold.info.run_id and fold.data.tags["tuned"] == "no_better"
        assert fold.data.metrics["test/f1_macro"] == source.data.metrics["test/f1_macro"]
        assert fold.data.metrics["val/f1_macro"] == source.data.metrics["val/f1_macro"]
    assert ("tune: kept on each fold's validation rows (1 trials a fold): untuned finetune, untuned finetune: "
            "no tuned row") in cross_fitted["output"]
    [parent] = [r for r in runs if r.data.tags["stage"] == "convert"]
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert "tuned" not in set(board["strategy"])
    # the verdict's sentence on tuning: in the convert run's description; the console leaves it to --verbose
    assert "Tuning: on no fold did the Optuna study find anything better" in parent.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_a_rerun_reuses_every_folds_tune_run(cross_fitted):
    first, _ = _fold_tune_runs(cross_fitted["runs"])
    again, _ = _fold_tune_runs(cross_fitted["runs_again"])
    assert [r.info.run_id for r in again] == [r.info.run_id for r in first]
    assert "tune[fold 1]: reusing finished run" in cross_fitted["again"]


@pytest.mark.slow
def test_a_trial_starts_from_the_start_weights_not_the_trained_ones(experiment, store, tiny_data):
    args = tiny_args(experiment, *NO_SLIM, "--set", "tune.n_trials=1", "--set", "tune.epochs=1",
                     "--set", "tune.pruner=none")
    assert invoke("convert", *args).exit_code == 0
    _, source, [trial] = _tune_runs(experiment)
    trained = checkpoint.load_run_model(source.info.run_id)
    # one epoch of the untuned configuration from the start: the trial's model, and far from the trained one
    again = checkpoint.rebuild(architecture(trained), start_weights(trained))
    cfg = tiny_config(**{"tune.epochs": 1})
    optuna_study.train_config(again, optuna_study.untuned_params(trained, cfg, tiny_data), tiny_data, cfg,
                              int(source.data.tags["seed"]), optuna_study.Recipe(((1, 1.0, False),)))
    x = tiny_data.val.x
    tried = predict(checkpoint.load_run_model(trial.info.run_id), x)
    assert torch.allclose(tried, predict(again, x), atol=1e-6)
    assert not torch.allclose(tried, predict(trained, x), atol=1e-2)


@pytest.fixture(scope="module")
def trained_kinds(store_uri, tmp_path_factory):
    """The stages run directly (no convert, no tune): a baseline, head_swap with threshold and the strategies that
    train otherwise than a plain fine-tune (linear_probe, lp_ft), and slim with a distilled variant; weight decay
    0, outside the searched range. Yields (config, data, head_swap strategy runs and slim runs by strategy)."""
    from pipeline import data, stages
    from pipeline.train import use_threads

    use_threads(1)  # as the CLI runs them (train.threads): a second thread on a busy machine costs many times over
    cfg = tiny_config(**{"head_swap.strategies": ("threshold", "linear_probe", "lp_ft"), "train.weight_decay": 0.0,
                         "slim.keep_ratios": ("0.5",), "slim.depth": False, "slim.distill": True, "slim.epochs": 4,
                         "tune.epochs": 0, "tune.n_trials": 1, "tune.pruner": "none"})
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp_path_factory.mktemp("kinds"))
        backend.use_experiment(f"kinds-{uuid.uuid4().hex[:6]}")
        prepared = data.prepare(cfg.data, cfg.seed)
        swapped = stages.head_swap(cfg, prepared, stages.baseline(cfg, prepared, None))
        slimmed = stages.slim(cfg, prepared, swapped)
        runs = {r.data.tags["strategy"]: r for stage in (swapped, slimmed) for r in tracking.children(stage.run_id)}
        yield cfg, prepared, runs


@pytest.mark.parametrize("strategy, frozen", [("threshold", []), ("linear_probe", [True]), ("lp_ft", [True, False]),
                                              ("finetune", [False]), ("warm_start", [False]), ("corn", [False])])
def test_a_head_swap_sources_phases_are_its_strategy_rows(strategy, frozen):
    """study.recipe reads the strategies table as head_swap does: a frozen-backbone phase when the row probes, a
    whole-network phase when it fine-tunes (at lr * lp_ft_lr_factor after a probe), none when it trains nothing."""
    cfg = tiny_config()
    phases = optuna_study.recipe(cfg, {"stage": "head_swap", "strategy": strategy}, None, "cpu").phases
    assert [probe for _, _, probe in phases] == frozen
    assert [factor for _, factor, _ in phases] == [1.0, cfg.head_swap.lp_ft_lr_factor][:len(phases)]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["linear_probe", "lp_ft", "width_0.5_distill"])
def test_trial_0_trains_each_kind_of_source_again_exactly(trained_kinds, strategy):
    cfg, prepared, runs = trained_kinds
    run = runs[strategy]
    trained = checkpoint.load_run_model(run.info.run_id)
    untuned = optuna_study.untuned_params(trained, cfg, prepared)
    space, _ = optuna_study.holding(optuna_study.search_space(cfg), untuned)
    assert untuned["weight_decay"] == 0 and all(low <= untuned[k] <= high for k, (low, high, _) in space.items())
    again = checkpoint.rebuild(architecture(trained), start_weights(trained))
    recipe = optuna_study.recipe(cfg, run.data.tags, prepared, "cpu")
    optuna_study.train_config(again, untuned, prepared, cfg, int(run.data.tags["seed"]), recipe)
    x = prepared.val.x
    assert torch.allclose(predict(again, x), predict(trained, x), atol=1e-6)


@pytest.mark.slow
def test_a_head_swap_run_saves_only_the_start_its_baseline_run_does_not_hold(trained_kinds):
    """lp_ft starts from the baseline's backbone and a new head: its weights.pt keeps the head's start alone and
    names the baseline run for the rest (load_run_model reads it there: the retrain test above)."""
    import io

    _, _, runs = trained_kinds
    run = runs["lp_ft"]
    saved = torch.load(io.BytesIO(tracking.read_artifact(run, "state/weights.pt")), weights_only=True)
    assert saved["start_from"]["run"] == run.data.tags["baseline_run"]
    assert saved["start"] and not any(k.startswith("body.") for k in saved["start"])


@pytest.mark.slow
def test_a_source_that_trains_nothing_is_kept_without_a_study(trained_kinds):
    from pipeline.stages import tune

    cfg, prepared, runs = trained_kinds
    source = runs["threshold"]
    result = tune(cfg, prepared, StageResult(source.info.run_id, checkpoint.load_run_model(source.info.run_id),
                                             source.info.run_id))
    stage = tracking.get_run(result.run_id)
    assert result.model_run == source.info.run_id and stage.data.tags["tuned"] == "no_better"
    assert "optuna_study" not in stage.data.tags and not tracking.children(result.run_id)


def test_every_trial_trains_with_the_same_seed(experiment, tiny_data):
    # two trials of one configuration are one model: trials differ in their configuration, never in seed noise
    cfg = tiny_config(**{"tune.pruner": "none"})
    backend.use_experiment(experiment)
    torch.manual_seed(0)
    model = swap_head(MLP(tiny_data.n_features, 16, 2), "head", new_head(16, 3))
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        study.enqueue_trial({"head_dropout": 0.1, "hidden_dropout": 0.1, "lr": 3e-3, "weight_decay": 1e-4})
    with tracking.start("tune", "tune") as stage_run:
        job = optuna_study.Job(cfg, tiny_data, architecture(model), model.state_dict(), backend.setup(None),
                               stage_run, "unused", "same-seed", target=2, timeout=None, seed=0,
                               recipe=optuna_study.Recipe(((4, 1.0, False),)), train_seed=5)
        study.optimize(lambda t: optuna_study.objective(t, job, optuna_study._Gate(None)), n_trials=2)
    first, second = (checkpoint.load_run_model(t.user_attrs["mlflow_run_id"]) for t in study.trials)
    assert torch.equal(predict(first, tiny_data.val.x), predict(second, tiny_data.val.x))


def _log_loss_pair(mean_gain: float, n: int = 400, k: int = 3) -> tuple:
    """Classes and (untuned, tuned) (probabilities, classes) on n rows whose log losses differ row by row by
    noise of 0.05 around `mean_gain` (the tuned model's true-class probability times exp(difference))."""
    rng = np.random.default_rng(0)
    c = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n) * 0.4 + np.eye(k)[c] * 0.3 + 0.3 / k  # true class at most 0.8
    d = rng.normal(0, 0.05, n)
    d = d - d.mean() + mean_gain
    q = p.copy()
    q[np.arange(n), c] = p[np.arange(n), c] * np.exp(d)
    others = np.ones_like(q, dtype=bool)
    others[np.arange(n), c] = False
    q[others] *= np.repeat((1 - q[np.arange(n), c]) / (1 - p[np.arange(n), c]), k - 1)
    return c, (p, p.argmax(1)), (q, q.argmax(1))


def test_the_keep_rule_refuses_a_gain_within_the_noise_of_the_selection_rows():
    c, untuned, tuned = _log_loss_pair(1e-6)
    gain, noise = optuna_study.improvement(c, tuned, untuned, "val/log_loss")
    assert gain == pytest.approx(1e-6, abs=1e-9) and noise > 1e-3
    assert not optuna_study.keeps(gain, noise)


def test_the_keep_rule_keeps_a_gain_well_beyond_the_noise():
    c, untuned, tuned = _log_loss_pair(0.02)
    assert optuna_study.keeps(*optuna_study.improvement(c, tuned, untuned, "val/log_loss"))


def test_the_same_classes_again_are_no_macro_f1_improvement():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.7, c, (c + 1) % 3)
    proba = np.eye(3)[pred]
    gain, noise = optuna_study.improvement(c, (proba, pred), (proba, pred.copy()), "val/f1_macro")
    assert gain == 0 and not optuna_study.keeps(gain, noise)


def test_a_macro_f1_gain_beyond_the_noise_is_kept():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 3, 300)
    wrong = rng.random(300) < 0.4
    untuned = np.where(wrong, (c + 1) % 3, c)
    tuned = np.where(wrong & (rng.random(300) < 0.5), c, untuned)  # half the mistakes fixed
    gain, noise = optuna_study.improvement(c, (np.eye(3)[tuned], tuned), (np.eye(3)[untuned], untuned),
                                           "val/f1_macro")
    assert gain > 0.1 and optuna_study.keeps(gain, noise)


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


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_neither_pruner_stops_a_trial_before_prune_from(pruner):
    """The objective asks its pruner only from study.PRUNE_FROM on (each question reads the study back from the
    storage): that skips nothing only while both pruners answer no before it, even for the worst trial."""
    first = optuna_study.PRUNE_FROM
    study = optuna.create_study(direction="maximize",
                                pruner=optuna_study.make_pruner(tiny_config(**{"tune.pruner": pruner}), 30))
    for _ in range(6):  # good trials at every epoch
        good = study.ask()
        for epoch in range(1, 31):
            good.report(1.0, epoch)
        study.tell(good, 1.0)
    worst = study.ask()
    answers = []
    for epoch in range(1, 31):
        worst.report(0.0, epoch)
        answers.append(worst.should_prune())
    assert not any(answers[:first - 1]), answers
    # the median, at least, does stop it at its first chance (hyperband may put it in a bracket of its own)
    assert answers[first - 1] or pruner == "hyperband", answers


def test_the_held_median_pruner_answers_as_optunas_own():
    """HeldMedianPruner reads the completed trials once per trial: on a study with one worker every answer must be
    MedianPruner's, epoch by epoch, over trials of different lengths (some never reach the epochs asked about),
    ties and NaNs included."""
    rng = np.random.default_rng(0)
    held = optuna.create_study(direction="maximize", pruner=optuna_study.make_pruner(tiny_config(), 30))
    assert isinstance(held.pruner, optuna_study.HeldMedianPruner)
    own = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(
        n_startup_trials=2, n_warmup_steps=optuna_study.PRUNE_FROM))
    asked = pruned = 0
    for _ in range(40):
        length, level = int(rng.integers(3, 30)), float(rng.choice([0.2, 0.5, 0.5, 0.8]))
        trials = held.ask(), own.ask()
        for epoch in range(1, length + 1):
            value = float("nan") if rng.random() < 0.03 else round(level + rng.normal(0, 0.05), 2)
            for t in trials:
                t.report(value, epoch)
            answers = [t.should_prune() for t in trials]
            assert answers[0] == answers[1], (epoch, answers)
            asked += 1
            if answers[0]:
                pruned += 1
                held.tell(trials[0], state=TrialState.PRUNED)
                own.tell(trials[1], state=TrialState.PRUNED)
                break
        else:
            held.tell(trials[0], level)
            own.tell(trials[1], level)
    assert asked > 200 and pruned >= 5, (asked, pruned)  # the comparison covered both answers, many times


def test_the_held_median_pruner_reads_trials_completed_meanwhile_again(monkeypatch):
    """With several workers on a study, another worker's trial may complete during this one: the pruner reads the
    completed trials again once HEARTBEAT_S have passed (here at once), and then compares with it too."""
    storage = optuna.storages.InMemoryStorage()
    mine = optuna.create_study(storage=storage, direction="maximize",
                               pruner=optuna_study.make_pruner(tiny_config(), 30))
    theirs = optuna.load_study(study_name=mine.study_name, storage=storage)
    for value in (1.0, 1.0):  # two good trials: pruning can start
        good = theirs.ask()
        for epoch in range(1, 11):
            good.report(value, epoch)
        theirs.tell(good, value)
    trial = mine.ask()
    for epoch in range(1, 8):
        trial.report(0.0 if epoch < 7 else 0.5, epoch)
    assert trial.should_prune()  # below the median of the two good trials (1.0)
    for _ in range(3):  # three poor trials complete meanwhile: the median at epoch 7 falls to 0.3
        late = theirs.ask()
        for epoch in range(1, 11):
            late.report(0.3, epoch)
        theirs.tell(late, 0.3)
    assert trial.should_prune()  # the held two still: Optuna's own pruner would now say no
    monkeypatch.setattr(optuna_study, "HEARTBEAT_S", -1)  # as if HEARTBEAT_S had passed
    assert not trial.should_prune()  # read again: 0.5 is above the median of the five
