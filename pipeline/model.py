"""The pipeline's own model: a plain MLP whose last layer, `head`, emits raw values or logits.

The backbone is `body` (Linear -> activation -> Dropout blocks) and the head a single `nn.Linear`, so
a regressor (head width 1) and a classifier (head width K, or 1 for binary) differ only in `head`.
"""
from __future__ import annotations

import torch
from torch import nn

ACTIVATION = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    def __init__(self, in_dim: int, width: int = 64, depth: int = 2, out_dim: int = 1,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.kwargs = dict(in_dim=in_dim, width=width, depth=depth, out_dim=out_dim, activation=activation, dropout=dropout)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else width, width), ACTIVATION[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_dim) -> (N, out_dim); no output activation: losses take raw values / logits
        return self.head(self.body(x))


def architecture(model: MLP) -> dict:
    """What `build` needs to recreate `model`'s layers (weights travel separately)."""
    return {"class": "MLP", "kwargs": {**model.kwargs, "out_dim": model.head.out_features}}


def build(arch: dict) -> nn.Module:
    if arch.get("class") != "MLP":
        raise ValueError(f"unknown architecture {arch.get('class')!r}")
    return MLP(**arch["kwargs"])
