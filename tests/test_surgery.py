"""Head-swap contracts: the head is found, output shapes, backbone untouched, warm_start == threshold."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline import data
from pipeline.config import Data
from pipeline.model import MLP
from pipeline.surgery import (find_head, fit_warm_start_scale, freeze_backbone, new_head, swap_head,
                              warm_start_head, warm_start_logits)
from pipeline.train import fit, predict


class Nested(nn.Module):
    """Head two levels down, inside a ModuleDict inside a Sequential."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.ModuleDict({"out": nn.Linear(8, 1)}))

    def forward(self, x):
        return self.blocks[2]["out"](self.blocks[1](self.blocks[0](x)))


@pytest.mark.parametrize("model, name", [(MLP(4, 8, 2), "head"), (Nested(), "blocks.2.out"),
                                         (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), "2")])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_swap_gives_k_logits_and_leaves_the_backbone_alone(model, name, k):
    assert find_head(model, 4) == name
    before = {n: p.clone() for n, p in model.named_parameters() if not n.startswith(name + ".")}
    swap_head(model, name, new_head(8, k))
    out = model(torch.randn(7, 4))
    assert out.shape == ((7, 1) if k == 2 else (7, k))
    after = dict(model.named_parameters())
    assert all(torch.equal(p, after[n]) for n, p in before.items())


def test_freeze_backbone_trains_only_the_head():
    model = swap_head(MLP(4, 8, 2), "head", new_head(8, 3))
    params = freeze_backbone(model, "head")
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    assert not any(p.requires_grad for p in model.body.parameters())


@pytest.fixture(scope="module")
def regressor_and_data():
    d = data.prepare(Data(source="synthetic:friedman1?rows=300&noise=0.5"), seed=0)
    torch.manual_seed(0)
    model = MLP(d.n_features, 16, 2)
    fit(model, d.train, d.val, "regression", epochs=20, batch_size=32, lr=3e-3)
    return model, d


@pytest.mark.parametrize("classes", ["quantile:3", "quantile:5", "thresholds:14"])
def test_warm_start_equals_threshold_before_training(regressor_and_data, classes):
    regressor, _ = regressor_and_data
    d = data.prepare(Data(source="synthetic:friedman1?rows=300&noise=0.5", classes=classes), seed=0)
    edges = (d.edges - d.y_mean) / d.y_std  # in the regressor's standardised output units
    r_test = predict(regressor, d.test.x).reshape(-1)
    threshold = data.to_classes(r_test.double().numpy() * d.y_std + d.y_mean, d.edges)
    # the data are continuous: no output sits on an edge, so the comparison is exact
    assert np.min(np.abs(r_test.double().numpy()[:, None] - edges[None, :])) > 1e-4

    scale = fit_warm_start_scale(predict(regressor, d.val.x).reshape(-1), d.val.c, edges)
    model = copy.deepcopy(regressor)
    swap_head(model, "head", warm_start_head(model.head, edges, scale))
    logits = predict(model, d.test.x)
    pred = (logits.reshape(-1) > 0).long().numpy() if d.n_classes == 2 else logits.argmax(1).numpy()
    assert np.array_equal(pred, threshold)
    torch.testing.assert_close(logits.double(), warm_start_logits(r_test, edges, scale), rtol=1e-4, atol=1e-3)


def test_warm_start_scale_minimises_validation_log_loss(regressor_and_data):
    regressor, d = regressor_and_data
    edges = (d.edges - d.y_mean) / d.y_std
    r = predict(regressor, d.val.x).reshape(-1)
    s = fit_warm_start_scale(r, d.val.c, edges)

    def loss(scale):
        return F.cross_entropy(warm_start_logits(r, edges, scale), d.val.c).item()

    assert loss(s) <= min(loss(s * 1.3), loss(s / 1.3))
