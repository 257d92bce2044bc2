"""convert: every stage in order under one parent run; on small data, cross-fitted over outer folds."""
from __future__ import annotations

import numpy as np
from torch import nn

from .. import jobs, tracking
from ..config import Config
from ..data import Prepared
from ..model import portable
from ..surgery import Head
from .baseline import baseline, baseline_key, new_regressor
from .common import StageResult, log_run_inputs, say, stage_output, stands_for, warn
from .compare import Comparison, compare, fit_reference
from .head_swap import head_swap, start_early
from .slim import recommend, slim
from .tune import tune


def convert(cfg: Config, splits: list[Prepared], brought: tuple[nn.Module, Head] | None,
            force: bool = False) -> Comparison:
    """baseline -> head_swap -> slim -> tune -> compare under one parent run, on `splits`: one split, or one
    per outer fold (cross-fitting: baseline, head_swap and slim run on every fold and choose on their mean
    validation score; tune searches on the first fold and retrains its best configuration on the others).
    Independent trainings run in the worker processes of `jobs.workers`, when the command opened them.
    `brought` is the user's model from `bring` (called before this parent run opens, so a model that does not
    fit leaves no run); `force` re-runs stages that could be reused."""
    data = splits[0]
    with tracking.start("convert", "convert", tags={"split_key": data.split_key, "folds": str(len(splits))}) as run_id:
        log_run_inputs(cfg, data)
        # the reference needs no stage's output: with workers it is fitted in one while the baseline trains
        reference = jobs.submit(fit_reference, cfg, splits) if cfg.compare.reference else None
        slimming = bool(cfg.slim.keep_ratios or cfg.slim.depth)
        if len(splits) == 1:
            early = {}
            # with workers, a core would idle while the baseline trains here: what head_swap can train without the
            # trained weights (scratch) takes it meanwhile. Not when the baseline is reused (nothing to wait for),
            # nor for a brought model (its own layers may hold weights that scratch's reset does not reach)
            if jobs.pool_size() > 1 and not brought and not baseline_key(cfg, data, force)[1]:
                early = start_early(cfg, data, new_regressor(cfg, data), run_id)
            base = baseline(cfg, data, brought, force=force)
            chosen = [head_swap(cfg, data, base, force=force, started=early)]
            stage_runs = {"baseline_run": base.run_id, "head_swap_run": chosen[0].run_id}
            if slimming:
                chosen = [slim(cfg, data, chosen[0], force=force)]
                stage_runs["slim_run"] = chosen[0].run_id
        else:
            chosen, stage_runs = _cross_fit(cfg, splits, brought, slimming, force)
        if not slimming:
            say("slim: skipped (slim.keep_ratios none and slim.depth false)")
        if cfg.tune.n_trials > 0:  # searched on the first fold, the best configuration retrained on the others
            tuned = tune(cfg, data, chosen[0], force=force, other_folds=list(zip(splits[1:], chosen[1:])))
            stage_runs["tune_run"] = tuned.run_id
        tracking.set_tags(stage_runs)
        return compare(cfg, splits, run_id, reference)


def _cross_fit(cfg: Config, splits: list[Prepared], brought, slimming: bool,
               force: bool) -> tuple[list[StageResult], dict[str, str]]:
    """baseline, head_swap and slim on every fold, each nested as <stage> -> fold_<i> -> strategy. head_swap's
    strategy is the one best on validation macro-F1 averaged over folds (and seeds); slim, run on every fold
    from that strategy's model, recommends by the same rule as on one split, on the averages over folds.
    Returns the chosen model of every fold (the first fold's run stands for each stage; tune searches on that
    fold) and the stage runs."""
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
    with tracking.start("head_swap", "head_swap", tags=folds) as head_swap_run:
        swaps = [head_swap(cfg, data, base, force=force) for data, base in zip(splits, bases)]
        runs = _strategy_runs(swaps)
        scores = {s: _trusted_mean(rs) for s, rs in runs.items()}
        strategy = max(scores, key=scores.get)
        # every fold continues from this strategy's model on that fold, not from the fold's own favourite
        chosen = [_result(swap.run_id, _best_on_fold(runs[strategy], i)) for i, swap in enumerate(swaps)]
        stands_for(chosen[0].model_run)
        say(f"head_swap: chosen {strategy}, validation macro-F1 {scores[strategy]:.3f} averaged over "
            f"{len(splits)} folds")
    stage_runs = {"baseline_run": baseline_run, "head_swap_run": head_swap_run}
    if not slimming:
        return chosen, stage_runs
    with tracking.start("slim", "slim", tags=folds) as slim_run:
        slims = [slim(cfg, data, source, force=force) for data, source in zip(splits, chosen)]
        runs = {**_strategy_runs(slims), "unslimmed": [tracking.get_run(c.model_run) for c in chosen]}
        means = [{"strategy": s, "val/f1_macro": _trusted_mean(rs),
                  "cost/params": np.mean([r.data.metrics["cost/params"] for r in rs])} for s, rs in runs.items()]
        pick = recommend(means, cfg.slim.tolerance)
        if pick != "unslimmed":
            chosen = [_result(s.run_id, _best_on_fold(runs[pick], i)) for i, s in enumerate(slims)]
        tracking.set_tags({"recommended": pick})
        stands_for(chosen[0].model_run)
        say(f"slim: recommended {pick}, on validation macro-F1 averaged over {len(splits)} folds")
    return chosen, {**stage_runs, "slim_run": slim_run}


def _fold_baseline(cfg: Config, data: Prepared, brought: tuple[dict, dict, Head] | None, force: bool,
                   parent: str) -> str:
    """One fold's baseline run, nested under the cross-fitted baseline run `parent`, from `brought` (the user's
    model as its recipe, weights and head) or the pipeline's MLP: here, or in a worker process (jobs.run)."""
    model = None
    if brought:
        arch, state, head = brought
        model = tracking.rebuild(arch, state)
    return baseline(cfg, data, brought and (model, head), force=force, parent=parent).run_id


def _strategy_runs(results: list[StageResult]) -> dict[str, list]:
    """The finished strategy runs under each fold's stage run, by strategy."""
    out: dict[str, list] = {}
    for result in results:
        for run in tracking.children(result.run_id):
            if run.info.status == "FINISHED" and "val/f1_macro" in run.data.metrics:
                out.setdefault(run.data.tags["strategy"], []).append(run)
    return out


def _trusted_mean(runs: list) -> float:
    """Validation macro-F1 averaged over a strategy's runs; -inf when one is flagged by flag_training
    (diverged, untrained), so such a strategy is never chosen."""
    if any("training" in r.data.tags for r in runs):
        return float("-inf")
    return float(np.mean([r.data.metrics["val/f1_macro"] for r in runs]))


def _best_on_fold(runs: list, fold: int) -> str:
    """Of a strategy's runs (one per fold and seed), the one on `fold` best on validation."""
    return max((r for r in runs if r.data.tags.get("fold") == str(fold)),
               key=lambda r: r.data.metrics["val/f1_macro"]).info.run_id


def _result(run_id: str, model_run: str) -> StageResult:
    return StageResult(run_id, tracking.load_run_model(model_run), model_run)
