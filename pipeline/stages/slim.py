"""slim: physically smaller classifiers, with their costs beside their accuracy."""
from __future__ import annotations

import copy
import dataclasses
import itertools
from concurrent.futures import Future
from dataclasses import asdict

import torch
from torch import nn

from .. import checkpoint, jobs, report, selection, tracking
from ..config import Config
from ..data import Prepared
from ..model import architecture, mark_start, portable
from ..reuse import reusable
from ..surgery import drop_blocks, find_head, recorded_head, slim_width
from ..train import Distill, predict, resolve_device
from .common import (StageResult, classifier_values, contained, costs, detail, fit_classifier, flag_collapsed,
                     flag_training, log_classifier, log_run_inputs, run_name, say, seeds_of, split_tags, stage_output,
                     stands_for, strategy_run_name, warn, where)


def slim(cfg: Config, data: Prepared, source: StageResult, force: bool = False,
         started: list[Future] | None = None) -> StageResult:
    """Physically smaller classifiers made from `source.model` (the best head-swap classifier): fewer
    hidden units (width_<keep>), fewer hidden blocks (depth_-<n>, the pipeline's MLP only), each
    fine-tuned, and with `slim.distill` also trained on the unslimmed model's soft labels. The output
    is the recommended variant: the smallest within `slim.tolerance` validation macro-F1 of the best.
    `started`: the variant runs `queue_variants` began (cross-fitted), one per task in `_tasks`' order, which this
    stage adopts."""
    key, reuse = _reusable(cfg, data, source, force)
    if reuse and not started:  # variants queued for this fold (queue_variants found nothing to reuse) are collected
        say(f"slim: reusing finished run {reuse} (same config, data, input model and code; --force re-runs)")
        return stage_output(reuse)
    device = resolve_device(cfg.train.device)
    teacher, head = _teacher(cfg, data, source, device)
    rows = [{"strategy": "unslimmed", "run_id": source.model_run, **_unslimmed_values(teacher, data, device)}]
    with tracking.start(run_name("slim", data), "slim", tags={"stage_key": key, "source_run": source.model_run,
                                                              **split_tags(data)}) as run_id:
        log_run_inputs(cfg, data)
        tasks = _tasks(cfg, data, teacher, head, run_id, source.model_run)
        if started:
            outcomes = []
            for future in started:  # each adopted as it is collected: a worker that dies leaves the rest unread
                outcomes.append(jobs.result(future))
                tracking.adopt(outcomes[-1][0], run_id, {})
        else:
            outcomes = jobs.run(_variant_run, tasks)
        for (name, _, distilled, run_cfg, *_), (child_id, values, flag) in zip(tasks, outcomes):
            strategy = f"{name}_distill" if distilled else name
            label = f"{where('slim', data)}/{strategy}{f' seed {run_cfg.seed}' if cfg.seeds > 1 else ''}"
            if values is None:  # this model's layers could not be slimmed so: the other variants go on
                warn(f"{label} FAILED ({flag}); run {child_id}")
                continue
            if not flag:  # a diverged or collapsed variant is logged, never recommended
                rows.append({"strategy": strategy, "run_id": child_id, **values})
            detail(f"{label}: {values['cost/params']:.0f} params, validation macro-F1 {values['val/f1_macro']:.3f}")
        means = selection.by_strategy(rows)  # with several seeds, a variant is judged by its mean
        pick = selection.smallest_within(means, cfg.slim.tolerance)
        chosen = selection.best_run([r for r in rows if r["strategy"] == pick], score=lambda r: r["val/f1_macro"])
        tracking.set_tags({"recommended": pick})
        stands_for(chosen["run_id"])
        if data.fold is None:  # a fold of a cross-fitted convert draws none: the report's slim figure covers them
            unslimmed = tracking.get_run(source.model_run).data.tags.get("strategy", "slimming's input")
            tracking.log_figure(report.pareto_figure(means, pick, unslimmed=unslimmed), "pareto.png")
    line = (f"{where('slim', data)}: recommended {pick} ({chosen['cost/params']:.0f} params, validation macro-F1 "
            f"{chosen['val/f1_macro']:.3f}; best {max(m['val/f1_macro'] for m in means):.3f})")
    (say if data.fold is None else detail)(line)  # cross-fitted: convert says the choice over folds
    model = teacher if chosen["run_id"] == source.model_run else checkpoint.load_run_model(chosen["run_id"])
    return StageResult(run_id, model, chosen["run_id"])


def _reusable(cfg: Config, data: Prepared, source: StageResult, force: bool) -> tuple[str, str | None]:
    """The stage's reuse key on this split, and a finished run with it (reuse.reusable)."""
    sections = {"train": asdict(cfg.train), "slim": asdict(cfg.slim), "seeds": cfg.seeds}
    return reusable("slim", sections, data.split_key, [source.model_run], force)


