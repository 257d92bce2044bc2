"""The stages: baseline, head_swap, slim, tune, compare and convert, which runs them in order under one
parent run.

Each stage has one shape, `stage(cfg, data, prev) -> StageResult`, and composes model, surgery,
train, metrics and tracking; batch loops live in train.py only. A stage whose stage key (config, data
key, upstream runs, package source) matches a FINISHED run is reused instead of trained again.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import metrics, report, tracking
from .config import Config, UserError
from .data import Prepared, to_classes
from .model import MLP, architecture, load_user_model
from .surgery import (Head, check_swap, drop_blocks, edges_before_activation, find_head, fit_warm_start_scale,
                      freeze_backbone, new_head, recorded_head, slim_width, swap_head, unfreeze, warm_start_head)
from .train import Distill, classification_task, fit, predict, resolve_device

LEADERBOARD_COLUMNS = {  # metric key -> leaderboard column
    "test/accuracy": "accuracy", "test/balanced_accuracy": "balanced_acc", "test/f1_macro": "f1_macro",
    "test/roc_auc": "roc_auc", "test/log_loss": "log_loss", "test/ece": "ece",
    "cost/params": "params", "cost/latency_ms_per_1k": "latency_ms", "cost/train_seconds": "train_s",
}
LOWER_IS_BETTER = {"test/log_loss", "test/ece", "cost/params", "cost/latency_ms_per_1k", "cost/train_seconds"}


@dataclass
class StageResult:
    run_id: str
    model: nn.Module | None = None   # the stage's output: the regressor (baseline), best classifier (head_swap)
    reused: bool = False
    details: dict[str, object] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _reusable(stage: str, sections: dict, data: Prepared, upstream: list[str], force: bool) -> tuple[str, str | None]:
    """The stage key (its config sections, the split, upstream runs, the code) and a FINISHED run with it."""
    key = tracking.stage_key(stage, sections, data.split_key, upstream)
    return key, None if force else tracking.find_finished(key)


def _regressor_outputs(model: nn.Module, x: torch.Tensor, data: Prepared, device) -> np.ndarray:
    """Regressor output in target units, (N,)."""
    return predict(model, x, device).reshape(-1).double().numpy() * data.y_std + data.y_mean


def _threshold_proba(regressor: nn.Module, split, data: Prepared, device) -> np.ndarray:
    """(N, K) one-hot 'probabilities' of the regressor's output cut at the class edges."""
    return np.eye(data.n_classes)[to_classes(_regressor_outputs(regressor, split.x, data, device), data.edges)]


def _classifier_metrics(data: Prepared, proba_of) -> dict[str, float]:
    """val/* and test/* classification metrics, with proba_of(split) -> (N, K) probabilities."""
    values: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        values.update(metrics.prefixed(name, metrics.classification(split.c.numpy(), proba_of(split))))
    return values


# ------------------------------------------------------------------------------------------ baseline
def bring(cfg: Config, data: Prepared) -> tuple[nn.Module, Head] | None:
    """The user's regression model (None when the pipeline trains its own MLP), checked against the data.

    Called before any run opens, so a model that does not load or fit stops with nothing half-written.
    """
    um = cfg.user_model
    if not (um.spec or um.uri):
        return None
    if um.spec and not (um.checkpoint or um.retrain):
        raise UserError(f"--model {um.spec} without --checkpoint has random weights: pass --checkpoint weights.pt, "
                        "or --retrain to train it on the data first")
    model = tracking.load_model_uri(um.uri) if um.uri else load_user_model(um.spec, um.kwargs, um.checkpoint)
    head = find_head(model, data.n_features, um.head or None)
    _check_convertible(cfg, data, model, head)
    return model, head


def _check_convertible(cfg: Config, data: Prepared, regressor: nn.Module, head: Head) -> None:
    """Fail before any run opens if the swapped model's output has the wrong shape, or warm_start
    could not reproduce threshold through the model's output activation."""
    classifier_from(regressor, head, data, "cpu")
    if "warm_start" in cfg.head_swap.strategies:
        _warm_start_edges(regressor, head, data)


def _file_digest(path: str) -> str:
    import hashlib
    from pathlib import Path

    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else ""


