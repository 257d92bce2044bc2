"""Model surgery: find the regression head, swap it for a classification head, freeze the backbone.

The head is found by running one forward pass with hooks, so it works whatever the model calls its
layers. `warm_start_head` builds a classification head from the regression head so that, before any
training, its argmax equals the regressor's output cut at the class edges.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def find_head(model: nn.Module, n_features: int) -> str:
    """Dotted name of the last nn.Linear called in a forward pass (the regression head)."""
    called: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(lambda mod, i, o: called.append(names[mod]))
               for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, n_features, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not called:
        from .config import UserError

        raise UserError("no nn.Linear layer runs in the model's forward pass; name the head with --head")
    return called[-1]


def swap_head(model: nn.Module, name: str, new_head: nn.Module) -> nn.Module:
    """Replace the submodule `name` (dotted) by `new_head` in its parent, in place; returns the model."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit():
        parent[int(child)] = new_head
    else:
        setattr(parent, child, new_head)
    return model


def new_head(in_features: int, n_classes: int) -> nn.Linear:
    """A randomly initialised classification head: K logits, or one logit when binary."""
    return nn.Linear(in_features, 1 if n_classes == 2 else n_classes)


def freeze_backbone(model: nn.Module, head_name: str) -> list[nn.Parameter]:
    """Freeze every parameter outside the head; returns the head's (trainable) parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    head_params = list(model.get_submodule(head_name).parameters())
    for p in head_params:
        p.requires_grad_(True)
    return head_params


def unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def _edge_offsets(edges: np.ndarray) -> torch.Tensor:
    """(K,) offsets sum_{j<k} e_j: 0, e_1, e_1+e_2, ... (edges in the regressor's output units)."""
    return torch.tensor(np.concatenate([[0.0], np.cumsum(edges)]), dtype=torch.float64)


def warm_start_logits(r: torch.Tensor, edges: np.ndarray, scale: float) -> torch.Tensor:
    """Logits that the warm-start head gives for regression outputs r (N,).

    logit_k = s * (k*r - sum_{j<k} e_j): neighbouring logits differ by s*(r - e_k), so the argmax is
    the number of edges below r, exactly the thresholded regressor (ties go to the lower class).
    Binary: one logit s * (r - t).
    """
    r = r.reshape(-1).double()
    if len(edges) == 1:
        return (scale * (r - float(edges[0]))).unsqueeze(1)
    k = torch.arange(len(edges) + 1, dtype=torch.float64)
    return scale * (r[:, None] * k - _edge_offsets(edges))


def fit_warm_start_scale(r: torch.Tensor, c: torch.Tensor, edges: np.ndarray) -> float:
    """The scale s > 0 minimising the log loss of warm_start_logits(r, edges, s) on (r, c).

    One-dimensional and convex in s, so a coarse log grid followed by a fine one is exact enough.
    """
    binary = len(edges) == 1

    def loss(s: float) -> float:
        logits = warm_start_logits(r, edges, s)
        if binary:
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), c.double()).item()
        return F.cross_entropy(logits, c).item()

    grid = np.logspace(-3, 4, 71)
    best = grid[int(np.argmin([loss(s) for s in grid]))]
    fine = np.linspace(best / 10 ** 0.1, best * 10 ** 0.1, 41)
    return float(fine[int(np.argmin([loss(s) for s in fine]))])


def warm_start_head(head: nn.Linear, edges: np.ndarray, scale: float) -> nn.Linear:
    """A classification head computed from the regression head `head` (out_features 1).

    With r = w.h + b: row k of the weight is s*k*w and bias_k = s*(k*b - sum_{j<k} e_j), so the new
    head's logits equal warm_start_logits(head(h), edges, scale) for every hidden vector h.
    """
    w = head.weight.detach().double().reshape(-1)
    b = head.bias.detach().double().reshape(()) if head.bias is not None else torch.zeros((), dtype=torch.float64)
    n_out = 1 if len(edges) == 1 else len(edges) + 1
    out = nn.Linear(head.in_features, n_out).to(head.weight.device)
    with torch.no_grad():
        if n_out == 1:
            weight, bias = scale * w[None, :], (scale * (b - float(edges[0]))).reshape(1)
        else:
            k = torch.arange(n_out, dtype=torch.float64)
            weight = scale * k[:, None] * w[None, :]
            bias = scale * (k * b - _edge_offsets(edges))
        out.weight.copy_(weight.to(out.weight.dtype))
        out.bias.copy_(bias.to(out.bias.dtype))
    return out
