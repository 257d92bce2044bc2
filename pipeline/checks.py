"""What the regressor is checked for before any strategy trains, in seconds: whether it explains anything on
validation (a constant predictor, a `--scaling` / `--target-scaling` that does not match how a brought model was
trained), whether one feature alone nearly determines the target (a leak), and whether a row's output depends on
the other rows of its batch. Each finding is one line that names the fix, kept as the tag `check.<name>` on the
baseline run and on the convert run, whose verdict repeats them, and printed on stderr as a warning.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from .data import Prepared
from .train import predict

TAG = "check."
LEAK_R2 = 0.98       # one feature's squared (rank) correlation with the target, on training rows, that reads as a leak
MIXING_SHARE = 1e-4  # a row's output moving by more than this share of the target's spread: it depends on its batch


def regressor_findings(model: nn.Module, data: Prepared, device, given: tuple[str, str] | None) -> dict[str, str]:
    """`check.<name>` -> one line, for each problem found in the regressor `model` (in the pipeline's units:
    standardised features and target unless the data config says otherwise). `given`: the (--scaling,
    --target-scaling) of a user's model evaluated without retraining, which may not be how it was trained;
    None for a model trained here."""
    found = {"no_signal": no_signal(model, data, device, given), "leak": leak(data),
             "batch_mixing": batch_mixing(model, data, device), "overlapping_windows": overlapping(data)}
    return {TAG + name: line for name, line in found.items() if line}


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(1.0 - np.sum((y - predicted) ** 2) / max(float(np.sum((y - y.mean()) ** 2)), 1e-300))


def _raw(x: torch.Tensor, data: Prepared) -> torch.Tensor:
    """Features back in their own units (undoing the preprocessor's standardisation; one-hot columns stay)."""
    pre, n = data.preprocessor, len(data.preprocessor.numeric)
    out = x.double().clone()
    out[:, :n] = out[:, :n] * torch.tensor(pre.stds, dtype=torch.float64) + torch.tensor(pre.means,
                                                                                          dtype=torch.float64)
    return out


def scaling_r2(model: nn.Module, data: Prepared, device) -> dict[tuple[str, str], float]:
    """Validation R² of the model under each (--scaling, --target-scaling) choice, both fitted on training rows."""
    n = len(data.preprocessor.numeric)
    train_raw, val_raw = _raw(data.train.x, data), _raw(data.val.x, data)
    mu, sd = train_raw[:, :n].mean(0), train_raw[:, :n].std(0, unbiased=False)
    sd[sd == 0] = 1.0
    val_std = val_raw.clone()
    val_std[:, :n] = (val_raw[:, :n] - mu) / sd
    y_train = data.train.y.double().numpy() * data.y_std + data.y_mean
    y_val = data.val.y.double().numpy() * data.y_std + data.y_mean
    out = {}
    for scaling, x in (("standard", val_std), ("none", val_raw)):
        r = predict(model, x.float(), device).reshape(-1).double().numpy()
        for target_scaling, y in (("standard", r * y_train.std() + y_train.mean()), ("none", r)):
            out[scaling, target_scaling] = _r2(y_val, y) if np.all(np.isfinite(y)) else float("-inf")
    return out


def no_signal(model: nn.Module, data: Prepared, device, given: tuple[str, str] | None) -> str | None:
    """The regressor explains nothing on validation (R² <= 0): a constant predictor, a scaling that does not
    match a brought model, or features without signal; the line says which, and what each scaling would give."""
    y_val = data.val.y.double().numpy() * data.y_std + data.y_mean
    predicted = predict(model, data.val.x, device).reshape(-1).double().numpy() * data.y_std + data.y_mean
    r2 = _r2(y_val, predicted)
    if r2 > 0:
        return None
    if float(np.std(predicted)) <= 1e-6 * float(np.std(y_val)):
        fix = "bring the trained weights (--checkpoint) or pass --retrain" if given else \
            "check --target and --features"
        return (f"the regressor gives every validation row the same output ({predicted[0]:.4g}), a constant "
                f"predictor (validation R² {r2:.3f}): every conversion is measured against nothing; {fix}")
    if given:
        tried = scaling_r2(model, data, device)
        best = max(tried, key=tried.get)
        each = ", ".join(f"--scaling {s} --target-scaling {t}: {v:.3g}" for (s, t), v in tried.items())
        if best != given and tried[best] > 0:
            return (f"the brought model explains nothing on validation (R² {r2:.3g} with --scaling {given[0]} "
                    f"--target-scaling {given[1]}): its scaling does not match; validation R² by choice: {each}; "
                    f"pass --scaling {best[0]} --target-scaling {best[1]}, or the scaling it was trained with")
        return (f"the brought model explains nothing on validation (R² {r2:.3g}; by scaling choice: {each}): check "
                "its checkpoint, --features (in the order it was trained on) and --target, or pass --retrain")
    return (f"the regressor explains nothing on validation (R² {r2:.3g}): the features carry no signal it could "
            "learn for this target, and every conversion is measured against a regressor that predicts nothing; "
            "check --target and --features")


def leak(data: Prepared, max_rows: int = 50_000) -> str | None:
    """One feature whose (rank) correlation with the target on training rows is nearly perfect: the target, or a
    column computed from it, is among the inputs."""
    x, y = data.train.x.double().numpy()[:max_rows], data.train.y.double().numpy()[:max_rows]
    if len(y) < 10:
        return None
    spread = x.std(0) > 0
    if not spread.any():
        return None
    names = np.asarray(data.preprocessor.feature_names)[spread]
    x = x[:, spread]
    ranks = np.argsort(np.argsort(x, axis=0), axis=0).astype(np.float64)
    r2 = np.maximum(_corr(x, y) ** 2, _corr(ranks, np.argsort(np.argsort(y)).astype(np.float64)) ** 2)
    j = int(np.argmax(r2))
    if r2[j] < LEAK_R2:
        return None
    return (f"feature '{names[j]}' alone determines the target on the training rows (squared correlation "
            f"{r2[j]:.3f}): a leak unless it is known when predicting; leave it out with --features (and --retrain a "
            "brought model)")


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of x (N, F) with y (N,)."""
    xc, yc = x - x.mean(0), y - y.mean()
    return (xc * yc[:, None]).sum(0) / np.maximum(np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum()), 1e-300)


def batch_mixing(model: nn.Module, data: Prepared, device, n: int = 8) -> str | None:
    """A few validation rows predicted inside two batches of other neighbours, first and last: their outputs
    must not move (a model that reads the batch as one sequence, or normalises over it, gives each row an
    output that depends on the rows sent with it)."""
    rows = data.val.x[:n]
    others = data.train.x[:32]
    try:
        first = predict(model, torch.cat([rows, others]), device)[:len(rows)]
        last = predict(model, torch.cat([others.flip(0), rows]), device)[-len(rows):]
    except Exception:  # a model that refuses other batch sizes fails loudly in the stages anyway
        return None
    moved = float((first - last).abs().max()) * data.y_std
    spread = float(data.train.y.double().std()) * data.y_std
    if not moved > MIXING_SHARE * spread:
        return None
    return (f"a row's output depends on the other rows of its batch (moves by up to {moved:.3g} in target units "
            "with other neighbours): the model mixes rows, e.g. a sequence layer reading the batch as one sequence; "
            "make each row one sample (batch_first, one window a row), or predictions will change with the batch")


def overlapping(data: Prepared) -> str | None:
    """Rows that look like overlapping lag windows of one series (data.overlapping_windows), split at random."""
    share = data.summary.get("overlapping_windows")
    if not share:
        return None
    return (f"{share:.0%} of the rows are the previous row's features shifted by one (overlapping windows of one "
            "series): a random split puts near-copies of each test row in training and flatters every score; pass "
            "--split ordered (or --split time:COL)")


def index_like(columns: list[str]) -> list[str]:
    """Column names that look like a row index written into the file (pandas' `Unnamed: 0`, `index`, `id`)."""
    return [c for c in columns if re.fullmatch(r"Unnamed: \d+|index|id|row(_?id)?", str(c), flags=re.IGNORECASE)]


def warn(findings: dict[str, str]) -> None:
    """Print each finding as a warning on stderr (also under --quiet: it changes what the numbers mean)."""
    from .progress import write

    for line in findings.values():
        write(f"warning: {line}", err=True)


def of_runs(runs: list) -> dict[str, str]:
    """The `check.*` tags of `runs` (a stage run and its fold runs), the first line of each name."""
    found: dict[str, str] = {}
    for run in runs:
        for key, value in run.data.tags.items():
            if key.startswith(TAG):
                found.setdefault(key, value)
    return found
