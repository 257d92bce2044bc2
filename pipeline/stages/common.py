"""What every stage shares: StageResult, evaluating, training and logging a classifier (with its decision rule,
decision.py, fitted on validation when it is logged)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import checkpoint, decision, metrics, progress, registry, stats, stop, tracking
from ..config import Config, first_line
from ..data import Prepared, to_classes
from ..model import set_rule
from ..train import Distill, batch_and_lr, classification_task, fit, predict


@dataclass
class StageResult:
    """A stage's output: its run, and the model it stands for with the run that logged that model.

    baseline: the regressor, logged on the baseline run itself; head_swap: the strategy run best on
    validation; slim: the recommended variant's run; tune: the tune run (it logs the best trial's
    model). The stage run records the same answer once, as its tag `model_run`: `stage_output` reads
    it back for a reused stage or a later command.
    """
    run_id: str
    model: nn.Module
    model_run: str


def stands_for(model_run: str) -> None:
    """Record on the active stage run which run's model is its output (tag `model_run`, written once)."""
    tracking.set_tags({"model_run": model_run})


def stage_output(run_id: str, split_key: str | None = None) -> StageResult:
    """The StageResult of a finished stage run (its `model_run` tag), or of any run that logged a model
    itself; `split_key` checks that the model was made on the same split."""
    model_run = tracking.get_run(run_id).data.tags.get("model_run", run_id)
    return StageResult(run_id, checkpoint.load_run_model(model_run, split_key=split_key), model_run)


def say(msg: str) -> None:
    """A stage's console line (its choice, on validation): above any live progress bar, silent under --quiet."""
    progress.write(msg)


def warn(msg: str) -> None:
    """A warning a person must see (a flagged run, a doubtful input): on stderr, `warning: ` first, even under
    --quiet."""
    progress.write(f"warning: {msg}", err=True)


def detail(msg: str) -> None:
    """A finished run's console line (its validation scores): shown under --verbose only."""
    if progress.verbose():
        progress.write(msg)


def progress_label() -> str:
    """The live progress line's label: the active run's stage and name, e.g. `head_swap/finetune`."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return "training"
    stage, name = run.data.tags.get("stage", ""), run.info.run_name or ""
    return f"{stage}/{name}" if stage and stage != name else name or stage or "training"


def regressor_outputs(model: nn.Module, x: torch.Tensor, data: Prepared, device) -> np.ndarray:
    """Regressor output in target units, (N,)."""
    return predict(model, x, device).reshape(-1).double().numpy() * data.y_std + data.y_mean


def threshold_proba(regressor: nn.Module, split, data: Prepared, device) -> np.ndarray:
    """(N, K) one-hot 'probabilities' of the regressor's output cut at the class edges."""
    return np.eye(data.n_classes)[to_classes(regressor_outputs(regressor, split.x, data, device), data.edges)]


def classifier_metrics(data: Prepared, proba_of) -> dict[str, float]:
    """val/* and test/* classification metrics, with proba_of(split) -> (N, K) probabilities decided by argmax
    (the thresholded regressor's one-hot rows; a classifier's go through `classifier_values`)."""
    values: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        values.update(metrics.prefixed(name, metrics.classification(split.c.numpy(), proba_of(split))))
    return values


def classifier_values(model: nn.Module, data: Prepared, device) -> dict[str, float]:
    """val/* and test/* metrics of a classifier under the decision rule it carries (decision.outputs)."""
    values: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        proba, pred = decision.outputs(model, split.x, device, data.n_classes)
        values.update(metrics.prefixed(name, metrics.classification(split.c.numpy(), proba, pred)))
    return values


def log_run_inputs(cfg: Config, data: Prepared) -> None:
    tracking.log_params({**cfg.flat(), **{f"split.{k}": v for k, v in data.summary.items()},
                         "data.digest": data.digest, "data.split_key": data.split_key,
                         "data.class_names": " | ".join(data.class_names),
                         "data.edges": ",".join(repr(float(e)) for e in data.original_units(data.edges))})
    tracking.log_dataset(data.example, data.summary["rows"], cfg.data.source, cfg.data.target, data.digest,
                         missing=data.missing)


def costs(model: nn.Module, data: Prepared) -> dict[str, float]:
    return {"cost/params": metrics.count_params(model), "cost/flops": metrics.count_flops(model, data.n_features),
            "cost/latency_ms_per_1k": metrics.latency_ms_per_1k(model, data.n_features)}


def seeds_of(cfg: Config, trained: bool = True) -> list[int]:
    """The seeds a strategy runs with: `cfg.seeds` of them when it trains, one when it is deterministic."""
    return [cfg.seed + i for i in range(cfg.seeds)] if trained else [cfg.seed]


