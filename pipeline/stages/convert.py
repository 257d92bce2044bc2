"""convert: every stage in order under one parent run; on small data, cross-fitted over outer folds."""
from __future__ import annotations

import time

import numpy as np
from torch import nn

from .. import checkpoint, checks, jobs, tracking
from ..config import Config, data_name
from ..data import Prepared
from ..model import portable
from ..strategies import STRATEGY
from ..train import batch_and_lr, resolve_device, seeded
from ..surgery import Head
from .baseline import baseline, baseline_key, new_regressor
from .common import StageResult, log_run_inputs, say, stage_output, stands_for, warn
from .compare import Comparison, compare
from .head_swap import head_swap, queue_strategies, start_early
from .reference import fit_reference
from .slim import queue_variants, slim
from .tune import tune, tune_folds


def convert(cfg: Config, splits: list[Prepared], brought: tuple[nn.Module, Head] | None,
            force: bool = False) -> Comparison:
    """baseline -> head_swap -> slim -> tune -> compare under one parent run, on `splits`: one split, or one
    per outer fold (cross-fitting: baseline, head_swap, slim and tune run on every fold, each fold choosing on its
    own validation rows, tune with a study of its own on each fold).
    Independent trainings run in the worker processes of `jobs.workers`, when the command opened them.
    `brought` is the user's model from `bring` (called before this parent run opens, so a model that does not
    fit leaves no run); `force` re-runs stages that could be reused."""
    data = splits[0]
    # cross-fitted, the estimate's timed epoch runs in a worker when there is one (not a brought model's: its class
    # may not unpickle there): a worker's first optimizer step finds torch's compiler imported by the fork server,
    # this process's would import it first, a second before any training starts. On one split this process
    # trains the baseline itself and imports it anyway: timed here, the baseline starts without waiting
    timed = jobs.submit(estimate, cfg, splits, None) if len(splits) > 1 and not brought else None
    with tracking.start("convert", "convert", tags={"split_key": data.split_key, "folds": str(len(splits))}) as run_id:
        log_run_inputs(cfg, data)
        # the reference needs no stage's output: with workers it is fitted in one while the baseline trains
        reference = jobs.submit(fit_reference, cfg, splits) if cfg.compare.reference else None
        guess = jobs.result(timed) if timed else estimate(cfg, splits, brought)
        if guess:
            say(guess)
        slimming = bool(cfg.slim.keep_ratios or cfg.slim.depth)
        if len(splits) == 1:
            early = {}
            # with workers, a core would idle while the baseline trains here: what head_swap can train without the
            # trained weights (scratch) takes it meanwhile. Not when the baseline is reused (nothing to wait for),
            # nor for a brought model (its own layers may hold weights that scratch's reset does not reach)
            if jobs.pool_size() > 1 and not brought and not baseline_key(cfg, data, force)[1]:
                early = start_early(cfg, data, new_regressor(cfg, data), run_id)
            base = baseline(cfg, data, brought, force=force)
            tracking.set_tags(checks.of_runs([tracking.get_run(base.run_id)]))  # the verdict repeats them first
            chosen = [head_swap(cfg, data, base, force=force, started=early)]
            stage_runs = {"baseline_run": base.run_id, "head_swap_run": chosen[0].run_id}
            if slimming:
                chosen = [slim(cfg, data, chosen[0], force=force)]
                stage_runs["slim_run"] = chosen[0].run_id
        else:
            chosen, stage_runs = _cross_fit(cfg, splits, brought, slimming, force)
        if not slimming:
            say("slim: skipped (slim.keep_ratios none and slim.depth false)")
        if cfg.tune.n_trials > 0:  # cross-fitted: one study a fold, searched and judged on its own rows
            tuned = (tune(cfg, data, chosen[0], force=force) if len(splits) == 1
                     else tune_folds(cfg, splits, chosen, force=force))
            stage_runs["tune_run"] = tuned.run_id
        tracking.set_tags(stage_runs)
        compared = compare(cfg, splits, run_id, reference)
        # renamed now that the outcome is known: the runs table then says which data and what won
        shipped = tracking.get_run(run_id).data.tags.get("champion", "?")
        tracking.set_tags({"mlflow.runName": f"{data_name(cfg.data.source)} → {shipped}"})
        return compared


def _cross_fit(cfg: Config, splits: list[Prepared], brought, slimming: bool,
               force: bool) -> tuple[list[StageResult], dict[str, str]]:
    """baseline, head_swap and slim on every fold, each nested as <stage> -> fold_<i> -> strategy. Nested: every
    fold continues from its own head-swap winner and its own slim recommendation, each chosen on that fold's
    validation rows only: another fold's validation rows may be this fold's test rows. Returns the chosen model
    of every fold (the first fold's run stands for each stage; tune continues from each) and the stage runs."""
    if brought and not cfg.user_model.retrain:
        warn("the brought model is reused in every fold, so rows it was trained on may sit in a test fold "
             "and flatter its scores; pass --retrain to train it on each fold's training rows")
    folds = {"folds": str(len(splits))}
    with tracking.start("baseline", "baseline", tags=folds) as baseline_run:
        # side by side in the workers, a brought model as its recipe and weights (model.portable)
        shipped = brought and (*portable(brought[0]), brought[1])
        bases = [stage_output(run) for run in jobs.run(_fold_baseline, [(cfg, data, shipped, force, baseline_run)
                                                                         for data in splits])]
        r2 = np.mean([tracking.get_run(b.run_id).data.metrics.get("val/r2", np.nan) for b in bases])
        say(f"baseline: validation R2 {r2:.3f} averaged over {len(splits)} folds")
        found = checks.of_runs([tracking.get_run(b.run_id) for b in bases])
        tracking.set_tags(found)
        checks.warn(found)
    tracking.set_tags(found)  # on the convert run too: the verdict repeats them first
    with tracking.start("head_swap", "head_swap", tags=folds) as head_swap_run:
        queued = queue_strategies(cfg, splits, bases, head_swap_run, force)  # every fold's runs, in the workers
        chosen = [head_swap(cfg, data, base, force=force, started=started)
                  for data, base, started in zip(splits, bases, queued)]
        stands_for(chosen[0].model_run)
        say(f"head_swap: best on each fold's validation rows: {_names(chosen)}")
    stage_runs = {"baseline_run": baseline_run, "head_swap_run": head_swap_run}
    if not slimming:
        return chosen, stage_runs
    with tracking.start("slim", "slim", tags=folds) as slim_run:
        queued = queue_variants(cfg, splits, chosen, slim_run, force)  # every fold's variants, in the workers
        chosen = [slim(cfg, data, source, force=force, started=started)
                  for data, source, started in zip(splits, chosen, queued)]
        stands_for(chosen[0].model_run)
        say(f"slim: recommended on each fold's validation rows: {_names(chosen)}")
    return chosen, {**stage_runs, "slim_run": slim_run}


