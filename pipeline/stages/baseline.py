"""baseline: the regressor, trained here (the pipeline's MLP) or brought by the user, and the
threshold classes it implies."""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint, checks, metrics, progress, stop, tracking
from ..config import Config, UserError
from ..data import Prepared
from ..model import MLP, load_user_model, mlp_width
from ..reuse import reusable
from ..surgery import Head, find_head
from ..train import batch_and_lr, fit, resolve_device, seeded
from .common import (StageResult, classifier_metrics, detail, costs, log_run_inputs, regressor_outputs, run_name, say,
                     split_tags, stage_output, stands_for, threshold_proba, where)
from .heads import check_convertible


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
    model = checkpoint.load_model_uri(um.uri) if um.uri else load_user_model(um.spec, um.kwargs, um.checkpoint)
    try:
        head = find_head(model, data.n_features, um.head or None)
    except UserError as e:  # the columns do not fit: name them, and any that looks like a saved row index
        if "input features" not in str(e):
            raise
        columns = [str(c) for c in data.preprocessor.columns]
        suspects = checks.index_like(columns)
        named = ", ".join(columns[:20]) + (f" and {len(columns) - 20} more" if len(columns) > 20 else "")
        hint = (f"; {', '.join(repr(c) for c in suspects)} looks like a row index saved into the file (pandas "
                "to_csv without index=False): leave it out" if suspects else "")
        raise UserError(f"{e} (the columns read: {named}){hint}") from None
    check_convertible(cfg, data, model, head)
    return model, head


def piecewise_bins(x: torch.Tensor, n_bins: int) -> list[list[float]]:
    """Bin edges per feature for piecewise-linear embeddings: quantiles of the training split (x: (N, F)), as
    plain lists, which the MLP's recipe keeps so that it rebuilds without data. A feature constant in the
    training split gets two edges around its value (one bin: it carries no information there anyway)."""
    from rtdl_num_embeddings import compute_bins

    x = x.float()
    varying = [j for j in range(x.shape[1]) if not bool((x[:, j] == x[0, j]).all())]
    edges = [[float(x[0, j]) - 1.0, float(x[0, j]) + 1.0] for j in range(x.shape[1])]
    if varying:
        with warnings.catch_warnings():  # a one-hot column has a single bin: fine, no need to say so
            warnings.filterwarnings("ignore", "The .* feature has just two bin edges")
            # compute_bins wants n_bins below the number of rows
            for j, b in zip(varying, compute_bins(x[:, varying], n_bins=min(n_bins, len(x) - 1))):
                edges[j] = b.tolist()
    return edges


