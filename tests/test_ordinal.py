"""Ordinal strategies: the cumulative link head starts exactly at threshold, the CORN head gives valid
probabilities and its loss, both rebuild from their recipe, and every later stage works on them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import user_models as um
from conftest import exported_predictions, invoke, runs_of, settled, tiny_args, tiny_config
from torch import nn
from torch.nn import functional as F

from pipeline import checkpoint, data, decision, metrics
from pipeline.model import MLP, architecture, load_user_model
from pipeline.stages import classifier_from
from pipeline.surgery import (CornHead, CumulativeLinkHead, add_dropout, cumulative_link_head,
                              cumulative_link_log_proba, drop_blocks, find_head, freeze_backbone, recorded_head,
                              slim_width, swap_head)
from pipeline.train import predict


def fitted_regressor(d: data.Prepared) -> nn.Module:
    """The pipeline's MLP with a least-squares head on its random features: a real regressor in a blink."""
    torch.manual_seed(0)
    model = MLP(d.n_features, 16, 2)
    with torch.no_grad():
        h = model.body(d.train.x).double()
        a = torch.cat([h, torch.ones(len(h), 1, dtype=torch.float64)], 1)
        coef = torch.linalg.lstsq(a, d.train.y.double().reshape(-1, 1)).solution.reshape(-1)
        model.head.weight.copy_(coef[:-1].reshape(1, -1))
        model.head.bias.copy_(coef[-1:])
    return model


def classifier(kind: str, k: int = 3) -> nn.Module:
    """A brought model (imported from its file, so its recipe rebuilds it) with an ordinal head."""
    torch.manual_seed(0)
    model = load_user_model(f"{um.__file__}:AttrNet", '{"input_dim": 10}', "")
    if kind == "cumulative_link":
        head = cumulative_link_head(model.fc3, np.linspace(-0.5, 0.5, k - 1), 0.3)
    else:
        head = CornHead(16, k)
    return swap_head(model, "fc3", head)


@pytest.mark.parametrize("k", [2, 3])
def test_cumulative_link_before_training_equals_threshold(k):
    d = data.prepare(tiny_config(**{"data.classes": f"quantile:{k}"}).data, 0)
    regressor = fitted_regressor(d)
    head = find_head(regressor, d.n_features)
    ordinal, _ = classifier_from(regressor, head, d, "cpu", "cumulative_link")
    threshold, _ = classifier_from(regressor, head, d, "cpu", "warm_start")  # the threshold strategy's model
    for split in (d.val, d.test):
        median = decision.median_classes(metrics.probabilities(predict(ordinal, split.x), k))
        cut = metrics.probabilities(predict(threshold, split.x), k).argmax(1)
        assert np.array_equal(median, cut)
        assert len(np.unique(cut)) == k  # every class occurs: the comparison is not vacuous


def test_cumulative_link_median_is_the_regressor_cut_for_any_scale():
    r = torch.tensor([-1e4, -2.0, -0.5, 0.0, 0.3, 0.5, 1.5, 1e4]).reshape(-1, 1)
    cuts = torch.tensor([-1.0, 0.0, 1.0])
    cut = (r > cuts).sum(1).numpy()  # an r on a cut goes to the lower class, as data.to_classes does
    for scale in (1e-3, 1.0, 1e3):
        proba = torch.softmax(cumulative_link_log_proba(r, cuts, scale).double(), 1).numpy()
        assert np.all(np.isfinite(proba)) and np.array_equal(decision.median_classes(proba), cut)


def test_cumulative_link_probabilities_are_the_cumulative_model():
    torch.manual_seed(0)
    r, cuts, scale = torch.randn(50, 1).double() * 3, torch.tensor([-1.0, -0.2, 0.1, 2.0]).double(), 0.7
    log_p = cumulative_link_log_proba(r, cuts, scale)
    torch.testing.assert_close(torch.cumsum(log_p.exp(), 1)[:, :-1], torch.sigmoid((cuts - r) / scale))
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("k", [3, 5])
def test_corn_probabilities_are_valid(k):
    torch.manual_seed(0)
    head = CornHead(8, k)
    with torch.no_grad():
        head.linear.weight.mul_(20.0)  # large logits too: no log(0), no NaN
    p = head(torch.randn(200, 8)).exp()
    assert p.shape == (200, k) and torch.all(p >= 0)
    torch.testing.assert_close(p.sum(1), torch.ones(200))


def test_corn_cross_entropy_is_the_sum_of_conditional_binary_losses():
    torch.manual_seed(0)
    head, x, y = CornHead(8, 4), torch.randn(60, 8), torch.randint(0, 4, (60,))
    f = head.linear(x)
    corn = sum(F.binary_cross_entropy_with_logits(f[y >= j, j], (y[y >= j] > j).float(), reduction="sum")
               for j in range(3)) / len(y)
    torch.testing.assert_close(F.cross_entropy(head(x), y), corn)


@pytest.mark.parametrize("kind", ["cumulative_link", "corn"])
def test_ordinal_heads_rebuild_from_their_recorded_architecture(kind):
    model = classifier(kind)
    rebuilt = checkpoint.rebuild(architecture(model))
    rebuilt.load_state_dict(model.state_dict())  # strict: the recorded op recreates every layer
    x = torch.randn(9, 10)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("kind", ["cumulative_link", "corn"])
