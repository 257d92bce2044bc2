"""The training loop: `fit()` and `predict()`, one loop for regression and classification.

Data stay as whole tensors on the device; each epoch slices them with a `randperm` index, which runs
several times faster than a per-sample `DataLoader` for models this small (bench/bench_fit.py).
`fit()` knows nothing of MLflow, Optuna or signals: callers watch training through one `on_epoch` hook and may
stop it through a `stop` check.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .data import Split


def use_threads(n: int) -> None:
    """Torch's intra-op threads for this process, and those of the BLAS/OpenMP pools that scikit-learn uses
    (the reference model), chosen rather than inherited: two pools spinning on the same cores wait on each
    other (a HistGradientBoosting fit ran many times slower after torch had run with two threads)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


BASE_BATCH = 64     # the batch size every learning rate in the config refers to
MAX_BATCH = 4096    # the auto rule's ceiling: beyond it an epoch may take more than max_steps_per_epoch steps
LR_SCALINGS = ("sqrt", "linear", "none")


def batch_and_lr(batch_size: str | int, lr: float, rows: int, max_steps_per_epoch: int = 100,
                 lr_scaling: str = "sqrt") -> tuple[int, float]:
    """The batch size and learning rate one training uses (`train.batch_size`, `train.lr`).

    A whole number is used as it is, with `lr` unchanged. `auto`: batch 64, doubled while an epoch over `rows`
    training rows would take more than `max_steps_per_epoch` steps (at most 4096; 0 = always 64), so an epoch
    costs about the same number of optimizer steps at any size, and its time grows with the rows only through
    the batches' own cost. The learning rate, set for batch 64, grows with the batch: by sqrt(batch / 64)
    (`sqrt`, the default: the gradient noise of a batch shrinks with its square root), batch / 64 (`linear`)
    or not at all (`none`). Below 64 * max_steps_per_epoch rows (6,400 by default) nothing changes."""
    if str(batch_size).strip().lower() != "auto":
        return int(batch_size), lr
    batch = BASE_BATCH
    while max_steps_per_epoch > 0 and batch < MAX_BATCH and math.ceil(rows / batch) > max_steps_per_epoch:
        batch *= 2
    factor = batch / BASE_BATCH
    scale = {"sqrt": math.sqrt(factor), "linear": factor, "none": 1.0}[lr_scaling]
    return batch, lr * scale