def baseline(cfg: Config, data: Prepared, prev: StageResult | None = None, force: bool = False,
             brought: tuple[nn.Module, Head] | None = None) -> StageResult:
    """The regressor: the pipeline's MLP trained here (MSE on the standardised target), or the user's
    model, evaluated as it is or retrained; logs RMSE/MAE/R2 and the thresholded classes."""
    um = cfg.user_model
    brought = brought or bring(cfg, data)
    sections = {"model": asdict(cfg.model), "train": asdict(cfg.train), "user_model": asdict(um),
                "files": [_file_digest(um.spec.rpartition(":")[0]), _file_digest(um.checkpoint)]}
    key, reuse = _reusable("baseline", sections, data, [], force)
    if reuse:
        _say(f"baseline: reusing finished run {reuse} (same config, data and code; --force re-runs)")
        return StageResult(reuse, tracking.load_run_model(reuse), reused=True)
    device = resolve_device(cfg.train.device)
    with tracking.start("baseline", "baseline", tags={"stage_key": key, "split_key": data.split_key}) as run_id:
        _log_run_inputs(cfg, data)
        if brought:
            model, head = brought
            tracking.log_params({"head.name": head.name, "head.activation": head.activation or "none"})
            _say(f"baseline: brought model {um.spec or um.uri}, regression head {head.describe()}")
        else:
            torch.manual_seed(cfg.seed)
            model = MLP(data.n_features, cfg.model.width, cfg.model.depth, 1, cfg.model.activation, cfg.model.dropout)
        model.to(device)
        log = tracking.EpochLog()

        def on_epoch(epoch: int, logs: dict[str, float], val_out: torch.Tensor) -> None:
            rmse = float(torch.sqrt(torch.mean((val_out.reshape(-1).cpu() - data.val.y) ** 2))) * data.y_std
            log.add(epoch, {**logs, "val/rmse": rmse})

        t = cfg.train
        values: dict[str, float] = {"cost/train_seconds": 0.0}
        if not brought or um.retrain:
            hist = fit(model, data.train, data.val, "regression", epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                       weight_decay=t.weight_decay, patience=t.patience, seed=cfg.seed, device=device, on_epoch=on_epoch)
            log.flush()
            values.update({"best_epoch": hist.best_epoch, "cost/train_seconds": hist.seconds})
        for name, split in (("val", data.val), ("test", data.test)):
            y = split.y.double().numpy() * data.y_std + data.y_mean
            values.update(metrics.prefixed(name, metrics.regression(y, _regressor_outputs(model, split.x, data, device))))
        # the baseline as a classifier is the `threshold` strategy: its output cut at the class edges
        values.update(_classifier_metrics(data, lambda split: _threshold_proba(model, split, data, device)))
        values.update(_costs(model, data))
        tracking.log_metrics(values)
        tracking.log_model(model, data.val.x[:5].numpy(), architecture(model))
        _say(f"baseline: test RMSE {values['test/rmse']:.4g}, R2 {values['test/r2']:.3f}, "
             f"thresholded macro-F1 {values['test/f1_macro']:.3f} ({values['cost/train_seconds']:.1f} s training)")
    return StageResult(run_id, model)


def _log_run_inputs(cfg: Config, data: Prepared) -> None:
    tracking.log_params({**cfg.flat(), **{f"split.{k}": v for k, v in data.summary.items()},
                         "data.digest": data.digest, "data.split_key": data.split_key,
                         "data.class_names": " | ".join(data.class_names),
                         "data.edges": ",".join(repr(float(e)) for e in data.edges)})
    tracking.log_dataset(data.frame, cfg.data.source, cfg.data.target, data.digest)


def _costs(model: nn.Module, data: Prepared) -> dict[str, float]:
    return {"cost/params": metrics.count_params(model), "cost/flops": metrics.count_flops(model, data.n_features),
            "cost/latency_ms_per_1k": metrics.latency_ms_per_1k(model, data.n_features)}


