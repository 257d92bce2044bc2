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


def accuracy(c_true: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(pred == c_true))


def balanced_accuracy(c_true: np.ndarray, pred: np.ndarray) -> float:
    """The mean of the per-class recalls, over the classes present in `c_true` (scikit-learn's
    balanced_accuracy_score)."""
    return float(np.mean([np.mean(pred[c_true == k] == k) for k in np.unique(c_true)]))


def roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """The area under the ROC curve of `score` for the rows where `is_positive`: the chance that a positive row
    outscores a negative one, ties counting half (Mann-Whitney U over mid-ranks: the trapezoids of scikit-learn's
    roc_auc_score). NaN when the rows hold only one of the two, or a score is not finite (a diverged model's)."""
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(score).all():
        return float("nan")
    _, where, counts = np.unique(score, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct score, ties sharing theirs
    return float((mid_rank[where][is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification(c_true: np.ndarray, proba: np.ndarray, pred: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1_macro of the classes `pred` (the model's decision rule, decision.py;
    argmax of `proba` when not given), the same two without the rule, by argmax (`f1_macro_argmax`,
    `accuracy_argmax`), and roc_auc (one-vs-rest macro: NaN when a class is absent), log_loss, ece of the
    probabilities. Computed here rather than by scikit-learn, whose import would be a second of every worker's
    start (the fork server's imports, which the first task waits for) and of every load of a served champion;
    tests/test_metrics.py checks each against scikit-learn's own."""
    k = proba.shape[1]
    argmax = proba.argmax(axis=1)
    pred = argmax if pred is None else np.asarray(pred)
    aucs = [roc_auc(c_true == j, proba[:, j]) for j in ([1] if k == 2 else range(k))]
    return {
        "accuracy": accuracy(c_true, pred),
        "balanced_accuracy": balanced_accuracy(c_true, pred),
        "f1_macro": f1_macro(c_true, pred, k),
        "accuracy_argmax": accuracy(c_true, argmax),
        "f1_macro_argmax": f1_macro(c_true, argmax, k),
        "log_loss": log_loss(c_true, proba),
        "ece": expected_calibration_error(c_true, proba),
        "roc_auc": float(np.mean(aucs)),  # NaN if any class's is
    }


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """rmse, mae, r2 in the target's own units. r2 of a constant target is 1 for a perfect prediction, else 0
    (scikit-learn's r2_score)."""
    residual = float(np.sum((y_true - y_pred) ** 2, dtype=np.float64))
    spread = float(np.sum((y_true - np.mean(y_true)) ** 2, dtype=np.float64))
    return {
        "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
        "mae": float(np.mean(np.abs(y_true - y_pred))),
        "r2": (1 - residual / spread) if spread > 0 else float(residual == 0),
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
