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


# sequence models over a row's features (each feature one time step), as the time-series repositories write them
class LSTMNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 8):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        out, _ = self.lstm(x.unsqueeze(-1))  # (N, F, 1) -> (N, F, hidden)
        return self.fc(out[:, -1])


class GRUNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 8):
        super().__init__()
        self.gru = nn.GRU(1, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        _, h = self.gru(x.unsqueeze(-1))  # h: (1, N, hidden)
        return self.fc(h[-1])


class ConvNet(nn.Module):
    """A small TCN-like stack: Conv1d over the features as a sequence, pooled, then a Linear."""

    def __init__(self, input_dim: int, hidden_dim: int = 8):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, hidden_dim, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(hidden_dim, hidden_dim, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.fc(self.conv(x.unsqueeze(1)).mean(-1))  # (N, 1, F) -> (N, hidden, F) -> (N, hidden)


class TransformerNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = 8):
        super().__init__()
        self.embed = nn.Linear(1, hidden_dim)
        layer = nn.TransformerEncoderLayer(hidden_dim, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x.unsqueeze(-1))).mean(1))


class BatchMixingLSTM(nn.Module):
    """Reads the batch as one sequence (rows are time steps): a row's output depends on the rows beside it."""

    def __init__(self, input_dim: int, hidden_dim: int = 8):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden_dim)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        out, _ = self.lstm(x)  # unbatched: (L=N, input_dim) -> (N, hidden)
        return self.fc(out)


class Constant(nn.Module):
    """A checkpoint that learned nothing: the same output for every row."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.fc = nn.Linear(input_dim, 1)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x):
        return self.fc(x)


class Sizes:
    """A config object (pydantic-like) that JSON cannot build: a factory builds the model from it."""

    def __init__(self, input_dim: int, hidden_dim: int = 16):
        self.input_dim, self.hidden_dim = input_dim, hidden_dim


class ConfiguredNet(nn.Module):
    def __init__(self, config: Sizes):
        super().__init__()
        self.net = SeqNet(config.input_dim, config.hidden_dim)

    def forward(self, x):
        return self.net(x)


def make_configured(input_dim: int, hidden_dim: int = 16) -> nn.Module:
    """The factory a user writes for a constructor taking a config object: --model file.py:make_configured."""
    return ConfiguredNet(Sizes(input_dim, hidden_dim))


class LinearNet(nn.Module):
    """One nn.Linear: its least-squares weights make a checkpoint that fits without training."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.fc = nn.Linear(input_dim, 1)

    def forward(self, x):
        return self.fc(x)