def _teacher(cfg: Config, data: Prepared, source: StageResult, device) -> tuple[nn.Module, object]:
    """The model slimmed (`source.model`, in eval mode on `device`) and its head."""
    teacher = source.model.to(device).eval()
    k = data.n_classes
    return teacher, find_head(teacher, data.n_features, recorded_head(teacher), n_out=1 if k == 2 else k)


def _tasks(cfg: Config, data: Prepared, teacher: nn.Module, head, parent: str, source_run: str) -> list[tuple]:
    """`_variant_run`'s arguments for every variant (width_<keep>, depth_-<n>: the pipeline's MLP only), distilled or
    not, and seed."""
    variants: list[tuple[str, object]] = [(f"width_{r}", float(r)) for r in cfg.slim.keep_ratios]
    base = architecture(teacher)["base"]
    if cfg.slim.depth and base["kind"] == "mlp":
        variants += [(f"depth_-{n}", n) for n in range(1, base["kwargs"]["depth"])]
    teacher_state = portable(teacher)
    return [(name, amount, distilled, dataclasses.replace(cfg, seed=seed), data, teacher_state, head, parent,
             source_run)
            for name, amount in variants
            for distilled, seed in itertools.product((False, True) if cfg.slim.distill else (False,), seeds_of(cfg))]


def queue_variants(cfg: Config, splits: list[Prepared], sources: list[StageResult], parent: str,
                   force: bool = False) -> list[list[Future] | None]:
    """Cross-fitted, with workers: every fold's variant runs queued at once, nested under `parent` (the cross-fitted
    slim run) until that fold's `slim` adopts them (`started`), so that a fold's last runs and its choice no longer
    leave a worker idle before the next fold's runs start. Every fold's variants are made before any is queued; a
    fold whose stage will be reused queues none (None); without workers, none at all: each fold's slim runs its
    own, one fold after the other."""
    if jobs.pool_size() <= 1:
        return [None for _ in splits]
    device = resolve_device(cfg.train.device)
    tasks = []
    for data, source in zip(splits, sources):
        if _reusable(cfg, data, source, force)[1]:
            tasks.append(None)
            continue
        teacher, head = _teacher(cfg, data, source, device)
        tasks.append(_tasks(cfg, data, teacher, head, parent, source.model_run))
    return [None if fold is None else [jobs.submit(_variant_run, *t) for t in fold] for fold in tasks]


def _variant_run(name: str, amount, distilled: bool, cfg: Config, data: Prepared, teacher_state: tuple[dict, dict],
                 head, parent: str, source_run: str) -> tuple[str, dict, str | None]:
    """One variant (and seed) as a run nested under the slim run `parent`: cut from the teacher, checked to
    rebuild, fine-tuned (on the teacher's soft labels too when `distilled`). Here, or in a worker process
    (jobs.run). Returns the run's id, its metrics and its training flag; when it failed (`contained`), the id,
    None and the failure's one line."""
    teacher = checkpoint.rebuild(*teacher_state)
    device = resolve_device(cfg.train.device)
    teacher = teacher.to(device).eval()
    strategy = f"{name}_distill" if distilled else name
    with contained() as outcome, tracking.start(strategy_run_name(strategy, data), "slim", strategy=strategy,
                                                parent=parent, tags={
            "source_run": source_run, **split_tags(data), "seed": str(cfg.seed)}) as child_id:
        outcome["run_id"] = child_id
        tracking.log_params({**cfg.flat(), "strategy": strategy})
        student = copy.deepcopy(teacher)
        if name.startswith("width_"):
            slim_width(student, head, amount, data.n_features)
        else:
            drop_blocks(student, amount)
        _check_rebuild(student, data)
        mark_start(student)  # the pruned weights before their fine-tune: what a tuning trial retrains from
        distill = None
        if distilled:
            distill = Distill(predict(teacher, data.train.x, device), cfg.slim.temperature, cfg.slim.alpha)
        log = tracking.EpochLog()
        hist = fit_classifier(student, cfg, data, device, log, epochs=cfg.slim.epochs, lr=cfg.train.lr, distill=distill)
        log.flush()
        flag = flag_training([hist], random_start=False) or flag_collapsed(student, data, device)
        values = log_classifier(student, data, device, hist.seconds, hist.epochs + 1, cfg.seed)
    if "failure" in outcome:
        return outcome["run_id"], None, outcome["failure"]
    return child_id, values, flag


def _check_rebuild(model: nn.Module, data: Prepared) -> None:
    """The recorded surgery must recreate the model exactly: later stages and the champion load it so."""
    rebuilt = checkpoint.rebuild(architecture(model), model.state_dict())
    x = data.val.x[:64]
    if not torch.allclose(predict(rebuilt, x), predict(model, x, next(model.parameters()).device), atol=1e-5):
        raise RuntimeError("the slimmed model's recorded architecture does not rebuild it; please report this model")


def _unslimmed_values(model: nn.Module, data: Prepared, device) -> dict[str, float]:
    """The starting classifier's metrics and costs, measured here beside its variants."""
    return {**classifier_values(model, data, device), **costs(model, data)}