def _names(results: list[StageResult]) -> str:
    """Which strategy or variant each fold's stage chose, e.g. `lp_ft, lp_ft, warm_start`."""
    return ", ".join(tracking.get_run(r.model_run).data.tags.get("strategy", "?") if r.model_run else "none"
                     for r in results)


def _fold_baseline(cfg: Config, data: Prepared, brought: tuple[dict, dict, Head] | None, force: bool,
                   parent: str) -> str:
    """One fold's baseline run, nested under the cross-fitted baseline run `parent`, from `brought` (the user's
    model as its recipe, weights and head) or the pipeline's MLP: here, or in a worker process (jobs.run)."""
    model = None
    if brought:
        arch, state, head = brought
        model = checkpoint.rebuild(arch, state)
    return baseline(cfg, data, brought and (model, head), force=force, parent=parent).run_id


RUN_OVERHEAD_S = 0.4  # logging a run: params, metrics, state/ and predictions (bench/bench_overhead.py: median ~0.35 s)


def estimate(cfg: Config, splits: list[Prepared], brought: tuple[nn.Module, Head] | None) -> str | None:
    """A rough estimate of the convert's duration, said up front: the training runs it will start (strategies,
    slim variants, trials, seeds, folds) at the time one epoch of the regressor takes here (measured on part of
    the training rows), spread over the worker processes, plus the logging of each run. Each run is counted to
    twice its patience (where early stopping often ends a run that converged) and, for the upper figure, to
    its last epoch. The reference, compare and start-up are left out. None when the model cannot be timed."""
    data, t = splits[0], cfg.train
    model = brought[0] if brought else new_regressor(cfg, data)
    batch, _ = batch_and_lr(t.batch_size, t.lr, len(data.train.x), t.max_steps_per_epoch, t.lr_scaling)
    try:
        with seeded(cfg.seed):  # the global RNG (dropout masks) as if nothing had been timed
            epoch = _epoch_seconds(model, data, batch, resolve_device(t.device))
    except Exception:  # a model that cannot train says so in its own run, where its failure is recorded
        return None
    trained = [STRATEGY[s] for s in cfg.head_swap.strategies if STRATEGY[s].trains]
    two_phases = any(s.probe and s.finetune for s in trained)  # lp_ft: a probe, then a fine-tune
    slim_variants = len(cfg.slim.keep_ratios) + (cfg.model.depth - 1 if cfg.slim.depth and not brought else 0)
    runs_and_epochs = [  # (runs, their epochs): per fold, tune's trials too (one study a fold)
        (len(splits), t.epochs if (not brought or cfg.user_model.retrain) else 0),
        (len(splits) * len(trained) * cfg.seeds, t.epochs * (1.5 if two_phases else 1)),
        (len(splits) * slim_variants * cfg.seeds * (2 if cfg.slim.distill else 1), cfg.slim.epochs),
        (cfg.tune.n_trials * len(splits), cfg.tune.epochs or t.epochs)]
    runs = sum(n for n, _ in runs_and_epochs)
    workers = max(1, min(jobs.count(t.jobs), 1 + len(trained)))

    def seconds(cap: float) -> float:
        epochs = sum(n * min(e, cap) for n, e in runs_and_epochs)
        return (epochs * epoch + runs * RUN_OVERHEAD_S) / workers

    likely, most = seconds(2 * t.patience + 10 if t.patience else float("inf")), seconds(float("inf"))
    return (f"estimate: about {_duration(likely)} (up to {_duration(most)}) for {runs} trainings on "
            f"{len(splits)} split(s) and {workers} process(es), from one timed epoch")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _epoch_seconds(model: nn.Module, data: Prepared, batch: int, device) -> float:
    """Seconds one training epoch of `model` takes here, validation included: two epochs of `train.fit` on a copy,
    on at most 20 batches of training rows, the second timed and scaled to the whole training split."""
    import copy

    from ..data import Split
    from ..train import fit

    rows = min(len(data.train.x), 20 * batch)
    part = Split(data.train.x[:rows], data.train.y[:rows], data.train.c[:rows])
    val = Split(data.val.x[:rows // 3 + 1], data.val.y[:rows // 3 + 1], data.val.c[:rows // 3 + 1])
    probe = copy.deepcopy(model)
    fit(probe, part, val, "regression", epochs=1, batch_size=batch, lr=1e-6, device=device)  # warm-up
    start = time.perf_counter()
    fit(probe, part, val, "regression", epochs=1, batch_size=batch, lr=1e-6, device=device)
    return (time.perf_counter() - start) * len(data.train.x) / rows