# ----------------------------------------------------------------------------------------- head_swap
def head_swap(cfg: Config, data: Prepared, prev: StageResult, force: bool = False) -> StageResult:
    """One nested run per strategy, all on the same splits; the output is the best classifier by
    validation macro-F1 (among strategies that train a model: `threshold` is the bar they must beat)."""
    sections = {"train": asdict(cfg.train), "head_swap": asdict(cfg.head_swap), "head": cfg.user_model.head,
                "seeds": cfg.seeds}
    key, reuse = _reusable("head_swap", sections, data, [prev.run_id], force)
    if reuse:
        _say(f"head_swap: reusing finished run {reuse} (same config, data, baseline and code; --force re-runs)")
        best = _best_child(reuse)
        model = tracking.load_run_model(best) if best else None
        return StageResult(reuse, model, reused=True, details={"best_run": best})
    device = resolve_device(cfg.train.device)
    regressor = prev.model.to(device)
    head = find_head(regressor, data.n_features, cfg.user_model.head or None)
    if head.activation:
        _say(f"head_swap: warning: output activation '{head.activation}' "
             f"({type(regressor.get_submodule(head.activation)).__name__}) removed: the new head must emit logits")
    _check_convertible(cfg, data, regressor, head)
    best_model, best_f1, best_run = None, -1.0, None
    with tracking.start("head_swap", "head_swap", tags={"stage_key": key, "baseline_run": prev.run_id,
                                                        "split_key": data.split_key}) as run_id:
        _log_run_inputs(cfg, data)
        tracking.log_params({"head.name": head.name, "head.activation": head.activation or "none"})
        for strategy in cfg.head_swap.strategies:
            for seed in seeds_of(cfg, trained=strategy != "threshold"):
                run_cfg = dataclasses.replace(cfg, seed=seed)
                with tracking.start(strategy, "head_swap", strategy=strategy, tags={
                        "baseline_run": prev.run_id, "split_key": data.split_key, "seed": str(seed)}) as child_id:
                    tracking.log_params({**run_cfg.flat(), "strategy": strategy})
                    model, values = _run_strategy(strategy, run_cfg, data, regressor, head, device)
                    if model is not None and values["val/f1_macro"] > best_f1:
                        best_model, best_f1, best_run = model, values["val/f1_macro"], child_id
                _say(f"head_swap/{strategy}{f' seed {seed}' if cfg.seeds > 1 else ''}: test macro-F1 "
                     f"{values['test/f1_macro']:.3f}, accuracy {values['test/accuracy']:.3f}, log loss {values['test/log_loss']:.3f}")
        if best_run:
            tracking.set_tags({"best_run": best_run})
    return StageResult(run_id, best_model, details={"best_run": best_run})


def seeds_of(cfg: Config, trained: bool = True) -> list[int]:
    """The seeds a strategy runs with: `cfg.seeds` of them when it trains, one when it is deterministic."""
    return [cfg.seed + i for i in range(cfg.seeds)] if trained else [cfg.seed]


def _best_child(run_id: str) -> str | None:
    """The child run with a model and the highest val/f1_macro."""
    runs = [r for r in tracking.children(run_id) if r.data.tags.get("strategy") != "threshold"]
    runs = [r for r in runs if "val/f1_macro" in r.data.metrics]
    return max(runs, key=lambda r: r.data.metrics["val/f1_macro"]).info.run_id if runs else None


def _warm_start_edges(regressor: nn.Module, head: Head, data: Prepared) -> np.ndarray:
    """Class edges in the units of the regression head's own output (before any output activation)."""
    edges = (data.edges - data.y_mean) / data.y_std  # in the regressor's output units
    activation = regressor.get_submodule(head.activation) if head.activation else None
    return edges_before_activation(activation, edges)


def classifier_from(regressor: nn.Module, head: Head, data: Prepared, device,
                    warm_start: bool = False) -> tuple[nn.Module, float | None]:
    """A copy of the regressor with a classification head: random, or computed from the regression
    head (`warm_start`, whose fitted scale is returned too); output activation removed; output shape
    and untouched backbone checked."""
    model = copy.deepcopy(regressor)
    if head.activation:  # logits, not squashed outputs
        swap_head(model, head.activation, nn.Identity())
    backbone = {name: v.clone() for name, v in model.state_dict().items()}
    scale = None
    if warm_start:
        # the model without its output activation outputs the head's own r
        edges = _warm_start_edges(regressor, head, data)
        scale = fit_warm_start_scale(predict(model, data.val.x, device).reshape(-1), data.val.c, edges)
        swap_head(model, head.name, warm_start_head(model.get_submodule(head.name), edges, scale))
    else:
        swap_head(model, head.name, new_head(head.in_features, data.n_classes))
    check_swap(model, backbone, head.name, data.n_features, data.n_classes)
    return model, scale


def _run_strategy(strategy: str, cfg: Config, data: Prepared, regressor: nn.Module, head: Head,
                  device) -> tuple[nn.Module | None, dict]:
    """Build and train the classifier of one strategy; returns it (None for `threshold`) and its metrics."""
    t = cfg.train
    if strategy == "threshold":  # no model of its own: the regressor's output cut at the class edges
        values = _classifier_metrics(data, lambda split: _threshold_proba(regressor, split, data, device))
        values = {**values, "val/loss": values["val/log_loss"], **_costs(regressor, data), "cost/train_seconds": 0.0}
        tracking.log_metrics(values)
        return None, values

    torch.manual_seed(cfg.seed)
    model, scale = classifier_from(regressor, head, data, device, warm_start=strategy == "warm_start")
    if scale is not None:
        tracking.log_params({"warm_start.scale": round(scale, 6)})
    if strategy == "scratch":  # same architecture, regression weights thrown away: the control
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    log = tracking.EpochLog()
    seconds, step = 0.0, 0
    if strategy in ("linear_probe", "lp_ft"):
        hist = _fit_classifier(model, cfg, data, device, log, epochs=t.epochs, lr=t.lr,
                               params=freeze_backbone(model, head.name))
        unfreeze(model)
        seconds, step = hist.seconds, hist.epochs  # lp_ft's fine-tune continues the probe's curve
    if strategy in ("finetune", "lp_ft", "warm_start", "scratch"):
        lr = t.lr * (cfg.head_swap.lp_ft_lr_factor if strategy == "lp_ft" else 1.0)
        hist = _fit_classifier(model, cfg, data, device, log, epochs=t.epochs, lr=lr, step=step)
        seconds, step = seconds + hist.seconds, step + hist.epochs
    log.flush()
    return model, _log_classifier(model, data, device, seconds, step + 1)


