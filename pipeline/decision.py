"""The decision rule: how a classifier's raw outputs become calibrated probabilities and classes.

A rule is a plain JSON-able dict, fitted on the validation split only (never test):

    {"temperature": T, "offsets": [...], "ordinal": bool}

- probabilities = softmax(s / T), where the scores s are the model's logits, log-probabilities (ordinal
  heads), or [0, z] for one binary logit z (softmax([0, z/T]) = sigmoid(z/T)). T minimises validation log
  loss: temperature scaling (Guo et al., 2017).
- nominal (`ordinal` false): class = argmax(log p_T + offsets), K offsets with the first fixed at 0; for a
  binary model that is a threshold on the logit (`as_params` says which probability it is).
- ordinal: class = #{k : logit P_T(y > k) + offsets[k] > 0}, K-1 offsets; all zero is the median class.
  The offsets maximise validation macro-F1 by coordinate search from 0 (the identity rule), accepting only
  strict improvements, so a fitted rule never decides worse on validation than the head's own decision;
  they stay 0 when a class has fewer than MIN_CLASS_ROWS validation rows (too few to fit a cut on), and an
  ordinal head then keeps its median class, untempered (no choice among decisions is made on so few rows).

The rule travels in the model's record (model.set_rule / model.fitted_rule; model.save_state writes it as
rule.json, load_state reads it back), so logged models, later stages and the registered champion apply the same
rule. A model without one decides by the identity rule. `outputs` is the one place where a model's
probabilities and classes are made; `fit_rule` the one place a rule is fitted on a model.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import metrics
from .model import fitted_rule, set_rule

SCORE_FLOOR = -1e5   # log-scores this far below a row's best are probability 0 at any temperature searched
T_BOUNDS = (0.01, 100.0)
MAX_SWEEPS = 20      # coordinate-search rounds; each accepted step raises macro-F1, so it stops early anyway
# offsets are fitted only when every class has this many validation rows: with fewer they fit those rows'
# noise (on calibrated scores, where no rule can beat argmax on fresh rows, a rule fitted on 50 rows a class
# loses 0.014 test macro-F1, on 100 rows 0.008: bench/bench_selection.py). `cross_fitted` fits on halves with
# half this bound, so the selection score sees offsets exactly when the shipped rule has them
MIN_CLASS_ROWS = 60


def is_ordinal(model: nn.Module, n_classes: int) -> bool:
    """Whether the model decides by the median class: it has an ordinal head (surgery's cumulative_link or corn:
    modules with `ordinal = True`) and more than two classes (on two, the median and argmax decide alike)."""
    return n_classes > 2 and any(getattr(m, "ordinal", False) for m in model.modules())


def identity(n_classes: int, ordinal: bool = False) -> dict:
    """The rule that changes nothing: T = 1, offsets 0 (argmax; for ordinal heads the median class)."""
    return {"temperature": 1.0, "offsets": [0.0] * (n_classes - 1 if ordinal else n_classes), "ordinal": ordinal}


def rule_of(model: nn.Module, n_classes: int) -> dict:
    """The model's rule, or the identity rule for a model that has none."""
    rule = fitted_rule(model)
    return rule if rule is not None else identity(n_classes, is_ordinal(model, n_classes))


# ------------------------------------------------------------------ scores, probabilities, classes
def scores_of(out: torch.Tensor | np.ndarray, n_classes: int) -> np.ndarray:
    """(N, K) float64 log-scores from a model's raw output: (N, K) logits or log-probabilities as they are,
    one binary logit z as [0, z]. Shifted so each row's best is 0, with -inf (a log-probability of 0)
    floored, so every later step stays finite."""
    out = out.detach().cpu().double().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float64)
    out = out.reshape(len(out), -1)
    if n_classes == 2 and out.shape[1] == 1:
        out = np.concatenate([np.zeros_like(out), out], axis=1)
    return np.maximum(out - out.max(axis=1, keepdims=True), SCORE_FLOOR)


def scores_of_proba(proba: np.ndarray) -> np.ndarray:
    """(N, K) log-scores of probabilities another model gave (the gradient-boosting reference)."""
    with np.errstate(divide="ignore"):
        return scores_of(np.log(np.asarray(proba, np.float64)), proba.shape[1])


