"""Head-swap contracts on the pipeline's MLP and on user-style models: the head is found wherever it
sits, output shapes, backbone untouched, output activations removed, warm_start == threshold."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import user_models as um
from torch import nn
from torch.nn import functional as F

from pipeline import data
from pipeline.config import UserError
from pipeline.model import MLP, architecture, track
from pipeline.surgery import (add_dropout, build, edges_before_activation, find_head, fit_warm_start_scale,
                              freeze_backbone, new_head, swap_head, warm_start_head, warm_start_logits)


def brought(model: nn.Module) -> nn.Module:
    """A user-style model as the pipeline holds it: with a recipe that surgery records into."""
    return track(model, {"kind": "test"})


MODELS = {  # factory, head name, trailing activation, hidden activation modules
    "mlp": (lambda: MLP(10, 16, 2), "head", None, ["body.1", "body.3"]),
    "attr": (lambda: brought(um.AttrNet(10)), "fc3", None, ["act1", "act2"]),
    "seq": (lambda: brought(um.SeqNet(10)), "net.4", None, ["net.1", "net.3"]),
    "dict": (lambda: brought(um.DictNet(10)), "blocks.heads.value", None, ["blocks.encoder.1"]),
    "functional": (lambda: brought(um.FunctionalNet(10)), "fc2", None, []),
    "batchnorm": (lambda: brought(um.BNNet(10)), "regressor", None, ["layers.2", "layers.5"]),
    "sigmoid": (lambda: brought(um.SigmoidNet(10)), "out", "squash", ["body.1"]),
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_head_found_swapped_and_backbone_untouched(kind, k):
    factory, name, activation, hidden = MODELS[kind]
    torch.manual_seed(0)
    model = factory()
    head = find_head(model, 10)
    assert (head.name, head.activation, head.hidden_activations) == (name, activation, hidden)
    if head.activation:
        swap_head(model, head.activation, nn.Identity())
    before = {n: p.clone() for n, p in model.state_dict().items() if not n.startswith(name + ".")}
    swap_head(model, name, new_head(head.in_features, k))
    out = model.eval()(torch.randn(7, 10))
    assert tuple(out.shape) in ({(7, 1), (7,)} if k == 2 else {(7, k)})
    after = model.state_dict()
    assert all(torch.equal(v, after[n]) for n, v in before.items())
    if kind == "mlp":
        build(architecture(model)).load_state_dict(after)  # strict: the recorded surgery recreates every layer


@pytest.mark.parametrize("factory, message", [
    (lambda: um.MultiOutput(10), "output has shape (4, 3)"),
    (lambda: um.NoLinear(10), "no nn.Linear layer"),
    (lambda: um.FunctionalSigmoid(10), "not the output of its last nn.Linear 'fc'"),
    (lambda: um.AttrNet(5), "does not accept 10 input features"),
])
def test_models_that_cannot_be_converted_are_refused_clearly(factory, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_head(factory(), 10)


def test_head_override_and_its_errors():
    model = brought(um.AttrNet(10))
    assert find_head(model, 10, "fc3").name == "fc3"
    with pytest.raises(UserError, match="'act1' is a ReLU, not an nn.Linear"):
        find_head(model, 10, "act1")
    with pytest.raises(UserError, match="'fc2' has 16 outputs"):
        find_head(model, 10, "fc2")


def test_freeze_backbone_trains_only_the_head():
    model = swap_head(MLP(4, 8, 2), "head", new_head(8, 3))
    params = freeze_backbone(model, "head")
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    assert not any(p.requires_grad for p in model.body.parameters())


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("n_edges", [1, 2, 4])
def test_warm_start_equals_threshold_before_training(kind, n_edges):
    """Any weights will do: the identity holds for every regressor, trained or not."""
    factory, name, activation, _ = MODELS[kind]
    torch.manual_seed(1)
    regressor = factory().eval()
    x, x_other = torch.randn(400, 10), torch.randn(400, 10)
    with torch.no_grad():
        r, r_other = regressor(x).reshape(-1).double(), regressor(x_other).reshape(-1).double()
    # edges from other rows: no output of `x` sits on an edge, so the comparison is exact
    edges = np.quantile(r_other.numpy(), np.arange(1, n_edges + 1) / (n_edges + 1))
    threshold = data.to_classes(r.numpy(), edges)

    model = copy.deepcopy(regressor)
    head = find_head(model, 10)
    act = model.get_submodule(head.activation) if head.activation else None
    if head.activation:
        swap_head(model, head.activation, nn.Identity())
    inner = edges_before_activation(act, edges)
    with torch.no_grad():
        z_val = model(x_other).reshape(-1)
    scale = fit_warm_start_scale(z_val, torch.from_numpy(data.to_classes(r_other.numpy(), edges)), inner)
    swap_head(model, head.name, warm_start_head(model.get_submodule(head.name), inner, scale))
    with torch.no_grad():
        logits = model(x)
    pred = (logits.reshape(-1) > 0).long().numpy() if n_edges == 1 else logits.argmax(1).numpy()
    assert np.array_equal(pred, threshold)
    assert len(np.unique(threshold)) == n_edges + 1  # every class occurs: the test is not vacuous


def test_warm_start_logits_match_the_head_and_the_scale_minimises_log_loss():
    torch.manual_seed(0)
    model = MLP(10, 16, 2).eval()
    x = torch.randn(300, 10)
    with torch.no_grad():
        r = model(x).reshape(-1)
    edges = np.quantile(r.numpy(), [0.3, 0.7]) + 1e-3
    c = torch.from_numpy(data.to_classes((r + 0.05 * torch.randn(300)).numpy(), edges))
    s = fit_warm_start_scale(r, c, edges)
    swap_head(model, "head", warm_start_head(model.head, edges, s))
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), warm_start_logits(r, edges, s), rtol=1e-4, atol=1e-4)

    def loss(scale):
        return F.cross_entropy(warm_start_logits(r, edges, scale), c).item()

    assert loss(s) <= min(loss(s * 1.3), loss(s / 1.3))


def test_dropout_goes_before_the_head_and_after_hidden_activation_modules():
    torch.manual_seed(0)
    model = brought(um.AttrNet(10))
    head = find_head(model, 10)
    new_name, warning = add_dropout(model, head, p_head=0.5, p_hidden=0.3)
    assert warning is None and new_name == "fc3.1"
    assert isinstance(model.fc3[0], nn.Dropout) and isinstance(model.act1[1], nn.Dropout)
    assert find_head(model, 10).name == "fc3.1"
    x = torch.randn(64, 10)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout active in training
    model.eval()
    assert torch.equal(model(x), model(x))

    functional = brought(um.FunctionalNet(10))
    _, warning = add_dropout(functional, find_head(functional, 10), 0.5, 0.3)
    assert "hidden dropout cannot be added" in warning
    assert isinstance(functional.fc2[0], nn.Dropout)


def test_recorded_surgery_rebuilds_a_brought_model(tmp_path):
    from pipeline.model import load_user_model

    spec = f"{um.__file__}:AttrNet"
    model = load_user_model(spec, '{"input_dim": 10}', "")
    head = find_head(model, 10)
    add_dropout(model, head, 0.2, 0.1)
    swap_head(model, "fc3.1", new_head(16, 4))
    rebuilt = build(architecture(model))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(5, 10)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_the_record_travels_with_deepcopy_and_through_save_state(tmp_path):
    """A model's record (recipe, start, rule) is one Record: a deep copy has its own equal one, and save_state /
    load_state bring all three back; the weights moved after mark_start, the start did not."""
    from pipeline.model import Record, load_state, mark_start, record_of, save_state, set_rule

    model = MLP(4, 8, 1)
    swap_head(model, "head", new_head(8, 3))
    mark_start(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    set_rule(model, {"temperature": 1.5, "offsets": [0.0, 0.2, 0.0], "ordinal": False})
    copied = copy.deepcopy(model)
    assert isinstance(record_of(copied), Record) and record_of(copied) is not record_of(model)
    save_state(copied, tmp_path / "state")
    loaded = load_state(tmp_path / "state", build)
    for other in (copied, loaded):
        mine, theirs = record_of(model), record_of(other)
        assert (theirs.recipe, theirs.rule) == (mine.recipe, mine.rule)
        assert all(torch.equal(theirs.start[k], v) for k, v in mine.start.items())
    assert not torch.equal(record_of(loaded).start["head.weight"], loaded.head.weight)


def test_a_start_shared_with_another_runs_weights_is_saved_once_and_read_back_from_them(tmp_path):
    """A fine-tune's start is its baseline's backbone and a new head: weights.pt keeps the head alone and names
    the run whose weights hold the rest; start_of reads them from there and the whole start comes back."""
    from pipeline.model import load_state, mark_start, record_of, save_state, start_of

    torch.manual_seed(0)
    regressor = MLP(4, 8, 1)
    baseline_weights = {k: v.clone() for k, v in regressor.state_dict().items()}
    model = swap_head(regressor, "head", new_head(8, 3))
    mark_start(model, ("run-of-baseline", baseline_weights))
    start = {k: v.clone() for k, v in record_of(model).start.items()}
    with torch.no_grad():  # the whole network trains: nothing of the start stays in the weights
        for p in model.parameters():
            p.add_(0.5)
    save_state(model, tmp_path / "state")
    saved = torch.load(tmp_path / "state" / "weights.pt", weights_only=True)
    assert sorted(saved["start"]) == ["head.bias", "head.weight"]
    assert saved["start_from"]["run"] == "run-of-baseline" and "body.0.weight" in saved["start_from"]["keys"]
    asked = []
    loaded = load_state(tmp_path / "state", build, lambda run: asked.append(run) or baseline_weights)
    assert asked == []  # not before the start is asked for
    assert sorted(start_of(loaded)) == sorted(start)
    assert all(torch.equal(start_of(loaded)[k], v) for k, v in start.items())
    assert asked == ["run-of-baseline"]
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_a_model_whose_start_shares_a_gone_run_loads_and_serves_only_its_start_needs_that_run(tmp_path):
    """Exporting or serving a head-swap run reads its own state alone; only tune (start_of) needs the baseline's."""
    from pipeline.config import UserError
    from pipeline.model import load_state, mark_start, save_state, start_of

    regressor = MLP(4, 8, 1)
    baseline_weights = {k: v.clone() for k, v in regressor.state_dict().items()}
    model = swap_head(regressor, "head", new_head(8, 3))
    mark_start(model, ("gone-run", baseline_weights))
    save_state(model, tmp_path / "state")

    def gone(run: str) -> dict:
        raise UserError(f"this model's starting weights are shared with run {run}, whose state/ is gone")

    loaded = load_state(tmp_path / "state", build, gone)
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(UserError, match="gone-run"):
        start_of(loaded)


