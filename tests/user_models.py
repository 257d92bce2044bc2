"""Regression models written the way users write them, to bring to reg2cls in tests.

Each takes `input_dim` and `hidden_dim` and returns one value per row.
"""
import torch
from torch import nn
from torch.nn import functional as F


class AttrNet(nn.Module):
    """Layers as attributes; returns (N,) through a squeeze."""

    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(input_dim, hidden_dim), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


class SeqNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, 1))

    def forward(self, x):
        return self.net(x)


class DictNet(nn.Module):
    """The head two levels down: a ModuleDict inside a ModuleDict."""

    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.blocks = nn.ModuleDict({
            "encoder": nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.Tanh()),
            "heads": nn.ModuleDict({"value": nn.Linear(hidden_dim, 1)}),
        })

    def forward(self, x):
        return self.blocks["heads"]["value"](self.blocks["encoder"](x))


class FunctionalNet(nn.Module):
    """Hidden activations are functional calls: no module to put dropout after."""

    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class BNNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                    nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU())
        self.regressor = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.regressor(self.layers(x))


class SigmoidNet(nn.Module):
    """A regressor of a target in (0, 1), squashed by a trailing Sigmoid module."""

    def __init__(self, input_dim: int, hidden_dim: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU())
        self.out = nn.Linear(hidden_dim, 1)
        self.squash = nn.Sigmoid()

    def forward(self, x):
        return self.squash(self.out(self.body(x)))


# models that must be refused, each with a clear message
class MultiOutput(nn.Module):
    def __init__(self, input_dim: int):
        super().__init__()
        self.fc = nn.Linear(input_dim, 3)

    def forward(self, x):
        return self.fc(x)


class NoLinear(nn.Module):
    def __init__(self, input_dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(input_dim, 1))

    def forward(self, x):
        return x @ self.w


class FunctionalSigmoid(nn.Module):
    def __init__(self, input_dim: int):
        super().__init__()
        self.fc = nn.Linear(input_dim, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


class Flattening(nn.Module):
    """Flattens its output: fine for a regressor, wrong once the head has K outputs."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(input_dim, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).view(-1)