def _fit_classifier(model: nn.Module, cfg: Config, data: Prepared, device, log: tracking.EpochLog, *, epochs: int,
                    lr: float, step: int = 0, params=None, distill: Distill | None = None):
    """fit() a classifier with the run's training settings; per-epoch curves go to `log` from `step` on."""
    k, t = data.n_classes, cfg.train
    c = data.val.c.numpy()

    def on_epoch(epoch: int, logs: dict[str, float], val_out: torch.Tensor) -> None:
        pred = metrics.probabilities(val_out.cpu(), k).argmax(axis=1)
        log.add(step + epoch, {**logs, "val/accuracy": float((pred == c).mean()), "val/f1_macro": metrics.f1_macro(c, pred, k)})

    return fit(model, data.train, data.val, classification_task(k), epochs=epochs, lr=lr, batch_size=t.batch_size,
               weight_decay=t.weight_decay, patience=t.patience, seed=cfg.seed, device=device, params=params,
               on_epoch=on_epoch, distill=distill)


def _log_classifier(model: nn.Module, data: Prepared, device, seconds: float, final_step: int) -> dict[str, float]:
    """Evaluate a trained classifier once, log its metrics, costs and model; returns the values."""
    k = data.n_classes
    values = _classifier_metrics(data, lambda split: metrics.probabilities(predict(model, split.x, device), k))
    values["val/loss"] = values["val/log_loss"]  # the loop's validation loss (CE/BCE), of the returned model
    # val/* after the per-epoch points, one step later, so the run's summary shows the returned model
    tracking.log_metrics({key: v for key, v in values.items() if key.startswith("val/")}, step=final_step)
    rest = {key: v for key, v in values.items() if not key.startswith("val/")}
    rest.update({"cost/train_seconds": seconds, **_costs(model, data)})
    rest["cost/model_bytes"] = tracking.log_model(model, data.val.x[:5].numpy(), architecture(model))
    tracking.log_metrics(rest)
    return {**values, **rest}