def test_a_served_model_is_saved_without_its_start(tmp_path):
    from pipeline.model import mark_start, save_state

    model = swap_head(MLP(4, 8, 1), "head", new_head(8, 3))
    mark_start(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    save_state(model, tmp_path / "state", with_start=False)
    saved = torch.load(tmp_path / "state" / "weights.pt", weights_only=True)
    assert "start" not in saved and torch.equal(saved["head.weight"], model.head.weight)


@pytest.mark.parametrize("n_edges", [1, 2, 4])
def test_warm_start_stays_exact_for_large_raw_targets(n_edges):
    """A regressor of raw prices: its bias carries a 1e5 offset that float32 must not cancel badly."""
    torch.manual_seed(0)
    model = MLP(10, 16, 2).eval()
    with torch.no_grad():
        model.head.weight.mul_(1000.0)
        model.head.bias.fill_(1e5)
        x, x_other = torch.randn(20000, 10), torch.randn(2000, 10)
        r, r_other = model(x).reshape(-1).double(), model(x_other).reshape(-1).double()
    edges = np.quantile(r_other.numpy(), np.arange(1, n_edges + 1) / (n_edges + 1))
    threshold = data.to_classes(r.numpy(), edges)
    scale = fit_warm_start_scale(r_other, torch.from_numpy(data.to_classes(r_other.numpy(), edges)), edges)
    swap_head(model, "head", warm_start_head(model.head, edges, scale))
    with torch.no_grad():
        logits = model(x)
    pred = (logits.reshape(-1) > 0).long().numpy() if n_edges == 1 else logits.argmax(1).numpy()
    # rows within float32 resolution of an edge (|r - e| < 1e-2 at r ~ 1e5) may tie either way
    near = np.min(np.abs(r.numpy()[:, None] - edges[None, :]), axis=1) < 1e-2
    assert np.array_equal(pred[~near], threshold[~near]) and near.sum() < 20
