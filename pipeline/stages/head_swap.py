"""head_swap: one nested run per conversion strategy, all on the same splits."""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from dataclasses import asdict

from torch import nn

from .. import checkpoint, jobs, selection, tracking
from ..config import Config, UserError
from ..data import Prepared
from ..model import mark_start, portable
from ..reuse import reusable
from ..strategies import STRATEGY
from ..surgery import Head, find_head, freeze_backbone, unfreeze
from ..train import resolve_device, seeded
from .common import (StageResult, contained, detail, fit_classifier, flag_training, log_classifier, log_run_inputs,
                     run_name, say, seeds_of, split_tags, stage_output, stands_for, strategy_run_name, warn,
                     where)
from .heads import check_convertible, classifier_from, strategies_for


def head_swap(cfg: Config, data: Prepared, baseline: StageResult, force: bool = False,
              started: dict[tuple[str, int], Future] | None = None) -> StageResult:
    """One nested run per strategy, all on the same splits, converting `baseline`'s regressor; the
    output is the strategy best on validation macro-F1, by its mean over seeds (`threshold`, the bar, included),
    as its best seed's classifier (selection.py). `started`: runs begun before this stage's run opened, by
    (strategy, seed), which it adopts: `start_early`'s (while the baseline trained) or `queue_strategies`'s
    (cross-fitted)."""
    key, reuse = _reusable(cfg, data, baseline, force)
    if reuse and not started:  # runs queued for this fold (queue_strategies found nothing to reuse) are collected
        say(f"head_swap: reusing finished run {reuse} (same config, data, baseline and code; --force re-runs)")
        return stage_output(reuse)
    device = resolve_device(cfg.train.device)
    regressor = baseline.model.to(device)
    head = find_head(regressor, data.n_features, cfg.user_model.head or None)
    if head.activation:
        warn(f"head_swap: output activation '{head.activation}' "
             f"({type(regressor.get_submodule(head.activation)).__name__}) removed: the new head must emit logits")
    check_convertible(cfg, data, regressor, head)
    skipped = [s for s in cfg.head_swap.strategies if s not in strategies_for(cfg, data)]
    if skipped and data.fold in (None, 0):  # said once, not once a fold
        say(f"head_swap: {', '.join(skipped)} skipped: with two classes they are warm_start and finetune "
            "under other names")
    rows = []  # the trusted runs: a strategy's seeds, each with its validation values
    with tracking.start(run_name("head_swap", data), "head_swap",
                        tags={"stage_key": key, "baseline_run": baseline.run_id, **split_tags(data)}) as run_id:
        log_run_inputs(cfg, data)
        tracking.log_params({"head.name": head.name, "head.activation": head.activation or "none"})
        tasks = _tasks(cfg, data, portable(regressor), head, run_id, baseline.run_id)
        started = started or {}
        late = _longest_first([t for t in tasks if (t[0], t[1].seed) not in started])
        results = dict(zip([(t[0], t[1].seed) for t in late], jobs.run(_strategy_run, late)))
        for strategy, run_cfg, *_ in tasks:
            if (strategy, run_cfg.seed) in started:
                child_id, values, flag = jobs.result(started[strategy, run_cfg.seed])
                tracking.adopt(child_id, run_id, {"baseline_run": baseline.run_id})
            else:
                child_id, values, flag = results[strategy, run_cfg.seed]
            label = f"{where('head_swap', data)}/{strategy}{f' seed {run_cfg.seed}' if cfg.seeds > 1 else ''}"
            if values is None:  # this strategy cannot handle the model: the others go on
                warn(f"{label} FAILED ({flag}); run {child_id}")
                continue
            if not flag:  # a diverged, collapsed or untrained run is logged, never chosen
                rows.append({"strategy": strategy, "run_id": child_id, **values})
            detail(f"{label}: validation macro-F1 {values['val/f1_macro']:.3f}, accuracy {values['val/accuracy']:.3f}, "
                   f"log loss {values['val/log_loss']:.3f}" + (f" ({flag})" if flag else ""))
        best_run = _choose(rows, cfg.seeds, data)
    if best_run is None:
        raise UserError(f"{where('head_swap', data)}: no strategy gave a classifier that can be trusted (each failed, "
                        "diverged or stayed untrained; see the lines above); try other --strategies or more epochs")
    return StageResult(run_id, checkpoint.load_run_model(best_run), best_run)