# ---------------------------------------------------------------------------------------------- slim
def slim(cfg: Config, data: Prepared, prev: StageResult, force: bool = False) -> StageResult:
    """Physically smaller classifiers made from `prev.model` (the best head-swap classifier): fewer
    hidden units (width_<keep>), fewer hidden blocks (depth_-<n>, the pipeline's MLP only), each
    fine-tuned, and with `slim.distill` also trained on the unslimmed model's soft labels. The output
    is the recommended variant: the smallest within `slim.tolerance` validation macro-F1 of the best."""
    source = prev.details.get("best_run") or prev.run_id
    sections = {"train": asdict(cfg.train), "slim": asdict(cfg.slim), "seeds": cfg.seeds}
    key, reuse = _reusable("slim", sections, data, [source], force)
    if reuse:
        _say(f"slim: reusing finished run {reuse} (same config, data, input model and code; --force re-runs)")
        best = tracking.get_run(reuse).data.tags.get("recommended_run")
        return StageResult(reuse, tracking.load_run_model(best), reused=True, details={"best_run": best})
    device = resolve_device(cfg.train.device)
    teacher = prev.model.to(device).eval()
    k = data.n_classes
    head = find_head(teacher, data.n_features, recorded_head(teacher), n_out=1 if k == 2 else k)
    variants: list[tuple[str, object]] = [(f"width_{r}", float(r)) for r in cfg.slim.keep_ratios]
    if cfg.slim.depth and teacher.reg2cls_arch["base"]["kind"] == "mlp":
        depth = teacher.reg2cls_arch["base"]["kwargs"]["depth"]
        variants += [(f"depth_-{n}", n) for n in range(1, depth)]
    teacher_logits = predict(teacher, data.train.x, device)
    rows = [{"strategy": "unslimmed", "run_id": source, "model": teacher, **_unslimmed_values(teacher, data, device)}]
    with tracking.start("slim", "slim", tags={"stage_key": key, "source_run": source, "split_key": data.split_key}) as run_id:
        _log_run_inputs(cfg, data)
        for name, amount in variants:
            for distilled, seed in itertools.product((False, True) if cfg.slim.distill else (False,), seeds_of(cfg)):
                strategy = f"{name}_distill" if distilled else name
                run_cfg = dataclasses.replace(cfg, seed=seed)
                with tracking.start(strategy, "slim", strategy=strategy, tags={
                        "source_run": source, "split_key": data.split_key, "seed": str(seed)}) as child_id:
                    tracking.log_params({**run_cfg.flat(), "strategy": strategy})
                    torch.manual_seed(seed)
                    student = copy.deepcopy(teacher)
                    if name.startswith("width_"):
                        slim_width(student, head, amount, data.n_features)
                    else:
                        drop_blocks(student, amount)
                    _check_rebuild(student, data)
                    distill = Distill(teacher_logits, cfg.slim.temperature, cfg.slim.alpha) if distilled else None
                    log = tracking.EpochLog()
                    hist = _fit_classifier(student, run_cfg, data, device, log, epochs=cfg.slim.epochs, lr=cfg.train.lr,
                                           distill=distill)
                    log.flush()
                    values = _log_classifier(student, data, device, hist.seconds, hist.epochs + 1)
                rows.append({"strategy": strategy, "run_id": child_id, "model": student, **values})
                _say(f"slim/{strategy}{f' seed {seed}' if cfg.seeds > 1 else ''}: {values['cost/params']:.0f} params, "
                     f"test macro-F1 {values['test/f1_macro']:.3f}")
        means = _mean_by_strategy(rows)  # with several seeds, a variant is judged by its mean
        best_f1 = max(m["val/f1_macro"] for m in means)
        pick = min((m for m in means if m["val/f1_macro"] >= best_f1 - cfg.slim.tolerance),
                   key=lambda m: (m["cost/params"], -m["val/f1_macro"]))["strategy"]
        chosen = max((r for r in rows if r["strategy"] == pick), key=lambda r: r["val/f1_macro"])
        tracking.set_tags({"recommended": pick, "recommended_run": chosen["run_id"]})
        tracking.log_figure(report.pareto_figure(means, pick), "pareto.png")
    _say(f"slim: recommended {pick} ({chosen['cost/params']:.0f} params, validation macro-F1 "
         f"{chosen['val/f1_macro']:.3f}; best {best_f1:.3f})")
    return StageResult(run_id, chosen["model"], details={"best_run": chosen["run_id"], "rows": rows})


def _check_rebuild(model: nn.Module, data: Prepared) -> None:
    """The recorded surgery must recreate the model exactly: later stages and the champion load it so."""
    rebuilt = tracking.rebuild(architecture(model))
    rebuilt.load_state_dict(model.state_dict())
    x = data.val.x[:64]
    if not torch.allclose(predict(rebuilt, x), predict(model, x, next(model.parameters()).device), atol=1e-5):
        raise RuntimeError("the slimmed model's recorded architecture does not rebuild it; please report this model")


def _mean_by_strategy(rows: list[dict]) -> list[dict]:
    """One row per strategy: the mean of every numeric value over its seeds."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["strategy"], []).append(r)
    return [{"strategy": name, **{k: float(np.mean([r[k] for r in group])) for k, v in group[0].items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            for name, group in out.items()]


def _unslimmed_values(model: nn.Module, data: Prepared, device) -> dict[str, float]:
    """The starting classifier's metrics and costs, measured here beside its variants."""
    k = data.n_classes
    values = _classifier_metrics(data, lambda split: metrics.probabilities(predict(model, split.x, device), k))
    return {**values, **_costs(model, data)}