def tempered(scores: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) log-probabilities log softmax(scores / T)."""
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cumulative_logits(log_proba: np.ndarray) -> np.ndarray:
    """(N, K-1) logit P(y > k) for k = 0..K-2, from (N, K) log-probabilities (in log space: no 1 - cumsum
    cancellation for confident rows)."""
    below = np.logaddexp.accumulate(log_proba, axis=1)[:, :-1]                  # log P(y <= k)
    above = np.logaddexp.accumulate(log_proba[:, ::-1], axis=1)[:, ::-1][:, 1:]  # log P(y > k)
    return above - below


def decide(log_proba: np.ndarray, rule: dict) -> np.ndarray:
    """(N,) classes the rule picks from (N, K) tempered log-probabilities."""
    offsets = np.asarray(rule["offsets"], dtype=np.float64)
    if rule["ordinal"]:
        return (cumulative_logits(log_proba) + offsets > 0).sum(axis=1)
    return (log_proba + offsets).argmax(axis=1)


def median_classes(proba: np.ndarray) -> np.ndarray:
    """(N,) median class of each row's distribution: #{k : P(y > k) > 1/2}, ordinal heads' natural decision."""
    return decide(tempered(scores_of_proba(proba), 1.0), identity(proba.shape[1], ordinal=True))


def apply(rule: dict, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tempered (N, K) probabilities, (N,) decided classes) of (N, K) log-scores under `rule`."""
    log_proba = tempered(scores, rule["temperature"])
    return np.exp(log_proba), decide(log_proba, rule)