def _reusable(cfg: Config, data: Prepared, baseline: StageResult, force: bool) -> tuple[str, str | None]:
    """The stage's reuse key on this split, and a finished run with it (reuse.reusable)."""
    sections = {"train": asdict(cfg.train), "head_swap": asdict(cfg.head_swap), "head": cfg.user_model.head,
                "seeds": cfg.seeds}
    return reusable("head_swap", sections, data.split_key, [baseline.run_id], force)


def _tasks(cfg: Config, data: Prepared, regressor_state: tuple[dict, dict], head: Head, parent: str,
           baseline_run: str | None) -> list[tuple]:
    """`_strategy_run`'s arguments for every strategy and seed, in the configured order."""
    return [(strategy, dataclasses.replace(cfg, seed=seed), data, regressor_state, head, parent, baseline_run)
            for strategy in strategies_for(cfg, data) for seed in seeds_of(cfg, STRATEGY[strategy].trains)]


def _longest_first(tasks: list[tuple]) -> list[tuple]:
    """The order the workers take `_tasks` in (STRATEGY's longest_first): a long run taken last leaves the others
    idle."""
    return sorted(tasks, key=lambda t: STRATEGY[t[0]].longest_first)


def queue_strategies(cfg: Config, splits: list[Prepared], bases: list[StageResult], parent: str,
                     force: bool = False) -> list[dict[tuple[str, int], Future]]:
    """Cross-fitted, with workers: every fold's strategy runs queued at once, each fold's longest first, nested under
    `parent` (the cross-fitted head_swap run) until that fold's `head_swap` adopts them (`started`). A fold's last
    runs and its choice then no longer leave a worker idle before the next fold's runs start. Every fold is checked
    (check_convertible) before any run is queued; a fold whose stage will be reused queues none. Without workers,
    none: each fold's head_swap runs its own, one fold after the other."""
    if jobs.pool_size() <= 1:
        return [{} for _ in splits]
    device = resolve_device(cfg.train.device)
    tasks = []
    for data, base in zip(splits, bases):
        if _reusable(cfg, data, base, force)[1]:
            tasks.append([])
            continue
        regressor = base.model.to(device)
        head = find_head(regressor, data.n_features, cfg.user_model.head or None)
        check_convertible(cfg, data, regressor, head)
        tasks.append(_longest_first(_tasks(cfg, data, portable(regressor), head, parent, base.run_id)))
    return [{(t[0], t[1].seed): jobs.submit(_strategy_run, *t) for t in fold} for fold in tasks]


def _choose(rows: list[dict], seeds: int, data: Prepared) -> str | None:
    """The run that stands for the stage (None without a trusted run): the strategy with the best mean over
    seeds on validation, by its best seed's run (selection.py)."""
    if not rows:
        return None
    means = {m["strategy"]: m for m in selection.by_strategy(rows)}
    pick = selection.best(list(means.values()))
    best_run = selection.best_run([r for r in rows if r["strategy"] == pick], score=lambda r: r["val/f1_macro"])
    stands_for(best_run["run_id"])
    if data.fold is None:  # cross-fitted, convert says which strategy the folds chose together
        say(f"head_swap: best on validation {pick} (macro-F1 {means[pick]['val/f1_macro']:.3f}"
            + (f", the mean of {seeds} seeds)" if seeds > 1 else ")"))
    return best_run["run_id"]