def _file_digest(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else ""


def baseline_key(cfg: Config, data: Prepared, force: bool = False) -> tuple[str, str | None]:
    """The baseline's stage key, and the finished run it would reuse (None: it runs)."""
    um = cfg.user_model
    sections = {"model": asdict(cfg.model), "train": asdict(cfg.train), "user_model": asdict(um),
                "files": [_file_digest(um.spec.rpartition(":")[0]), _file_digest(um.checkpoint)]}
    return reusable("baseline", sections, data.split_key, [], force)


def new_regressor(cfg: Config, data: Prepared) -> MLP:
    """The pipeline's own regressor, untrained: `cfg.model`'s MLP, sized for `data`."""
    m = cfg.model
    bins = piecewise_bins(data.train.x, m.n_bins) if m.embedding == "piecewise" else None
    with seeded(cfg.seed):
        return MLP(data.n_features, mlp_width(m.width, len(data.train.x)), m.depth, 1, m.activation, m.dropout,
                   embedding=m.embedding, embedding_dim=m.embedding_dim, bins=bins, ensemble=m.ensemble)


def baseline(cfg: Config, data: Prepared, brought: tuple[nn.Module, Head] | None, force: bool = False,
             parent: str | None = None) -> StageResult:
    """The regressor: the pipeline's MLP trained here (MSE on the standardised target), or `brought`,
    the user's model (from `bring`), evaluated as it is or retrained; logs RMSE/MAE/R2 and the
    thresholded classes. The first stage: it builds on no other run. Its run nests under `parent`, else
    under the active run."""
    um = cfg.user_model
    key, reuse = baseline_key(cfg, data, force)
    if reuse:
        say(f"baseline: reusing finished run {reuse} (same config, data and code; --force re-runs)")
        if data.fold is None:  # what was found then still holds: said again (cross-fitting says it for all folds)
            checks.warn(checks.of_runs([tracking.get_run(reuse)]))
        return stage_output(reuse)
    device = resolve_device(cfg.train.device)
    with tracking.start(run_name("baseline", data), "baseline", tags={"stage_key": key, **split_tags(data)},
                        parent=parent) as run_id:
        log_run_inputs(cfg, data)
        if brought:
            model, head = brought
            tracking.log_params({"head.name": head.name, "head.activation": head.activation or "none"})
            say(f"baseline: brought model {um.spec or um.uri}, regression head {head.describe()}")
        else:
            model = new_regressor(cfg, data)
        model.to(device)
        values: dict[str, float] = {"cost/train_seconds": 0.0}
        if not brought or um.retrain:
            values.update(_train(cfg, data, model, device))
        values.update(_evaluate(model, data, device))
        tracking.log_final_metrics(values)  # val/rmse: the returned model's; its curve is epoch/val_rmse
        # before any strategy trains: what would make every number after this one mean little
        given = (cfg.data.scaling, cfg.data.target_scaling) if brought and not um.retrain else None
        findings = checks.regressor_findings(model, data, device, given)
        tracking.set_tags(findings)
        if data.fold is None:  # cross-fitting says it once for all folds
            checks.warn(findings)
        checkpoint.log_state(model)  # a regressor: what later stages and --baseline-run rebuild
        stands_for(run_id)
        line = (f"{where('baseline', data)}: validation RMSE {values['val/rmse']:.4g}, R2 {values['val/r2']:.3f}, "
                f"thresholded macro-F1 {values['val/f1_macro']:.3f} ({values['cost/train_seconds']:.1f} s training)")
        (say if data.fold is None else detail)(line)  # cross-fitted: convert says the mean over folds
    return StageResult(run_id, model, run_id)


def _train(cfg: Config, data: Prepared, model: nn.Module, device) -> dict[str, float]:
    """Train the regressor (MSE on the standardised target, early-stopped on validation RMSE, whose curve is
    logged each epoch); its best epoch and training seconds."""
    t, log = cfg.train, tracking.EpochLog()
    bar = progress.Bar("baseline", t.epochs, "val/rmse", higher=False)

    def on_epoch(epoch: int, logs: dict[str, float], val_out: torch.Tensor) -> None:
        rmse = float(torch.sqrt(torch.mean((val_out.reshape(-1).cpu() - data.val.y) ** 2))) * data.y_std
        log.add(epoch, {**logs, "val/rmse": rmse})
        bar.update(epoch, rmse)

    batch, lr = batch_and_lr(t.batch_size, t.lr, len(data.train.x), t.max_steps_per_epoch, t.lr_scaling)
    with bar:
        hist = fit(model, data.train, data.val, "regression", epochs=t.epochs, batch_size=batch, lr=lr,
                   weight_decay=t.weight_decay, patience=t.patience, seed=cfg.seed, device=device,
                   on_epoch=on_epoch, stop=stop.check, lr_schedule=t.lr_schedule)
    log.flush()
    return {"best_epoch": hist.best_epoch, "cost/train_seconds": hist.seconds}


def _evaluate(model: nn.Module, data: Prepared, device) -> dict[str, float]:
    """The regressor's regression metrics on validation and test, its thresholded classes' metrics (the
    `threshold` strategy) and its costs."""
    values = {}
    for name, split in (("val", data.val), ("test", data.test)):
        y = split.y.double().numpy() * data.y_std + data.y_mean
        predicted = regressor_outputs(model, split.x, data, device)
        values.update(metrics.prefixed(name, metrics.regression(y, predicted)))
    # the baseline as a classifier is the `threshold` strategy: its output cut at the class edges
    values.update(classifier_metrics(data, lambda split: threshold_proba(model, split, data, device)))
    values.update(costs(model, data))
    return values