def outputs(model: nn.Module, x: torch.Tensor, device, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's tempered (N, K) probabilities and its decided classes (N,) for the rows `x`, under the
    model's rule (the identity rule when it has none)."""
    from .train import predict

    return apply(rule_of(model, n_classes), scores_of(predict(model, x, device), n_classes))


# ------------------------------------------------------------------ fitting on validation
def fit_rule(model: nn.Module, data, device) -> dict:
    """Fit the model's rule on `data.val` (a Prepared), attach it to the model (model.set_rule) and return it."""
    from .train import predict

    k = data.n_classes
    scores = scores_of(predict(model, data.val.x, device), k)
    return set_rule(model, fit_scores(scores, data.val.c.numpy(), ordinal=is_ordinal(model, k)))


def fit_scores(scores: np.ndarray, c: np.ndarray, ordinal: bool = False, min_rows: int = MIN_CLASS_ROWS) -> dict:
    """The rule fitted on validation log-scores (N, K) and classes (N,): the temperature first, then offsets.

    An ordinal head's median is not argmax, and tempering moves it (the median of p^(1/T) is not that of p),
    so for it three rules compete and the best on validation macro-F1 wins (the first of equals): the
    tempered median, the untempered median and tempered argmax. Its rule is then never below either of its
    own decisions, the median or argmax. For binary data both kinds decide alike: pass ordinal=False. Offsets
    are fitted only when every class has `min_rows` rows."""
    k = scores.shape[1]
    t = fit_temperature(scores, c)
    enough = np.bincount(c, minlength=k).min() >= min_rows  # else the offsets stay 0
    if ordinal and not enough:  # too few rows to choose between decisions: the head's own median, untempered
        return identity(k, ordinal=True)
    tries = [(t, True), (1.0, True), (t, False)] if ordinal else [(t, False)]
    best, best_f1 = None, -1.0
    for temperature, kind in tries:
        rule = identity(k, kind) | {"temperature": temperature}
        if enough:
            rule = fit_offsets(tempered(scores, temperature), c, rule)
        f1 = metrics.f1_macro(c, decide(tempered(scores, temperature), rule), k)
        if f1 > best_f1:
            best, best_f1 = rule, f1
    return best


def cross_fitted(scores: np.ndarray, c: np.ndarray, ordinal: bool = False, seed: int = 0) -> np.ndarray:
    """(N,) classes for the validation rows where each row is decided by a rule fitted on the OTHER half of
    them (two stratified halves, seeded): the score every selection uses. A rule fitted and scored on the same
    rows flatters trained rows against `threshold`, whose identity rule fits nothing (on calibrated noise a
    fitted rule gains +0.03 validation macro-F1 at 50 rows a class and loses on test: bench/bench_selection.py).
    The rule the model keeps is still fitted on all validation rows (`fit_scores`)."""
    half = np.zeros(len(c), dtype=bool)
    rng = np.random.default_rng(seed)
    for k in np.unique(c):  # stratified: each half holds about half of every class
        rows = rng.permutation(np.flatnonzero(c == k))
        half[rows[: len(rows) // 2]] = True
    pred = np.empty(len(c), dtype=np.int64)
    for fit_on in (half, ~half):
        rule = (fit_scores(scores[fit_on], c[fit_on], ordinal, MIN_CLASS_ROWS // 2) if fit_on.any()
                else identity(scores.shape[1], ordinal))
        pred[~fit_on] = decide(tempered(scores[~fit_on], rule["temperature"]), rule)
    return pred


def fit_temperature(scores: np.ndarray, c: np.ndarray) -> float:
    """T in [0.01, 100] minimising validation log loss of softmax(scores / T) (1-D, in log T: the loss is
    convex in 1/T for logits); 1.0 unless that lowers the loss."""
    from scipy.optimize import minimize_scalar

    def loss(log_t: float) -> float:
        return metrics.log_loss(c, np.exp(tempered(scores, math.exp(log_t))))

    found = minimize_scalar(loss, bounds=tuple(math.log(b) for b in T_BOUNDS), method="bounded",
                            options={"xatol": 1e-4})
    return float(math.exp(found.x)) if loss(found.x) < loss(0.0) else 1.0


def fit_offsets(log_proba: np.ndarray, c: np.ndarray, start: dict) -> dict:
    """`start` with its offsets moved to maximise macro-F1 on (N, K) tempered log-probabilities and classes
    `c`, one coordinate at a time (the first nominal offset stays 0: only differences matter). Each step
    takes the exact best cut for that coordinate and is kept only when the rule's own decisions score
    strictly higher, so the result never scores below `start`."""
    k = log_proba.shape[1]
    rule = {**start, "offsets": list(start["offsets"])}
    f1 = metrics.f1_macro(c, decide(log_proba, rule), k)
    coordinates = range(len(rule["offsets"])) if rule["ordinal"] else range(1, k)
    cumulative = cumulative_logits(log_proba) if rule["ordinal"] else None
    for _ in range(MAX_SWEEPS):
        improved = False
        for j in coordinates:
            offsets = np.asarray(rule["offsets"], dtype=np.float64)
            # with the other offsets fixed, row i's class is `on[i]` when offsets[j] > d[i], else `off[i]`
            if rule["ordinal"]:
                g = cumulative + offsets                                        # (N, K-1)
                off = (g > 0).sum(axis=1) - (g[:, j] > 0)                       # the other cut points passed
                on, d = off + 1, -cumulative[:, j]
            else:
                z = log_proba + offsets
                z[:, j] = -np.inf
                off, on = z.argmax(axis=1), np.full(len(z), j)                  # the best other class, or j
                d = z.max(axis=1) - log_proba[:, j]
            cut = best_cut(d, c, on, off, k, offsets[j])
            trial = {**rule, "offsets": [*rule["offsets"][:j], cut, *rule["offsets"][j + 1:]]}
            trial_f1 = metrics.f1_macro(c, decide(log_proba, trial), k)
            if trial_f1 > f1:
                rule, f1, improved = trial, trial_f1, True
        if not improved:
            break
    return rule


def best_cut(d: np.ndarray, c: np.ndarray, on: np.ndarray, off: np.ndarray, k: int, current: float) -> float:
    """The value o maximising macro-F1 of the classes `on` where d < o, `off` elsewhere, over every
    distinct way of cutting the sorted d (exact: each class's true positives and predictions under all cuts at
    once, by cumulative sums over (N, K) changes, so memory grows with N x K, not N x K^2); of equal cuts the
    one nearest `current`. Cuts lie midway between neighbouring values of d."""
    order = np.argsort(d, kind="stable")
    d, c, on, off = d[order], c[order], on[order], off[order]
    n = len(d)
    rows = np.arange(n)
    # moving row r from `off` to `on`: one prediction moves, and a true positive when either is its class
    d_pred = np.zeros((n, k), dtype=np.int32)
    d_pred[rows, on] += 1
    d_pred[rows, off] -= 1
    d_tp = np.zeros((n, k), dtype=np.int32)
    d_tp[rows, on] += c == on
    d_tp[rows, off] -= c == off
    present = np.bincount(c, minlength=k)
    tp0, pred0 = np.bincount(off[c == off], minlength=k), np.bincount(off, minlength=k)
    valid = np.flatnonzero(np.r_[True, d[1:] > d[:-1], True])  # cut after r rows only between distinct values
    tp = np.concatenate([tp0[None], tp0 + np.cumsum(d_tp, axis=0)])[valid]          # (cuts, K): r rows moved
    pred = np.concatenate([pred0[None], pred0 + np.cumsum(d_pred, axis=0)])[valid]
    denom = (pred + present).astype(np.float64)  # per class: predicted + present, as stats.f1_macro
    f1 = np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0), axis=1)
    spread = max(1.0, float(d[-1] - d[0]))
    cuts = np.where(valid == 0, d[0] - spread,
                    np.where(valid == n, d[-1] + spread,
                             (d[np.maximum(valid - 1, 0)] + d[np.minimum(valid, n - 1)]) / 2))
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - current))]])


def as_params(rule: dict) -> dict[str, str]:
    """The rule as run params: `rule.temperature`, `rule.offsets`, `rule.decision` and, for binary data, the
    `rule.threshold` on the tempered positive-class probability above which the positive class is chosen."""
    offsets = rule["offsets"]
    params = {"rule.temperature": f"{rule['temperature']:.6g}", "rule.offsets": ",".join(f"{o:.6g}" for o in offsets),
              "rule.decision": "ordinal median + offsets" if rule["ordinal"] else "argmax + offsets"}
    if len(offsets) == (1 if rule["ordinal"] else 2):  # binary: positive iff logit p_T(1) + offsets[-1] > 0
        params["rule.threshold"] = f"{0.5 * (1 - math.tanh(offsets[-1] / 2)):.6g}"  # sigmoid(-o), overflow-free
    return params
