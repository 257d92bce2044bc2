"""tune: an Optuna study over dropout, learning rate and weight decay (the study itself: study.py); cross-fitted,
one study per outer fold (`tune_folds`)."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

from torch import nn

from .. import backend, checkpoint, jobs, tracking
from ..config import Config, UserError
from ..data import Prepared
from ..model import architecture, start_of
from ..strategies import trains
from ..reuse import reusable
from ..train import resolve_device
from .common import (StageResult, detail, log_classifier, log_run_inputs, run_name, say, split_tags, stage_output,
                     stands_for, where)


def tune(cfg: Config, data: Prepared, source: StageResult, force: bool = False, parent: str | None = None,
         workers: int = 0, procedure: bool = False) -> StageResult:
    """Optuna over head and hidden dropout, learning rate and weight decay for the architecture of
    `source.model`, every trial retraining it from its start (the weights its own training started from:
    the head-swapped regressor, or a slim variant's pruned weights) by its own recipe (study.recipe) and seed,
    on `data`'s validation rows only. A new study's trial 0 is the untuned configuration: the untuned model trained
    again. Unless `force`, a finished tune stage with the same key is reused; with `force` (the `tune` command:
    each call adds trials) this call adds `tune.n_trials` trials to the study. A source that trains nothing
    (threshold) is kept as it is. `workers`: the study's local workers (0: `tune.workers`); `parent`: the run to
    nest under (else the active run).

    The untuned source model competes: unless the best trial beats it on the validation rows by more than
    their noise (study.improvement, study.keeps), the stage run is tagged `tuned=no_better` and stands for the
    source model (tag `model_run`). Otherwise (`tuned=better`) the stage run gets the best trial's params, value
    and model (kept from that trial, not retrained), with its decision rule fitted and its metrics logged here.
    `procedure` (one fold of `tune_folds`): the run logs the model it stands for either way, the untuned one
    included, so that the fold's run is its part of the tuned row: the row of the tuning procedure."""
    made_by, tuned, name, url = _study_of(cfg, data, source, procedure)
    sections = {"train": asdict(cfg.train), "tune": asdict(cfg.tune), "study": name, "procedure": procedure}
    key, reuse = reusable("tune", sections, data.split_key, [source.model_run], force)
    if reuse:
        say(f"{where('tune', data)}: reusing finished run {reuse} (same config, data, input model and code; "
            "--force re-runs)")
        return stage_output(reuse)
    untuned_name = made_by.get("strategy", "the untuned model")
    if start_of(source.model) is None:
        raise UserError(f"{untuned_name} (run {source.model_run}) records no starting weights to retrain from; tune "
                        "a classifier that head_swap, slim or tune logged (--from-run)")
    from .. import study as optuna_study

    recipe = optuna_study.recipe(cfg, made_by, data, resolve_device(cfg.train.device))
    train_seed = int(made_by.get("seed", cfg.seed))
    tags = {"stage_key": key, "source_run": source.model_run, **split_tags(data), "seed": str(train_seed)}
    if not recipe.phases:
        return _nothing_to_tune(cfg, data, source, tags, untuned_name, parent, procedure)
    study = optuna_study.open_study(url, name, cfg.tune.metric)  # refuses a mismatched study before any run
    optuna_study.label(study, cfg, tuned, _convert_run(parent) if parent else tracking.active_run_id())
    with tracking.start(run_name("tune", data) if procedure else "tune", "tune", parent=parent,
                        tags={**tags, "optuna_study": name,
                              "optuna_storage": _safe_url(url)}) as run_id:
        log_run_inputs(cfg, data)
        best = _search(cfg, data, source, study, Search(name, url, run_id, recipe, train_seed, workers, procedure))
        choice = _judge(cfg, data, source, best)
        _log_choice(cfg, data, source, study, best, choice, procedure)
    _say_choice(cfg, data, best, choice, untuned_name, train_seed, procedure)
    if choice.better or procedure:
        return StageResult(run_id, choice.model if choice.better else source.model, run_id)
    return StageResult(run_id, source.model, source.model_run)


def _study_of(cfg: Config, data: Prepared, source: StageResult, procedure: bool) -> tuple[dict, str, str, str]:
    """(the source run's tags, what is tuned, the study's name, its storage URL): the default name's hash covers
    the split key, and a `tune.study_name` gets `-fold<i>` for a fold of the procedure, so each outer fold has a
    study of its own."""
    from .. import study as optuna_study

    made_by = tracking.get_run(source.model_run).data.tags  # the source's stage, strategy and seed
    tuned = made_by.get("strategy") or made_by.get("stage", "model")
    name = optuna_study.study_name(cfg, architecture(source.model), data.split_key, model=tuned)
    if procedure and cfg.tune.study_name:
        name += f"-fold{data.fold}"
    return made_by, tuned, name, optuna_study.storage_url(cfg.tune.storage, backend.setup(None))


def _convert_run(parent: str | None) -> str | None:
    """The convert run above a tune stage nested under `parent` (a cross-fitted tune run), for the study's label."""
    return parent and tracking.get_run(parent).data.tags.get("mlflow.parentRunId")


@dataclass
class Search:
    """Where one tune stage's trials go: its study (name, storage URL), the stage run they nest under, how each
    trial trains (the source's recipe and seed) and how many local workers run them (0: tune.workers)."""
    study_name: str
    url: str
    stage_run: str
    recipe: object
    train_seed: int
    workers: int
    quiet: bool  # a fold of tune_folds: its lines under --verbose only (tune_folds says what the folds kept)


@dataclass
class Choice:
    """The keep decision on the validation rows: the best trial's model, its gain over the untuned model and that
    gain's paired bootstrap standard error (study.improvement), the untuned model's objective, and the verdict."""
    model: nn.Module
    gain: float
    noise: float
    untuned_value: float
    better: bool


def _search(cfg: Config, data: Prepared, source: StageResult, study, search: Search):
    """Add `tune.n_trials` trials to `study`, trial 0 the untuned configuration in a new study, and return its
    best trial; a worker that died mid-trial has its trial failed, not left RUNNING."""
    from .. import study as optuna_study

    untuned = optuna_study.untuned_params(source.model, cfg, data)
    space, widened = optuna_study.holding(optuna_study.search_space(cfg), untuned)
    tracking.log_params({f"untuned.{k}": v for k, v in untuned.items()})
    before, _ = optuna_study.counted(study)
    first_new = len(study.get_trials(deepcopy=False))
    if optuna_study.enqueue_untuned(study, untuned) and widened:  # counted among this run's n_trials
        (detail if search.quiet else say)(f"{where('tune', data)}: trial 0 is the untuned configuration; the search "
                                          "space widened to hold it: " + ", ".join(widened))
    job = optuna_study.Job(cfg, data, architecture(source.model), start_weights(source.model), backend.setup(None),
                           search.stage_run, search.url, search.study_name, target=before + cfg.tune.n_trials,
                           timeout=cfg.tune.timeout or None, seed=cfg.seed + before, recipe=search.recipe,
                           train_seed=search.train_seed, space=space)
    workers = search.workers or cfg.tune.workers or jobs.count(cfg.train.jobs)  # 0: as many as --jobs
    (detail if search.quiet else say)(
        f"{where('tune', data)}: study '{search.study_name}' in {_safe_url(search.url)}: {before} trials so far, "
        f"adding {cfg.tune.n_trials} with {workers} worker(s), up to {job.epochs} epochs each, every one with seed "
        f"{search.train_seed}")
    try:
        optuna_study.run_workers(job, workers, say)
    finally:  # a worker that died mid-trial (its run already ended): its trial too, not left RUNNING
        with contextlib.suppress(Exception):  # best effort: never hide why the workers stopped
            optuna_study.fail_abandoned_trials(study)
    optuna_study.end_orphaned_runs(study)
    _check_trials(study, search.study_name, first_new, cfg.tune.timeout)
    return study.best_trial


def _judge(cfg: Config, data: Prepared, source: StageResult, best) -> Choice:
    """Whether the best trial beats the untuned model on the validation rows by more than their noise, each model
    by its own decision (study.own_outputs)."""
    from .. import study as optuna_study

    device = resolve_device(cfg.train.device)
    model = checkpoint.load_run_model(best.user_attrs["mlflow_run_id"]).to(device)
    gain, noise = optuna_study.improvement(
        data.val.c.numpy(), optuna_study.own_outputs(model, data.val.x, device, data.n_classes),
        optuna_study.own_outputs(source.model, data.val.x, device, data.n_classes), cfg.tune.metric, seed=cfg.seed)
    untuned_value = optuna_study.val_values(source.model, data, device)[cfg.tune.metric]
    return Choice(model, gain, noise, untuned_value, optuna_study.keeps(gain, noise))


def _log_choice(cfg: Config, data: Prepared, source: StageResult, study, best, choice: Choice,
                procedure: bool) -> None:
    """On the active tune run: the best trial, both objectives, the gain and its noise, the study's figures (not for
    a fold of the procedure), the verdict (tag `tuned`) and the model the run stands for, logged here with its rule
    when kept (or, for a fold of the procedure, the untuned one)."""
    from .. import study as optuna_study

    metric = cfg.tune.metric
    tracking.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
    tracking.log_metrics({"best/" + metric: best.value, "untuned/" + metric: choice.untuned_value,
                          "best/gain": choice.gain, "best/gain_noise": choice.noise})
    tracking.set_tags({"best_trial_run": best.user_attrs["mlflow_run_id"],
                       "tuned": "better" if choice.better else "no_better"})
    # a fold of the procedure draws none: five studies' figures cost seconds of the convert's budget, and
    # optuna-dashboard draws every study from its storage
    for fig_name, fig in ({} if procedure else optuna_study.figures(study)).items():
        tracking.log_figure(fig, fig_name)
    device = resolve_device(cfg.train.device)
    if choice.better:
        stands_for(tracking.active_run_id())  # the best trial's model, logged again here with its rule and metrics
        trial = tracking.get_run(best.user_attrs["mlflow_run_id"])
        log_classifier(choice.model, data, device, trial.data.metrics.get("cost/train_seconds", float("nan")), 0,
                       cfg.seed)  # its rule fitted, evaluated once, here
    elif procedure:
        _log_untuned(cfg, data, source)
    else:
        stands_for(source.model_run)  # the stage's output is the untuned model: no copy of it is logged here


def _log_untuned(cfg: Config, data: Prepared, source: StageResult) -> None:
    """A fold of the tuning procedure that kept its untuned model: that model logged on the active tune run as
    its own run logged it (the same rule: fitted on the same rows with the same seed, or threshold's identity),
    so that the fold's run holds its part of the tuned row."""
    made_by = tracking.get_run(source.model_run)
    seconds = made_by.data.metrics.get("cost/train_seconds", 0.0)
    device = resolve_device(cfg.train.device)
    stands_for(tracking.active_run_id())
    log_classifier(source.model.to(device), data, device, seconds, 0, cfg.seed,
                   identity_rule=not trains(made_by.data.tags.get("strategy", "")))


def _say_choice(cfg: Config, data: Prepared, best, choice: Choice, untuned_name: str, train_seed: int,
                quiet: bool) -> None:
    """The keep decision, on the validation rows it was made on; `quiet` (a fold of tune_folds, which says what the
    folds kept): under --verbose only."""
    metric, said = cfg.tune.metric, detail if quiet else say
    # which figures these are: the leaderboard shows another one for the same untuned model
    rows = "the" if data.fold is None else f"fold {data.fold}'s"
    scope = f"{rows} {len(data.val)} validation rows, seed {train_seed}, each model's own decision (no fitted rule)"
    if not choice.better:
        said(f"{where('tune', data)}: no trial beat the untuned {untuned_name} by more than the noise: best trial "
             f"{best.number} {metric} {best.value:.4f}, untuned {choice.untuned_value:.4f}, gain {choice.gain:+.4f} "
             f"within its paired bootstrap standard error {choice.noise:.4f} (on {scope}; the leaderboard shows the "
             "mean over folds and seeds under a fitted rule): the tune stage keeps the untuned model"
             + ("" if quiet else ", no tuned row"))
        return
    settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    said(f"{where('tune', data)}: best trial {best.number} {metric} {best.value:.4f} beats the untuned "
         f"{untuned_name} ({choice.untuned_value:.4f}) by {choice.gain:+.4f}, more than its paired bootstrap "
         f"standard error {choice.noise:.4f}")
    detail(f"{where('tune', data)}: trial {best.number}'s settings {settings}; both scores on {scope}")


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


def _nothing_to_tune(cfg: Config, data: Prepared, source: StageResult, tags: dict[str, str], untuned_name: str,
                     parent: str | None, procedure: bool) -> StageResult:
    """The tune stage of a source that trains nothing (threshold): no configuration changes it, so no study;
    its run stands for the source (tuned=no_better), with the source's value as both untuned and best (for a fold
    of the procedure, the source logged on it as its own)."""
    from ..study import val_values

    value = val_values(source.model, data, resolve_device(cfg.train.device))[cfg.tune.metric]
    skipped = {"tuned": "no_better", "tune_skipped": f"{untuned_name} trains nothing"}
    name = run_name("tune", data) if procedure else "tune"  # a fold of tune_folds: fold_<i>
    with tracking.start(name, "tune", parent=parent, tags={**tags, **skipped}) as run_id:
        log_run_inputs(cfg, data)
        tracking.log_metrics({"best/" + cfg.tune.metric: value, "untuned/" + cfg.tune.metric: value})
        if procedure:
            _log_untuned(cfg, data, source)
        else:
            stands_for(source.model_run)
    (detail if procedure else say)(f"{where('tune', data)}: skipped: {untuned_name} trains nothing, so no "
                                   "configuration can change it (no study, no tuned row)")
    return StageResult(run_id, source.model, run_id if procedure else source.model_run)


def start_weights(model: nn.Module) -> dict:
    """The weights a trial of `model` retrains from: its start (model.mark_start), on the CPU, as a spawned
    worker receives them."""
    return {k: v.detach().cpu().clone() for k, v in start_of(model).items()}


def tune_folds(cfg: Config, splits: list[Prepared], sources: list[StageResult], force: bool = False) -> StageResult:
    """Cross-fitted tuning, nested: every outer fold its own tune stage (`tune` -> `fold_<i>`) from that fold's
    chosen model (`sources`), with its own study (its name's hash covers the fold's split key), searched and
    judged (study.keeps) on that fold's validation rows only: another fold's validation rows may be this fold's
    test rows. Each fold's run logs the model its procedure kept, the untuned one where no trial beat it by more
    than the noise, so the tuned row, pooled over folds, scores the tuning procedure. Folds run side by side in
    the command's workers, each study with one worker (its sampler sees every earlier trial of the study); with
    no workers, one after the other here, each with `tune.workers`.

    The stage run lists the folds' runs (tag `fold_runs`), is tagged `tuned=better` when any fold kept a tuned
    model (else no tuned row: it would repeat the untuned choices) and stands for the first fold's model."""
    studies = [_study_of(cfg, data, source, True)[2:] for data, source in zip(splits, sources)]
    with tracking.start("tune", "tune", tags={"folds": str(len(splits))}) as run_id:
        workers = 1 if jobs.pool_size() > 1 else 0  # inside a pool worker: no processes of its own
        tasks = [(cfg, data, source.run_id, source.model_run, force, run_id, workers)
                 for data, source in zip(splits, sources)]
        # a study's cost follows its source's training: each trial retrains it by its recipe
        costs = [tracking.get_run(s.model_run).data.metrics.get("cost/train_seconds", 0.0) for s in sources]
        try:
            fold_runs = [tracking.get_run(r) for r in jobs.run(_fold_tune, tasks, costs)]
        except BaseException:  # a fold's worker that died mid-trial: its trials failed here, not left RUNNING
            _end_abandoned(studies)
            raise
        kept = [r.data.tags.get("tuned") == "better" for r in fold_runs]
        skipped = [r.data.tags["tune_skipped"] for r in fold_runs if "tune_skipped" in r.data.tags]
        tracking.set_tags({"fold_runs": ",".join(r.info.run_id for r in fold_runs),
                           "tuned": "better" if any(kept) else "no_better",
                           **({"tune_skipped": skipped[0]} if len(skipped) == len(fold_runs) else {})})
        first = fold_runs[0].data.tags["model_run"]
        stands_for(first)
        said = [("tuned" if k else f"untuned {tracking.get_run(s.model_run).data.tags.get('strategy', '?')}")
                for k, s in zip(kept, sources)]
        say(f"tune: kept on each fold's validation rows ({cfg.tune.n_trials} trials a fold): {', '.join(said)}"
            + ("" if any(kept) else ": no tuned row"))
    return StageResult(run_id, checkpoint.load_run_model(first), first)


def _fold_tune(cfg: Config, data: Prepared, source_run: str, model_run: str, force: bool, parent: str,
               workers: int) -> str:
    """One fold's tune stage of `tune_folds`, nested under its run `parent`, from the fold's chosen model (the
    run `model_run`, read back from the store): here, or in a worker process (jobs.run)."""
    source = StageResult(source_run, checkpoint.load_run_model(model_run), model_run)
    return tune(cfg, data, source, force=force, parent=parent, workers=workers, procedure=True).run_id


def _end_abandoned(studies: list[tuple[str, str]]) -> None:
    """Each fold's study (name, storage URL): trials whose worker died failed and their runs ended, best effort
    (a fold that trains nothing has no study)."""
    import optuna

    from .. import study as optuna_study

    for name, url in studies:
        with contextlib.suppress(Exception), optuna_study.quiet_optuna():
            study = optuna.load_study(study_name=name, storage=optuna_study.make_storage(url))
            optuna_study.fail_abandoned_trials(study)
            optuna_study.end_orphaned_runs(study)


def _safe_url(url: str) -> str:
    """The storage URL without its password, for tags and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
