"""Metrics: classification, regression, calibration (ECE) and cost (params, FLOPs, latency).

Every function returns plain floats keyed by the metric names that the runs carry, without the
`val/` or `test/` prefix; `prefixed()` adds it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def probabilities(out: torch.Tensor, n_classes: int) -> np.ndarray:
    """(N, K) class probabilities from raw logits: sigmoid for one binary logit, softmax otherwise."""
    if n_classes == 2 and out.reshape(len(out), -1).shape[1] == 1:
        p = torch.sigmoid(out.reshape(-1).double())
        return torch.stack([1 - p, p], dim=1).numpy()
    return torch.softmax(out.double(), dim=1).numpy()


def calibration_bins(c_true: np.ndarray, proba: np.ndarray, bins: int) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, rows) of each non-empty equal-width confidence bin of the argmax class."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == c_true
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [(float(conf[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]


def expected_calibration_error(c_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    return float(sum(n * abs(acc - conf) for conf, acc, n in calibration_bins(c_true, proba, bins)) / len(c_true))


def log_loss(c_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped at 1e-15: hard 0/1 probabilities get a
    finite, large loss instead of infinity."""
    return float(-np.log(np.clip(proba[np.arange(len(c_true)), c_true], 1e-15, 1.0)).mean())


def f1_macro(c_true: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (a class never predicted nor present scores 0)."""
    tp = np.bincount(c_true[pred == c_true], minlength=n_classes)
    n_pred = np.bincount(pred, minlength=n_classes)
    n_true = np.bincount(c_true, minlength=n_classes)
    denom = n_pred + n_true
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def classification(c_true: np.ndarray, proba: np.ndarray, pred: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1_macro of the classes `pred` (the model's decision rule, decision.py;
    argmax of `proba` when not given), the same two without the rule, by argmax (`f1_macro_argmax`,
    `accuracy_argmax`), and roc_auc (one-vs-rest macro), log_loss, ece of the probabilities."""
    # imported here: a served champion imports this module (decision.py) and never scores, and scikit-learn
    # would add a second to every load of it (reg2cls predict, mlflow models serve, compare's clean-process check)
    from sklearn import metrics as skm

    k = proba.shape[1]
    argmax = proba.argmax(axis=1)
    pred = argmax if pred is None else np.asarray(pred)
    out = {
        "accuracy": float(skm.accuracy_score(c_true, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(c_true, pred)),
        "f1_macro": f1_macro(c_true, pred, k),
        "accuracy_argmax": float(np.mean(argmax == c_true)),
        "f1_macro_argmax": f1_macro(c_true, argmax, k),
        "log_loss": log_loss(c_true, proba),
        "ece": expected_calibration_error(c_true, proba),
    }
    try:
        if k == 2:
            out["roc_auc"] = float(skm.roc_auc_score(c_true, proba[:, 1]))
        else:
            out["roc_auc"] = float(skm.roc_auc_score(c_true, proba, multi_class="ovr", average="macro",
                                                     labels=list(range(k))))
    except ValueError:  # a class absent from this split: AUC undefined
        out["roc_auc"] = float("nan")
    return out


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """rmse, mae, r2 in the target's own units."""
    from sklearn import metrics as skm  # here, as in `classification`

    return {
        "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
        "mae": float(np.mean(np.abs(y_true - y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, n_features: int) -> int:
    """Multiply-adds per sample of every nn.Linear called in one forward pass (counted, not estimated)."""
    total = 0

    def hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, n_features, device=device))
    finally:
        for h in handles:
            h.remove()
    return total  # per sample: each Linear's hook fires once per call, whatever the batch size


def median_ms(call, repeats: int = 7) -> float:
    """Median wall time of `call()` in milliseconds, after one warm-up call (caches, allocators)."""
    call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def latency_ms_per_1k(model: nn.Module, n_features: int, repeats: int = 7) -> float:
    """Median wall time of a forward pass over 1,000 rows on the model's device."""
    device = next(model.parameters()).device
    x = torch.randn(1000, n_features, generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()

    @torch.no_grad()
    def forward() -> None:
        model(x)
        if device.type == "cuda":  # kernels run asynchronously: wait for them inside the timing
            torch.cuda.synchronize()

    return median_ms(forward, repeats)