# ---------------------------------------------------------------------------------------------- tune
def tune(cfg: Config, data: Prepared, prev: StageResult, force: bool = False, resume: bool = True) -> StageResult:
    """Optuna over head and hidden dropout, learning rate and weight decay, starting from `prev.model`
    (the chosen architecture and its weights). Each call adds `tune.n_trials` trials to the study;
    with `resume=False` (inside convert) a finished tune stage with the same key is reused instead.
    The stage run gets the best trial's params, value and model (kept from that trial, not retrained)
    and its test metrics, evaluated once here."""
    from . import study as optuna_study

    source = prev.details.get("best_run") or prev.run_id
    arch = architecture(prev.model)
    name = optuna_study.study_name(cfg, arch, data.split_key)
    url = optuna_study.storage_url(cfg.tune.storage, tracking.setup(None))
    sections = {"train": asdict(cfg.train), "tune": asdict(cfg.tune), "study": name}
    key, reuse = _reusable("tune", sections, data, [source], force or resume)
    if reuse:
        _say(f"tune: reusing finished run {reuse} (same config, data, input model and code; --force re-runs)")
        return StageResult(reuse, tracking.load_run_model(reuse), reused=True, details={"best_run": reuse})
    study = optuna_study.open_study(url, name, cfg.tune.metric)  # refuses a mismatched study before any run
    device = resolve_device(cfg.train.device)
    with tracking.start("tune", "tune", tags={"stage_key": key, "source_run": source, "split_key": data.split_key,
                                              "optuna_study": name, "optuna_storage": _safe_url(url)}) as run_id:
        _log_run_inputs(cfg, data)
        before, _ = optuna_study.counted(study)
        job = optuna_study.Job(cfg, data, arch, {k: v.cpu() for k, v in prev.model.state_dict().items()},
                               tracking.setup(None), run_id, url, name, target=before + cfg.tune.n_trials,
                               timeout=cfg.tune.timeout or None, seed=cfg.seed + before)
        first_new = len(study.get_trials(deepcopy=False))
        _say(f"tune: study '{name}' in {_safe_url(url)}: {before} trials so far, adding {cfg.tune.n_trials} "
             f"with {cfg.tune.workers} worker(s)")
        optuna_study.run_workers(job, cfg.tune.workers, _say)
        optuna_study.end_orphaned_runs(study)
        states = [t.state.name for t in study.get_trials(deepcopy=False)[first_new:]]  # this run's trials
        tracking.log_metrics({f"trials/{s.lower()}": states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")})
        if "COMPLETE" not in states:
            if "FAIL" in states:
                raise RuntimeError(f"every trial this run started in study '{name}' failed or was pruned; "
                                   "the first error is logged above")
            if not states:
                raise UserError(f"no trial started in study '{name}' within --timeout {cfg.tune.timeout:g} s; "
                                "give it more time")
            raise UserError(f"no trial this run started in study '{name}' completed (all pruned); "
                            "run more trials or use --pruner none")
        best = study.best_trial
        tracking.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
        tracking.set_tags({"best_trial_run": best.user_attrs["mlflow_run_id"]})
        model = tracking.load_run_model(best.user_attrs["mlflow_run_id"]).to(device)
        values = _classifier_metrics(data, lambda split: metrics.probabilities(predict(model, split.x, device), data.n_classes))
        values["val/loss"] = values["val/log_loss"]
        trial_run = tracking.get_run(best.user_attrs["mlflow_run_id"])
        rest = {"best/" + cfg.tune.metric: best.value, **_costs(model, data),
                "cost/train_seconds": trial_run.data.metrics.get("cost/train_seconds", float("nan")),
                "cost/model_bytes": tracking.log_model(model, data.val.x[:5].numpy(), architecture(model))}
        tracking.log_metrics({**values, **rest})
        for fig_name, fig in optuna_study.figures(study).items():
            tracking.log_figure(fig, fig_name)
    _say(f"tune: best trial {best.number} {cfg.tune.metric} {best.value:.4f} ({best.params}); "
         f"test macro-F1 {values['test/f1_macro']:.3f}")
    return StageResult(run_id, model, details={"best_run": run_id, "study": name, "storage": url})


def _safe_url(url: str) -> str:
    """The storage URL without its password, for tags and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# ------------------------------------------------------------------------------------------- convert
def leaderboard(stage_runs: list[str], single_runs: list[str] = (), metric: str = "test/f1_macro",
                extra_runs: list = ()) -> pd.DataFrame:
    """One row per strategy or variant under `stage_runs`, plus one per run in `single_runs` (the tune
    stage: its best model) and per run object in `extra_runs`, read back from the store.

    Runs of one strategy with several seeds share a row: each column is their mean, `<col>_std` their
    standard deviation, `n` their count, `best_run` the one with the best validation macro-F1. Sorted
    by `metric`, best first; `pareto` marks rows no other row beats on both `metric` and params.
    """
    runs = [run for stage_run in stage_runs for run in tracking.children(stage_run)]
    runs += [tracking.get_run(r) for r in single_runs] + list(extra_runs)
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        strategy = run.data.tags.get("strategy") or ("tuned" if run.data.tags.get("stage") == "tune" else run.info.run_name)
        groups.setdefault((run.data.tags.get("stage", ""), strategy), []).append(run)
    rows = []
    for (stage, strategy), group in groups.items():
        row: dict[str, object] = {"stage": stage, "strategy": strategy, "n": len(group)}
        for key, col in LEADERBOARD_COLUMNS.items():
            values = [r.data.metrics[key] for r in group if key in r.data.metrics]
            row[col] = float(np.mean(values)) if values else float("nan")
            row[f"{col}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        best = max(group, key=lambda r: r.data.metrics.get("val/f1_macro", float("-inf")))
        row["best_run"] = best.info.run_id
        row["runs"] = ",".join(r.info.run_id for r in group)
        rows.append(row)
    columns = ["stage", "strategy", "n"] + [c for col in LEADERBOARD_COLUMNS.values() for c in (col, f"{col}_std")]
    frame = pd.DataFrame(rows, columns=columns + ["best_run", "runs"])
    col = LEADERBOARD_COLUMNS.get(metric, metric.split("/", 1)[-1])
    frame = frame.sort_values(col, ascending=metric in LOWER_IS_BETTER, kind="stable", na_position="last")
    frame = frame.reset_index(drop=True)
    sign = 1 if metric in LOWER_IS_BETTER else -1  # pareto_front wants (cost, score): lower cost, higher score
    points = [(p if p == p else float("inf"), -sign * v) for p, v in zip(frame["params"], frame[col])]
    front = set(report.pareto_front(points))
    frame["pareto"] = [i in front and frame["params"].iloc[i] == frame["params"].iloc[i] for i in range(len(frame))]
    return frame


def display(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard for people: `mean ± std` where a row has several seeds, no run ids."""
    out = board[["stage", "strategy", "n"]].copy()
    for col in LEADERBOARD_COLUMNS.values():
        out[col] = [("" if m != m else f"{m:.4g}" if not s > 0 else f"{m:.3g} ± {s:.2g}")
                    for m, s in zip(board[col], board[f"{col}_std"])]
    out["pareto"] = ["*" if p else "" for p in board["pareto"]]
    return out


# ------------------------------------------------------------------------------------------- compare
def compare(cfg: Config, data: Prepared, prev: StageResult, force: bool = False) -> StageResult:
    """The answer to "which conversion wins": every strategy and variant of the convert run `prev`
    read back from the store (mean ± std over seeds), a scikit-learn reference, the report, and the
    champion — the best network by the mean of `compare.metric` — registered as a pyfunc that takes
    the raw columns. Artifacts go on the parent run: leaderboard.csv, leaderboard.md, report.html."""
    parent = prev.run_id
    tags = tracking.get_run(parent).data.tags
    stage_runs = [tags[k] for k in ("head_swap_run", "slim_run") if k in tags]
    singles = [tags["tune_run"]] if "tune_run" in tags else []
    c = cfg.compare
    registered = c.register or f"reg2cls-{tracking.experiment_name(parent)}"
    with tracking.start("compare", "compare", parent=parent, tags={"split_key": data.split_key}) as run_id:
        reference = [_reference_run(cfg, data)] if c.reference else []
        board = leaderboard(stage_runs, singles, c.metric, extra_runs=reference)
        networks = board[board["stage"].isin(["head_swap", "slim", "tune"]) & (board["strategy"] != "threshold")]
        if networks.empty:
            raise UserError("no trained network among the runs to compare; run convert with a trained strategy")
        top = networks.iloc[0]  # the board is sorted by the metric's mean, best first
        champion_run = top["best_run"]
        model = tracking.load_run_model(champion_run)
        device = resolve_device(cfg.train.device)
        model.to(device)
        proba = metrics.probabilities(predict(model, data.test.x, device), data.n_classes)
        col = LEADERBOARD_COLUMNS.get(c.metric, c.metric)
        summary = [f"Champion: {top['strategy']} ({top['stage']}), {c.metric} {top[col]:.4f}"
                   + (f" ± {top[col + '_std']:.3f} over {top['n']} seeds" if top["n"] > 1 else ""),
                   f"Test accuracy {top['accuracy']:.4f}, macro-F1 {top['f1_macro']:.4f}, log loss {top['log_loss']:.4f}, "
                   f"{top['params']:.0f} parameters",
                   f"Data: {cfg.data.source}, target {cfg.data.target}, classes {', '.join(data.class_names)}",
                   f"Parent run {parent}; registered model {registered}, alias champion"]
        first = board.iloc[0]
        if first["strategy"] != top["strategy"] or first["stage"] != top["stage"]:
            summary.insert(1, f"Note: {first['strategy']} ({first['stage']}) scores better on {c.metric} than every "
                              "converted network")
        version = tracking.register_champion(
            model, architecture(model),
            {"preprocessor": asdict(data.preprocessor), "class_names": data.class_names},
            _raw_example(data), registered,
            description=" ".join(summary), tags={"champion_run": champion_run, "strategy": str(top["strategy"]),
                                                 "parent_run": parent})
        summary[-1] += f" (version {version})"
        tracking.set_tags({"champion": top["strategy"], "champion_run": champion_run,
                           "registered_model": registered, "registered_version": version})
        images = {"Per strategy": report.png(report.bars_figure(board, c.metric)),
                  "Confusion matrix": report.png(report.confusion_figure(data.test.c.numpy(), proba.argmax(1), data.class_names)),
                  "ROC": report.png(report.roc_figure(data.test.c.numpy(), proba, data.class_names)),
                  "Reliability": report.png(report.reliability_figure(data.test.c.numpy(), proba))}
        for title, run, path in (("Slimming: Pareto", tags.get("slim_run"), "pareto.png"),
                                 ("Optuna: optimisation history", tags.get("tune_run"), "optuna_history.png")):
            image = tracking.read_artifact(run, path) if run else None
            if image:
                images[title] = image
        shown = display(board)
        tracking.log_files_to(parent, {
            "leaderboard.csv": board.to_csv(index=False), "leaderboard.md": report.markdown(shown),
            "report.html": report.html(f"reg2cls: {cfg.experiment}", summary, shown, images)})
    tracking.set_run_tags(parent, {"champion": str(top["strategy"]), "champion_run": champion_run,
                                   "registered_model": registered, "registered_version": version})
    return StageResult(run_id, model, details={"leaderboard": board, "summary": summary, "version": version,
                                               "registered": registered})


def _raw_example(data: Prepared) -> pd.DataFrame:
    """A few rows of the raw input columns (numbers as float64, so missing values stay valid)."""
    frame = data.frame[data.preprocessor.columns].head(5).copy()
    for col in data.preprocessor.numeric:
        frame[col] = frame[col].astype("float64")
    for col in data.preprocessor.categories:
        frame[col] = frame[col].astype(str)
    return frame


def _reference_run(cfg: Config, data: Prepared):
    """scikit-learn's HistGradientBoostingClassifier on the same splits: is the network competitive?"""
    import time

    from sklearn.ensemble import HistGradientBoostingClassifier

    with tracking.start("reference_hgb", "compare", strategy="reference_hgb",
                        tags={"split_key": data.split_key}) as run_id:
        t = time.perf_counter()
        clf = HistGradientBoostingClassifier(random_state=cfg.seed).fit(data.train.x.numpy(), data.train.c.numpy())
        seconds = time.perf_counter() - t
        values = _classifier_metrics(data, lambda split: clf.predict_proba(split.x.numpy()))
        x = np.random.default_rng(0).normal(size=(1000, data.n_features)).astype(np.float32)
        times = []
        for _ in range(6):
            t = time.perf_counter()
            clf.predict_proba(x)
            times.append(time.perf_counter() - t)
        tracking.log_params({"model": "sklearn.ensemble.HistGradientBoostingClassifier", "seed": cfg.seed})
        tracking.log_metrics({**values, "cost/train_seconds": seconds,
                              "cost/latency_ms_per_1k": float(np.median(times[1:]) * 1000)})
    return tracking.get_run(run_id)


def convert(cfg: Config, data: Prepared, prev: StageResult | None = None, force: bool = False,
            brought: tuple[nn.Module, Head] | None = None) -> StageResult:
    """baseline -> head_swap -> slim -> tune -> compare under one parent run; returns the leaderboard."""
    brought = brought or bring(cfg, data)  # before the parent run opens: a model that does not fit leaves no run
    with tracking.start("convert", "convert", tags={"split_key": data.split_key}) as run_id:
        _log_run_inputs(cfg, data)
        base = baseline(cfg, data, force=force, brought=brought)
        swapped = head_swap(cfg, data, base, force=force)
        stage_runs = {"baseline_run": base.run_id, "head_swap_run": swapped.run_id}
        slimmed = tuned = None
        if swapped.model is not None:
            slimmed = slim(cfg, data, swapped, force=force)
            stage_runs["slim_run"] = slimmed.run_id
            if cfg.tune.n_trials > 0:
                tuned = tune(cfg, data, slimmed, force=force, resume=False)
                stage_runs["tune_run"] = tuned.run_id
        else:
            _say("slim, tune: skipped, no head-swap strategy trained a model (threshold only)")
        tracking.set_tags(stage_runs)
        compared = compare(cfg, data, StageResult(run_id)) if swapped.model is not None else None
        board = compared.details["leaderboard"] if compared else leaderboard([swapped.run_id], metric=cfg.compare.metric)
    return StageResult(run_id, compared.model if compared else None,
                       details={"leaderboard": board, "compare": compared, "baseline": base, "head_swap": swapped,
                                "slim": slimmed, "tune": tuned})