def test_slim_width_prunes_the_inputs_of_the_ordinal_heads_linear(kind):
    model = classifier(kind)
    head = find_head(model, 10, recorded_head(model), n_out=3)
    assert head.name == "fc3"
    slim_width(model, head, 0.5, 10)
    assert model.fc3.linear.in_features == 8 and model.fc3.in_features == 8
    x = torch.randn(5, 10)
    rebuilt = checkpoint.rebuild(architecture(model))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("kind", ["cumulative_link", "corn"])
def test_dropout_and_freezing_find_the_ordinal_head(kind):
    model = classifier(kind)
    new_name, _ = add_dropout(model, find_head(model, 10, n_out=3), 0.3, 0.1)
    assert recorded_head(model) == new_name == "fc3.1"
    head = find_head(model, 10, recorded_head(model), n_out=3)  # how slim and tune find it
    trainable = freeze_backbone(model, head.name)
    assert {id(p) for p in trainable} == {id(p) for p in model.fc3[1].parameters()}


def test_drop_blocks_keeps_an_ordinal_head():
    torch.manual_seed(0)
    model = swap_head(MLP(10, 16, 3), "head", CornHead(16, 4))
    drop_blocks(model, 1)
    rebuilt = checkpoint.rebuild(architecture(model))
    rebuilt.load_state_dict(model.state_dict())
    assert isinstance(rebuilt.head, CornHead) and len(rebuilt.body) == 4 and rebuilt(torch.randn(2, 10)).shape == (2, 4)


def strategy_runs(experiment: str) -> dict:
    return {r.data.tags["strategy"]: r for r in runs_of(experiment)
            if r.data.tags["stage"] == "head_swap" and "strategy" in r.data.tags}


@pytest.mark.slow
def test_convert_runs_both_ordinal_strategies(experiment):
    result = invoke("convert", *tiny_args(experiment, "--strategies", "cumulative_link,corn",
                                          "--set", "slim.keep_ratios=0.5", "--set", "tune.n_trials=1"))
    assert result.exit_code == 0, result.output
    runs = strategy_runs(experiment)
    assert set(runs) == {"cumulative_link", "corn"} and settled(runs_of(experiment))
    assert "cumulative_link.scale" in runs["cumulative_link"].data.params
    assert runs["corn"].data.metrics["test/log_loss"] < np.log(3)  # trained: better than uniform
    for run in runs.values():  # both heads make a servable model from the run's state (reg2cls export)
        assert exported_predictions(run.info.run_id).shape == (1, 1 + 3)  # label and three probabilities


@pytest.mark.slow
def test_a_brought_model_converts_with_both_ordinal_strategies(experiment, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "attr.pt"
    torch.save(um.AttrNet(10).state_dict(), weights)
    brought = invoke("baseline", *tiny_args(experiment, "--model", f"{um.__file__}:AttrNet", "--model-kwargs",
                                            '{"input_dim": 10}', "--checkpoint", str(weights)))
    assert brought.exit_code == 0, brought.output
    result = invoke("head-swap", *tiny_args(experiment, "--strategies", "cumulative_link,corn"))
    assert result.exit_code == 0, result.output
    runs = strategy_runs(experiment)
    assert set(runs) == {"cumulative_link", "corn"} and all(r.info.status == "FINISHED" for r in runs.values())
    model = checkpoint.load_run_model(runs["corn"].info.run_id)
    assert isinstance(model.fc3, CornHead)


@pytest.mark.slow
def test_slim_on_a_cumulative_link_classifier(experiment):
    assert invoke("baseline", *tiny_args(experiment)).exit_code == 0
    assert invoke("head-swap", *tiny_args(experiment, "--strategies", "cumulative_link")).exit_code == 0
    result = invoke("slim", *tiny_args(experiment, "--keep-ratios", "0.5"))
    assert result.exit_code == 0, result.output
    [half] = [r for r in runs_of(experiment) if r.data.tags.get("strategy") == "width_0.5"]
    assert half.info.status == "FINISHED"
    model = checkpoint.load_run_model(half.info.run_id)
    assert isinstance(model.head, CumulativeLinkHead) and model.head.in_features == 8


def test_on_two_classes_the_ordinal_strategies_are_skipped_as_the_others_renamed(experiment):
    assert invoke("baseline", *tiny_args(experiment, "--classes", "thresholds:14")).exit_code == 0
    result = invoke("head-swap", *tiny_args(experiment, "--classes", "thresholds:14",
                                            "--strategies", "warm_start,cumulative_link,corn"))
    assert result.exit_code == 0, result.output
    assert "cumulative_link, corn skipped: with two classes they are warm_start and finetune" in result.output
    assert set(strategy_runs(experiment)) == {"warm_start"}


def test_only_ordinal_strategies_on_two_classes_are_refused_in_one_line(experiment):
    assert invoke("baseline", *tiny_args(experiment, "--classes", "thresholds:14")).exit_code == 0
    result = invoke("head-swap", *tiny_args(experiment, "--classes", "thresholds:14", "--strategies", "corn"))
    error = result.output.strip().splitlines()[-1]
    assert result.exit_code == 1 and error.startswith("Error: ") and "Traceback" not in result.output, result.output
    assert "the ordinal strategies (corn) are warm_start and finetune" in error
    assert "pass --strategies warm_start,finetune" in error
