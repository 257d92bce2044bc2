"""tune: an Optuna study over dropout, learning rate and weight decay (the study itself: study.py)."""
from __future__ import annotations

import contextlib
from dataclasses import asdict

from torch import nn

from .. import jobs, tracking
from ..config import Config, UserError
from ..data import Prepared
from ..model import architecture
from ..reuse import reusable
from ..train import resolve_device
from .common import (StageResult, detail, flag_training, log_classifier, log_run_inputs, say, split_tags,
                     stage_output, stands_for, strategy_run_name, where)


def tune(cfg: Config, data: Prepared, source: StageResult, force: bool = False,
         other_folds: list[tuple[Prepared, StageResult]] = ()) -> StageResult:
    """Optuna over head and hidden dropout, learning rate and weight decay for the architecture of
    `source.model`, every trial retraining it from its start (the weights its own training started from:
    the head-swapped regressor, or a slim variant's pruned weights) by its own recipe (study.recipe) and seed.
    A new study's trial 0 is the untuned configuration: the untuned model trained again. Unless `force`, a
    finished tune stage with the same key is reused; with `force` (the `tune` command: each call adds trials)
    this call adds `tune.n_trials` trials to the study. A source that trains nothing (threshold) is kept as it is.

    The untuned source model competes: unless the best trial beats it on the validation rows by more than
    their noise (study.improvement, study.keeps), the stage run is tagged `tuned=no_better`, stands for the
    source model (tag `model_run`) and logs no model of its own, so compare shows no tuned row. Otherwise
    (`tuned=better`) the stage run gets the best trial's params, value and model (kept from that trial, not
    retrained), with its decision rule fitted and its metrics logged here.

    Cross-fitted (`other_folds`: each other fold's split and chosen model), the best configuration, searched
    on this fold only, is then trained on every other fold too, each a run `fold_<i>` (strategy tuned)
    under this one: the tuned row is scored on every row, like the rows it competes with."""
    from .. import study as optuna_study

    arch = architecture(source.model)
    made_by = tracking.get_run(source.model_run).data.tags  # the source's stage, strategy and seed
    tuned = made_by.get("strategy") or made_by.get("stage", "model")
    name = optuna_study.study_name(cfg, arch, data.split_key, model=tuned)
    url = optuna_study.storage_url(cfg.tune.storage, tracking.setup(None))
    sections = {"train": asdict(cfg.train), "tune": asdict(cfg.tune), "study": name}
    upstream = [source.model_run, *(other.model_run for _, other in other_folds)]
    key, reuse = reusable("tune", sections, data.split_key, upstream, force)
    if reuse:
        say(f"tune: reusing finished run {reuse} (same config, data, input model and code; --force re-runs)")
        return stage_output(reuse)
    device = resolve_device(cfg.train.device)
    metric = cfg.tune.metric
    untuned_name = made_by.get("strategy", "the untuned model")
    if getattr(source.model, "reg2cls_start", None) is None:
        raise UserError(f"{untuned_name} (run {source.model_run}) records no starting weights to retrain from; tune "
                        "a classifier that head_swap, slim or tune logged (--from-run)")
    recipe = optuna_study.recipe(cfg, made_by, data, device)
    if not recipe.phases:
        return _nothing_to_tune(cfg, data, source, key, untuned_name)
    study = optuna_study.open_study(url, name, cfg.tune.metric)  # refuses a mismatched study before any run
    optuna_study.label(study, cfg, tuned, tracking.active_run_id())  # the convert run, when under one
    train_seed = int(made_by.get("seed", cfg.seed))
    with tracking.start("tune", "tune", tags={"stage_key": key, "source_run": source.model_run, **split_tags(data),
                                              "seed": str(train_seed), "optuna_study": name,
                                              "optuna_storage": _safe_url(url)}) as run_id:
        log_run_inputs(cfg, data)
        untuned = optuna_study.untuned_params(source.model, cfg, data)
        space, widened = optuna_study.holding(optuna_study.search_space(cfg), untuned)
        tracking.log_params({f"untuned.{k}": v for k, v in untuned.items()})
        before, _ = optuna_study.counted(study)
        first_new = len(study.get_trials(deepcopy=False))
        if optuna_study.enqueue_untuned(study, untuned) and widened:  # counted among this run's n_trials
            say("tune: trial 0 is the untuned configuration; the search space widened to hold it: "
                + ", ".join(widened))
        job = optuna_study.Job(cfg, data, arch, start_weights(source.model), tracking.setup(None), run_id, url, name,
                               target=before + cfg.tune.n_trials, timeout=cfg.tune.timeout or None,
                               seed=cfg.seed + before, recipe=recipe, train_seed=train_seed, space=space)
        workers = cfg.tune.workers or jobs.count(cfg.train.jobs)  # 0: as many as --jobs
        say(f"tune: study '{name}' in {_safe_url(url)}: {before} trials so far, adding {cfg.tune.n_trials} "
            f"with {workers} worker(s), up to {job.epochs} epochs each, every one with seed {train_seed}")
        try:
            optuna_study.run_workers(job, workers, say)
        finally:  # a worker that died mid-trial (its run already ended): its trial too, not left RUNNING
            with contextlib.suppress(Exception):  # best effort: never hide why the workers stopped
                optuna_study.fail_abandoned_trials(study)
        optuna_study.end_orphaned_runs(study)
        _check_trials(study, name, first_new, cfg.tune.timeout)
        best = study.best_trial
        model = tracking.load_run_model(best.user_attrs["mlflow_run_id"]).to(device)
        gain, noise = optuna_study.improvement(
            data.val.c.numpy(), optuna_study.own_outputs(model, data.val.x, device, data.n_classes),
            optuna_study.own_outputs(source.model, data.val.x, device, data.n_classes), metric, seed=cfg.seed)
        untuned_value = optuna_study.val_values(source.model, data, device)[metric]
        better = optuna_study.keeps(gain, noise)
        tracking.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
        tracking.log_metrics({"best/" + metric: best.value, "untuned/" + metric: untuned_value,
                              "best/gain": gain, "best/gain_noise": noise})
        tracking.set_tags({"best_trial_run": best.user_attrs["mlflow_run_id"],
                           "tuned": "better" if better else "no_better"})
        for fig_name, fig in optuna_study.figures(study).items():
            tracking.log_figure(fig, fig_name)
        if not better:
            stands_for(source.model_run)  # the stage's output is the untuned model: no copy of it is logged here
        else:
            stands_for(run_id)  # the best trial's model, logged again here with its rule and metrics
            trial = tracking.get_run(best.user_attrs["mlflow_run_id"])
            trial_seconds = trial.data.metrics.get("cost/train_seconds", float("nan"))
            log_classifier(model, data, device, trial_seconds, 0, cfg.seed)  # its rule fitted, evaluated once, here
            # side by side in the workers; each fold's chosen model travels as its architecture and starting
            # weights, and is trained by its own recipe and seed
            tasks = []
            for fold_data, fold_source in other_folds:
                fold_made_by = tracking.get_run(fold_source.model_run).data.tags
                tasks.append((cfg, best.params, optuna_study.recipe(cfg, fold_made_by, fold_data, device),
                              int(fold_made_by.get("seed", cfg.seed)), fold_data,
                              (architecture(fold_source.model), start_weights(fold_source.model)),
                              fold_source.model_run, run_id))
            jobs.run(_refit, tasks)
    # which figures these are: the leaderboard shows another one for the same untuned model
    rows = "the" if data.fold is None else f"fold {data.fold}'s"
    scope = f"{rows} {len(data.val)} validation rows, seed {train_seed}, each model's own decision (no fitted rule)"
    if not better:
        say(f"tune: no trial beat the untuned {untuned_name} by more than the noise: best trial {best.number} "
            f"{metric} {best.value:.4f}, untuned {untuned_value:.4f}, gain {gain:+.4f} within its paired bootstrap "
            f"standard error {noise:.4f} (on {scope}; the leaderboard shows the mean over folds and seeds under "
            "a fitted rule): the tune stage keeps the untuned model, no tuned row"
            + (", no refits on the other folds" if other_folds else ""))
        return StageResult(run_id, source.model, source.model_run)
    settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    say(f"tune: best trial {best.number} {metric} {best.value:.4f} beats the untuned {untuned_name} "
        f"({untuned_value:.4f}) by {gain:+.4f}, more than its paired bootstrap standard error {noise:.4f}")
    detail(f"tune: trial {best.number}'s settings {settings}; both scores on {scope}")
    return StageResult(run_id, model, run_id)