def start_early(cfg: Config, data: Prepared, regressor: nn.Module, parent: str) -> dict[tuple[str, int], Future]:
    """The runs of the strategies that reset every weight (scratch: they need the regressor's architecture only),
    started now in the workers, from the untrained `regressor`, so that they train while the baseline trains on
    this process's core (which else leaves a core idle). Each run nests under `parent` (convert's run) until
    `head_swap` adopts it; its numbers are those it would have there."""
    head = find_head(regressor, data.n_features, cfg.user_model.head or None)
    return {(t[0], t[1].seed): jobs.submit(_strategy_run, *t)
            for t in _tasks(cfg, data, portable(regressor), head, parent, None) if STRATEGY[t[0]].reset}


def _strategy_run(strategy: str, cfg: Config, data: Prepared, regressor_state: tuple[dict, dict], head: Head,
                  parent: str, baseline_run: str | None = None) -> tuple[str, dict, str | None]:
    """One strategy (and seed) as a run nested under the head_swap run `parent` (or convert's, for `start_early`,
    which knows no baseline run yet): here, or in a worker process (jobs.run). Returns the run's id, its metrics
    and its training flag; when it failed (`contained`), the id, None and the failure's one line."""
    regressor = checkpoint.rebuild(*regressor_state)
    device = resolve_device(cfg.train.device)
    with contained() as outcome, tracking.start(strategy_run_name(strategy, data), "head_swap", strategy=strategy,
                                                parent=parent, tags={
            **({"baseline_run": baseline_run} if baseline_run else {}), **split_tags(data),
            "seed": str(cfg.seed)}) as child_id:
        outcome["run_id"] = child_id
        tracking.log_params({**cfg.flat(), "strategy": strategy})
        # the baseline run's weights are the regressor's: a start that kept them is not saved again
        shared = (baseline_run, regressor_state[1]) if baseline_run else None
        _, values, flag = _run_strategy(strategy, cfg, data, regressor.to(device), head, device, shared)
    if "failure" in outcome:
        return outcome["run_id"], None, outcome["failure"]
    return child_id, values, flag


def _run_strategy(strategy: str, cfg: Config, data: Prepared, regressor: nn.Module, head: Head,
                  device, shared: tuple[str, dict] | None = None) -> tuple[nn.Module, dict, str | None]:
    """Build and train the classifier of one strategy; returns it, its metrics and its training flag
    (`flag_training`: a run that cannot be trusted). `shared`: the baseline run and the weights it logged
    (model.mark_start's `shared_with`)."""
    t, s = cfg.train, STRATEGY[strategy]
    kind = s.head  # threshold: the warm-start head before any step
    with seeded(cfg.seed):  # the new head's initial weights
        model, scale = classifier_from(regressor, head, data, device, kind)
        if s.reset:  # same architecture, regression weights thrown away: the control
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    mark_start(model, shared)  # what a tuning trial of this model retrains from
    if scale is not None:
        tracking.log_params({f"{kind}.scale": round(scale, 6)})
    if not s.trains:  # threshold
        # no training: the regressor cut at the class edges is exactly the warm-start head before any
        # step, a deliverable classifier whose probabilities come from the scale fitted on validation
        return model, log_classifier(model, data, device, 0.0, 1, cfg.seed, identity_rule=True), None

    log = tracking.EpochLog()
    hists = []
    if s.probe:
        hists.append(fit_classifier(model, cfg, data, device, log, epochs=t.epochs, lr=t.lr,
                                    params=freeze_backbone(model, head.name)))
        unfreeze(model)
    if s.finetune:
        lr = t.lr * (cfg.head_swap.lp_ft_lr_factor if s.probe else 1.0)
        # lp_ft's fine-tune continues the probe's curve
        hists.append(fit_classifier(model, cfg, data, device, log, epochs=t.epochs, lr=lr,
                                    step=sum(h.epochs for h in hists)))
    log.flush()
    # warm_start's and cumulative_link's starting weights already are threshold; the other heads start random
    flag = flag_training(hists, random_start=s.random_start)
    seconds, steps = sum(h.seconds for h in hists), sum(h.epochs for h in hists)
    return model, log_classifier(model, data, device, seconds, steps + 1, cfg.seed), flag