def fit_classifier(model: nn.Module, cfg: Config, data: Prepared, device, log: tracking.EpochLog, *, epochs: int,
                    lr: float, step: int = 0, params=None, distill: Distill | None = None):
    """fit() a classifier with the run's training settings (`train.class_weight` included); per-epoch curves go
    to `log` from `step` on. The per-epoch val/f1_macro is by argmax: the rule is fitted once, when logged."""
    k, t = data.n_classes, cfg.train
    c = data.val.c.numpy()
    # the CLI resolves an auto batch (and its lr) before any run opens; a stage called directly resolves it here
    batch, lr = batch_and_lr(t.batch_size, lr, len(data.train.x), t.max_steps_per_epoch, t.lr_scaling)

    with progress.Bar(progress_label(), epochs, "val/f1_macro") as bar:
        def on_epoch(epoch: int, logs: dict[str, float], val_out: torch.Tensor) -> None:
            pred = metrics.probabilities(val_out.cpu(), k).argmax(axis=1)
            f1 = metrics.f1_macro(c, pred, k)
            log.add(step + epoch, {**logs, "val/accuracy": float((pred == c).mean()), "val/f1_macro": f1})
            bar.update(epoch, f1)

        hist = fit(model, data.train, data.val, classification_task(k), epochs=epochs, lr=lr, batch_size=batch,
                   weight_decay=t.weight_decay, patience=t.patience, seed=cfg.seed, device=device, params=params,
                   on_epoch=on_epoch, distill=distill, class_weight=t.class_weight, stop=stop.check,
                   lr_schedule=t.lr_schedule, label_smoothing=t.label_smoothing)
    tracking.log_metrics({"best_epoch": step + hist.best_epoch})  # the restored epoch, on the curves' steps
    return hist


def flag_training(hists: list, random_start: bool) -> str | None:
    """Mark the active run (tag `training`) when its training cannot be trusted: a loss went non-finite
    (`diverged`), or nothing beat a random starting head (`untrained`: the model is its random init). Such a
    run is reported but never champion. Returns the flag."""
    flag = ("diverged" if any(h.diverged for h in hists) else
            "untrained" if random_start and not any(h.improved for h in hists) else None)
    if flag:
        tracking.set_tags({"training": flag})
        warn(f"{progress_label()}: training {flag} (see the run's train/loss and val/loss); it cannot be champion")
    return flag


@contextlib.contextmanager
def contained():
    """Around one strategy's or variant's run, which the block opens and names in the yielded dict (`run_id`): an
    exception raised in it (a layer type that surgery or training cannot handle; the run has ended FAILED) is
    not raised further but recorded, as the run's tag `failure` and the dict's `failure` (one line), so that the
    stage's other runs go on. An exception before the run opened is raised as usual."""
    outcome: dict[str, str] = {}
    try:
        yield outcome
    except Exception as e:
        if "run_id" not in outcome:
            raise
        outcome["failure"] = f"{type(e).__name__}: {first_line(e)[:300]}"
        tracking.set_tags({"failure": outcome["failure"]}, outcome["run_id"])


def flag_collapsed(model: nn.Module, data: Prepared, device) -> str | None:
    """Mark the active run `training: collapsed` when the classifier gives every validation row the same
    probabilities (a slimmed model that lost what separated the rows: roc_auc 0.5); like `flag_training`, such a
    run is reported but never champion nor recommended. Returns the flag."""
    proba, _ = decision.outputs(model, data.val.x, device, data.n_classes)
    if float(proba.std(axis=0).max()) > 1e-6:
        return None
    tracking.set_tags({"training": "collapsed"})
    warn(f"{progress_label()}: the model collapsed to one output for every row (no spread in its probabilities); "
         "it cannot be champion")
    return "collapsed"