def _check_trials(study, name: str, first_new: int, timeout: float) -> None:
    """Log how this call's trials ended, and refuse a study left with nothing to choose from."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)[first_new:]]  # this run's trials
    tracking.log_metrics({f"trials/{s.lower()}": states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")})
    # every trial of this call pruned: each was below the median of the study's earlier ones, so the study's
    # best (trial 0, the untuned configuration, at least) still decides below; only an empty study cannot
    held = [t.state.name for t in study.get_trials(deepcopy=False)]  # the whole study's, earlier calls included
    if "COMPLETE" not in states and not (states and set(states) == {"PRUNED"} and "COMPLETE" in held):
        if "FAIL" in states:
            raise RuntimeError(f"every trial this run started in study '{name}' failed or was pruned; "
                               "the first error is logged above")
        if not states:
            raise UserError(f"no trial started in study '{name}' within --timeout {timeout:g} s; give it more time")
        raise UserError(f"no trial this run started in study '{name}' completed (all pruned); "
                        "run more trials or use --pruner none")


def _nothing_to_tune(cfg: Config, data: Prepared, source: StageResult, key: str, untuned_name: str) -> StageResult:
    """The tune stage of a source that trains nothing (threshold): no configuration changes it, so no study;
    its run stands for the source (tuned=no_better), with the source's value as both untuned and best."""
    from ..study import val_values

    value = val_values(source.model, data, resolve_device(cfg.train.device))[cfg.tune.metric]
    with tracking.start("tune", "tune", tags={"stage_key": key, "source_run": source.model_run, **split_tags(data),
                                              "tuned": "no_better",
                                              "tune_skipped": f"{untuned_name} trains nothing"}) as run_id:
        log_run_inputs(cfg, data)
        tracking.log_metrics({"best/" + cfg.tune.metric: value, "untuned/" + cfg.tune.metric: value})
        stands_for(source.model_run)
    say(f"tune: skipped: {untuned_name} trains nothing, so no configuration can change it (no study, no tuned row)")
    return StageResult(run_id, source.model, source.model_run)