def classification_task(n_classes: int) -> str:
    return "binary" if n_classes == 2 else "multiclass"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .config import UserError

        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu"):
    """Run the block with torch's global RNG seeded, then restore it: weight init (`nn.Linear`,
    `reset_parameters`) and dropout masks draw from that RNG and take no generator."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def target_of(split: Split, task: str) -> torch.Tensor:
    return split.y if task == "regression" else split.c


CLASS_WEIGHTS = ("none", "balanced")


def class_weights(c: torch.Tensor, n_classes: int, how: str = "none") -> torch.Tensor | None:
    """Per-class loss weights (K,) from the training classes `c` (`train.class_weight`): None for `none`;
    `balanced`: N / (K * n_k), so each class weighs in the loss as if the classes were equally frequent
    (scikit-learn's class_weight="balanced"). A class with no training row gets N / K."""
    if how not in CLASS_WEIGHTS:
        raise ValueError(f"class weighting must be one of {', '.join(CLASS_WEIGHTS)}, got {how!r}")
    if how == "none":
        return None
    counts = torch.bincount(c.cpu(), minlength=n_classes).clamp(min=1).double()
    return (len(c) / (n_classes * counts)).float()


def loss_of(out: torch.Tensor, target: torch.Tensor, task: str, weight: torch.Tensor | None = None,
            smoothing: float = 0.0) -> torch.Tensor:
    """regression: MSE on the standardised target; binary: one logit, BCEWithLogits; multiclass: CrossEntropy.

    out: (N, 1) or (N, K) raw model output; target: (N,) float (regression) or int64 classes; `weight`: (K,)
    per-class weights (`class_weights`), None for none. Binary takes them as pos_weight = w_1 / w_0, which
    for balanced weights is n_neg / n_pos. `smoothing` (train.label_smoothing) mixes each class target with
    the uniform one, as torch's `label_smoothing` does: (1 - s) * one-hot + s / K; binary's target becomes
    (1 - s) * t + s / 2, the same loss as two logits (0, z) with torch's smoothing."""
    if task == "regression":
        return F.mse_loss(out.reshape(-1), target)
    if task == "binary":
        pos_weight = None if weight is None else weight[1] / weight[0]
        soft = target.float() * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(out.reshape(-1), soft, pos_weight=pos_weight)
    return F.cross_entropy(out, target, weight=weight, label_smoothing=smoothing)


@dataclass
class Distill:
    """Knowledge distillation: a teacher's logits on the training rows, softened by `temperature`,
    mixed with the true labels: loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * hard loss."""
    teacher_logits: torch.Tensor  # (N_train, out), in the training split's row order
    temperature: float = 2.0
    alpha: float = 0.5

    def loss(self, out: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, task: str,
             weight: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:
        t = self.temperature
        if task == "binary":  # one logit: the soft target is the teacher's softened probability
            soft = F.binary_cross_entropy_with_logits(out.reshape(-1) / t, torch.sigmoid(teacher.reshape(-1) / t))
        else:
            soft = F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(teacher / t, dim=1),
                            log_target=True, reduction="batchmean")
        # T^2 keeps the soft term's gradients on the scale of the hard term's (Hinton et al., 2015)
        return self.alpha * t * t * soft + (1 - self.alpha) * loss_of(out, target, task, weight, smoothing)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0     # epoch whose weights were restored (0: the starting weights)
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def diverged(self) -> bool:
        """A training or validation loss went non-finite (nan, inf): the learning rate or the data blew up.
        The returned weights are still the best finite ones (the starting weights if no epoch beat them)."""
        return not all(math.isfinite(v) for v in self.train_loss + self.val_loss)

    @property
    def improved(self) -> bool:
        """Some epoch beat the starting weights on validation loss, so training changed the model at all."""
        return self.best_epoch > 0


# on_epoch(epoch, {"train/loss": .., "val/loss": ..}, val_out) with val_out the (N, out) validation output
EpochHook = Callable[[int, dict[str, float], torch.Tensor], None]


def fit(model: nn.Module, train: Split, val: Split, task: str, *, epochs: int, batch_size: int, lr: float,
        weight_decay: float = 0.0, patience: int = 0, seed: int = 0, device: torch.device | str = "cpu",
        params: Iterable[nn.Parameter] | None = None, on_epoch: EpochHook | None = None,
        distill: Distill | None = None, class_weight: str = "none", stop: Callable[[], None] | None = None,
        lr_schedule: str = "constant", label_smoothing: float = 0.0) -> History:
    """Train `model` in place with AdamW; keep the weights with the lowest validation loss (the
    starting weights included).

    `params` restricts which parameters are optimised (a linear probe passes only the head's);
    `patience` > 0 stops after that many epochs without a better validation loss; `distill` trains
    on a teacher's soft labels too (validation loss and early stopping stay on the true labels);
    `class_weight` (none | balanced, `class_weights` from the training rows) weights a classifier's loss,
    the validation loss that picks the weights and stops early included: it watches the objective trained;
    `stop` is called before every epoch and raises to end the training there (stop.check: a signal's request);
    `lr_schedule` scales `lr` epoch by epoch (`lr_factor`); `label_smoothing` smooths a classifier's training
    loss only (`loss_of`): the validation loss that picks the weights stays the plain one.
    """
    device = torch.device(device)
    model.to(device)
    xt, tt = train.x.to(device), target_of(train, task).to(device)
    xv, tv = val.x.to(device), target_of(val, task).to(device)
    opt = _adamw(params if params is not None else model.parameters(), lr, weight_decay)
    soft = distill.teacher_logits.to(device) if distill else None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():  # the starting point competes too: a warm-started head may already be best
        start_out = sliced_forward(model, xv)
        # K from the model's output: a class may be absent from the training rows; one binary logit is K = 2
        weight = (None if task == "regression" else
                  class_weights(train.c, 2 if task == "binary" else start_out.shape[1], class_weight))
        weight = None if weight is None else weight.to(device)
        best = loss_of(start_out, tv, task, weight).item()
    hist, best_state, since_best = History(), copy.deepcopy(model.state_dict()), 0
    with seeded(seed, device):  # dropout masks: reproducible, and the caller's RNG left as it was
        for epoch in range(1, epochs + 1):
            if stop is not None:
                stop()  # raises on a signal's stop request: the caller's runs unwind and end KILLED
            opt.param_groups[0]["lr"] = lr * lr_factor(lr_schedule, epoch, epochs)  # _adamw makes one group
            hist.train_loss.append(_epoch(model, opt, xt, tt, task, weight, batch_size, gen, distill, soft,
                                          label_smoothing))
            model.eval()
            with torch.no_grad():
                val_out = sliced_forward(model, xv)
                val_loss = loss_of(val_out, tv, task, weight).item()
            hist.val_loss.append(val_loss)
            if on_epoch is not None:
                on_epoch(epoch, {"train/loss": hist.train_loss[-1], "val/loss": val_loss}, val_out)
            if val_loss < best:
                best, since_best, hist.best_epoch = val_loss, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if patience and since_best >= patience:
                    break
    model.load_state_dict(best_state)
    hist.seconds = time.perf_counter() - start
    return hist


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The share of the learning rate that epoch `epoch` (1..epochs) trains at (`train.lr_schedule`): constant 1;
    cosine from 1 at the first epoch towards 0 at the last, 0.5 * (1 + cos(pi * (epoch - 1) / epochs));
    flat_cosine 1 for the first half of the epochs, then that cosine over the second half (RealMLP's
    flat-then-anneal). The horizon is `epochs`, not where early stopping ends: pair a schedule with a patience
    long enough to reach the anneal, or none (the best epoch's weights are kept either way)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    if schedule == "flat_cosine":
        flat = epochs // 2
        return 1.0 if epoch <= flat else 0.5 * (1 + math.cos(math.pi * (epoch - 1 - flat) / (epochs - flat)))
    raise ValueError(f"learning-rate schedule must be constant, cosine or flat_cosine, got {schedule!r}")


def _adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable ones of `params`."""
    params = [p for p in params if p.requires_grad]
    try:  # fused AdamW: one kernel for all parameters (~15% faster here); older builds lack it on CPU
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, xt: torch.Tensor, tt: torch.Tensor, task: str,
           weight: torch.Tensor | None, batch_size: int, gen: torch.Generator, distill: Distill | None,
           soft: torch.Tensor | None, smoothing: float = 0.0) -> float:
    """One pass over the training rows (xt, tt) in the order `gen` draws; their mean training loss."""
    model.train()
    perm = torch.randperm(len(xt), generator=gen).to(xt.device)
    losses, sizes = [], []
    for i in range(0, len(xt), batch_size):
        # a gather per batch, not one per epoch: as fast (bench/bench_fit.py), and it never holds a
        # shuffled copy of the training rows (0.7x the data, in every worker process)
        rows = perm[i:i + batch_size]
        if len(rows) < 2 and i > 0:  # a trailing batch of one breaks BatchNorm and adds only noise
            continue
        loss = batch_loss(model, xt[rows], tt[rows], task, weight, distill, None if soft is None else soft[rows],
                          smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())  # stays on the device: no sync per batch
        sizes.append(len(rows))
    weights = torch.tensor(sizes, dtype=losses[0].dtype, device=xt.device)
    return float(torch.stack(losses) @ weights) / sum(sizes)


def batch_loss(model: nn.Module, xb: torch.Tensor, tb: torch.Tensor, task: str, weight: torch.Tensor | None = None,
               distill: Distill | None = None, soft: torch.Tensor | None = None,
               smoothing: float = 0.0) -> torch.Tensor:
    """The training loss of one batch. An ensemble (the MLP with model.ensemble k > 1) trains as TabM does: the
    mean of its members' own losses (`member_outputs`, each member's output against the target), not the loss
    of their mean output, which would let the members lean on each other instead of each fitting the data."""
    members = getattr(model, "member_outputs", None)
    k = getattr(model, "ensemble", 1)
    if members is None or k == 1:
        out = model(xb)
    else:  # (N, k, out) -> (N * k, out), member j of row i at i * k + j; its target and soft labels repeated
        out = members(xb).flatten(0, 1)
        tb = tb.repeat_interleave(k)
        soft = None if soft is None else soft.repeat_interleave(k, dim=0)
    if distill:
        return distill.loss(out, soft, tb, task, weight, smoothing)
    return loss_of(out, tb, task, weight, smoothing)


EVAL_ROWS = 8192  # rows a forward pass without gradients takes at once


def sliced_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) in slices of EVAL_ROWS rows, where x already is: its hidden activations (width x 4 bytes a
    row and layer, 25x a 10-feature row at width 256) then never exist for a whole split at once, only for
    one slice (8 MB a layer), whatever the number of rows. Call under torch.no_grad()."""
    return torch.cat([model(x[i:i + EVAL_ROWS]) for i in range(0, len(x), EVAL_ROWS)])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Raw model output for `x`, on the CPU: (N, out)."""
    model.to(device).eval()
    return torch.cat([model(x[i:i + EVAL_ROWS].to(device)).float().cpu() for i in range(0, len(x), EVAL_ROWS)])