def log_classifier(model: nn.Module, data: Prepared, device, seconds: float, final_step: int,
                   seed: int, identity_rule: bool = False) -> dict[str, float]:
    """Fit a trained classifier's decision rule on validation (decision.fit_rule; `identity_rule` keeps argmax
    and T = 1 instead: `threshold`, the bar, is the regressor cut at the class edges and nothing more), then
    evaluate it once under that rule and log the rule (params `rule.*`), its metrics (also without the rule:
    `*_argmax`), costs, and in one upload its state (the model, which carries the rule) and predictions
    (`checkpoint.log_state`); returns the values. The per-epoch curves are the run's metrics already: the MLflow UI
    draws them, the report draws the head-swap strategies'."""
    k = data.n_classes
    ordinal = decision.is_ordinal(model, k)
    val_c = data.val.c.numpy()
    val_out = predict(model, data.val.x, device)
    val_scores = decision.scores_of(val_out, k)
    if identity_rule:
        rule = set_rule(model, decision.identity(k, ordinal))
        val_pred = decision.decide(decision.tempered(val_scores, 1.0), rule)
    else:
        rule = set_rule(model, decision.fit_scores(val_scores, val_c, ordinal))
        # the selection score: each validation row decided by a rule fitted on the other half (no rule optimism)
        val_pred = decision.cross_fitted(val_scores, val_c, ordinal, seed)
    values = metrics.prefixed("val", metrics.classification(val_c, decision.apply(rule, val_scores)[0],
                                                            val_pred))
    # the loop's validation loss (CE/BCE, unweighted) of the returned model, before temperature scaling
    values["val/loss"] = metrics.log_loss(val_c, metrics.probabilities(val_out, k))
    rest, predictions = test_scores([(data, *decision.outputs(model, data.test.x, device, k))], seed,
                                    [(val_c, val_pred)])
    rest.update({"cost/train_seconds": seconds, **costs(model, data)})
    rest["cost/model_bytes"] = checkpoint.log_state(model, registry.serving_meta(data), predictions)
    # logged once with the rule, apart from the per-epoch curves (epoch/val_f1_macro, ...), which the MLflow UI
    # draws: the run's value is the returned model's (`final_step` is kept for the callers)
    tracking.log_final_metrics({**values, **rest}, params=decision.as_params(rule))
    # the data it was trained, validated and tested on, each split as an input with its role as context
    tracking.log_split_inputs(data.split_key, {name: (split.x.numpy(), split.c.numpy()) for name, split in
                                               (("train", data.train), ("validation", data.val), ("test", data.test))})
    return {**values, **rest}


def test_scores(parts: list[tuple[Prepared, np.ndarray, np.ndarray]], seed: int,
                val: list[tuple[np.ndarray, np.ndarray]] | None = None
                ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """A run's test/* metrics, macro-F1 and accuracy with a seeded 95% bootstrap interval (`_ci_low`, `_ci_high`),
    and its predictions as `tracking.predictions_file` arrays. `parts`: (split, (N, K) test probabilities, (N,)
    classes its decision rule picked), one per fold; `val`: (classes, decided classes) of each fold's validation
    rows, in the split's order, which compare chooses the champion on (none for the reference, which is never
    champion). A run over several folds (the reference, the floor) also keeps each row's fold (`fold`,
    `val_fold`). Test scores are computed here, once per run, and never used to choose anything."""
    rows = np.concatenate([d.test_rows for d, _, _ in parts])
    c = np.concatenate([d.test.c.numpy() for d, _, _ in parts])
    proba = np.concatenate([p for _, p, _ in parts])
    pred = np.concatenate([pred for _, _, pred in parts])
    more = {}
    if val:
        more["val_c"], more["val_pred"] = (np.concatenate(v) for v in zip(*val))
    if len(parts) > 1:
        more["fold"] = np.concatenate([np.full(len(d.test_rows), d.fold) for d, _, _ in parts])
        if val:
            more["val_fold"] = np.concatenate([np.full(len(v[0]), d.fold) for (d, _, _), v in zip(parts, val)])
    values = metrics.prefixed("test", metrics.classification(c, proba, pred))
    boot = stats.bootstrap(c, {"run": pred}, proba.shape[1], seed=seed)
    for m in stats.METRICS:
        ci = boot.interval("run", m)
        values[f"test/{m}_ci_low"], values[f"test/{m}_ci_high"] = ci.low, ci.high
    return values, tracking.predictions_file(rows, c, proba, pred, **more)


def log_predictions(parts: list[tuple[Prepared, np.ndarray, np.ndarray]], seed: int,
                    val: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, float]:
    """`test_scores` of a run with no model (the gradient-boosting reference, the floor): its predictions logged,
    its test/* metrics returned."""
    values, predictions = test_scores(parts, seed, val)
    tracking.log_predictions(**predictions)
    return values


def run_name(stage: str, data: Prepared) -> str:
    """A stage run's name: the stage, or `fold_<i>` for one fold of a cross-fitted stage (nested under it)."""
    return stage if data.fold is None else f"fold_{data.fold}"


def strategy_run_name(strategy: str, data: Prepared) -> str:
    """A strategy or variant run's name: the strategy, with its fold when cross-fitted (`lp_ft · fold 0/5`), so
    the runs table tells a fold's run from the row it is part of."""
    return strategy if data.fold is None else f"{strategy} · fold {data.fold}/{data.summary.get('folds', '?')}"


def where(stage: str, data: Prepared) -> str:
    """How console lines name a stage: `head_swap`, or `head_swap[fold 2]` when cross-fitted."""
    return stage if data.fold is None else f"{stage}[fold {data.fold}]"


def split_tags(data: Prepared) -> dict[str, str]:
    """Tags naming the split a run was made on: its split key, and its outer fold when cross-fitted."""
    return {"split_key": data.split_key, **({"fold": str(data.fold)} if data.fold is not None else {})}