def start_weights(model: nn.Module) -> dict:
    """The weights a trial of `model` retrains from: its start (model.mark_start), on the CPU, as a spawned
    worker receives them."""
    return {k: v.detach().cpu().clone() for k, v in model.reg2cls_start.items()}


def _refit(cfg: Config, params: dict[str, float], recipe, train_seed: int, data: Prepared, source: tuple[dict, dict],
           source_run: str, parent: str) -> None:
    """The best configuration trained on another fold's split, from the start of that fold's chosen model
    (`source`: its architecture and starting weights, run `source_run`) by that model's `recipe` and seed, as one
    run nested under the tune run `parent`: here, or in a worker process (jobs.run)."""
    from ..study import train_config

    with tracking.start(strategy_run_name("tuned", data), "tune", strategy="tuned", parent=parent,
                        tags={**split_tags(data), "seed": str(train_seed), "source_run": source_run}):
        tracking.log_params({**cfg.flat(), **{f"best.{k}": v for k, v in params.items()}})
        model = tracking.rebuild(*source)
        hists = train_config(model, params, data, cfg, train_seed, recipe)
        flag_training(hists, random_start=False)
        values = log_classifier(model, data, resolve_device(cfg.train.device), sum(h.seconds for h in hists),
                                sum(h.epochs for h in hists) + 1, cfg.seed)
    detail(f"{where('tune', data)}: best configuration retrained, validation macro-F1 {values['val/f1_macro']:.3f}")


def _safe_url(url: str) -> str:
    """The storage URL without its password, for tags and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
