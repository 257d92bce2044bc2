"""The built-in regressor's options (model.embedding, model.ensemble): each converts end to end, head swap, slim
and tune included, and its recipe rebuilds the same model without data."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import tabm
import torch
from conftest import invoke, runs_of, settled, tiny_args
from torch import nn

from pipeline import config, decision, registry, tracking
from pipeline.config import STRATEGIES, UserError
from pipeline.data import Preprocessor
from pipeline.model import MLP, architecture
from pipeline.surgery import build, drop_blocks, find_head, new_head, slim_width, swap_head
from pipeline.checkpoint import load_run_model

OPTIONS = {
    "periodic": ["model.embedding=periodic"],
    "piecewise": ["model.embedding=piecewise", "model.n_bins=8"],
    "ensemble_2": ["model.ensemble=2"],
    "piecewise_ensemble_2": ["model.embedding=piecewise", "model.n_bins=8", "model.ensemble=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("option", OPTIONS, ids=list(OPTIONS))
def test_option_converts_end_to_end_and_rebuilds(experiment, option):
    sets = [a for s in [*OPTIONS[option], "slim.keep_ratios=0.5", "tune.n_trials=1"] for a in ("--set", s)]
    # the combination meets every head-swap strategy; the single options two of them, to stay fast
    every = option == "piecewise_ensemble_2"
    chosen = [] if every else ["--strategies", "warm_start,linear_probe"]
    result = invoke("convert", *tiny_args(experiment, *chosen, *sets))
    assert result.exit_code == 0, result.output
    runs = runs_of(experiment)
    assert settled(runs) and all(r.info.status == "FINISHED" for r in runs)
    ran = {r.data.tags.get("strategy") for r in runs}
    assert {"warm_start", "linear_probe", "width_0.5", "depth_-1"} <= ran
    # tune trains the chosen model's configurations, unless every fold chose one that trains nothing (threshold)
    skipped = [r for r in runs if r.data.tags["stage"] == "tune" and "tune_skipped" in r.data.tags]
    assert "trial_0" in ran or skipped
    assert set(STRATEGIES) <= ran or not every
    [base] = [r for r in runs if r.data.tags["stage"] == "baseline"]
    model = load_run_model(base.info.run_id)  # built from architecture.json, then the weights
    kwargs = architecture(model)["base"]["kwargs"]
    assert kwargs.get("embedding", "none") == ("periodic" if "periodic" in option else
                                               "piecewise" if "piecewise" in option else "none")
    assert kwargs.get("ensemble", 1) == (2 if "ensemble" in option else 1)
    if "piecewise" in option:  # the training split's bin edges travel in the recipe: 10 features, n_bins=8
        assert len(kwargs["bins"]) == 10 and all(2 <= len(b) <= 9 for b in kwargs["bins"])
    ensembled = sum(isinstance(m, tabm.LinearBatchEnsemble) for m in model.modules())
    assert ensembled == (2 if "ensemble" in option else 0)
    [half] = [r for r in runs if r.data.tags.get("strategy") == "width_0.5"]
    [probe] = [r for r in runs if r.data.tags.get("strategy") == "linear_probe"]
    # the servable model `export` makes from the probe's state answers as the model rebuilt from it
    meta = json.loads(tracking.read_artifact(probe.info.run_id, "state/meta.json"))
    rows = registry.example_input(meta["preprocessor"])
    served = mlflow.pyfunc.load_model(registry.export(probe.info.run_id)).predict(rows)
    x = torch.from_numpy(Preprocessor(**meta["preprocessor"]).transform(rows))
    proba, _ = decision.outputs(load_run_model(probe.info.run_id), x, "cpu", len(meta["class_names"]))
    np.testing.assert_allclose(served[[f"proba_{c}" for c in meta["class_names"]]].to_numpy(), proba, rtol=1e-5)
    assert half.data.metrics["cost/params"] < probe.data.metrics["cost/params"]


@pytest.mark.parametrize("kwargs", [{"ensemble": 3}, {"embedding": "periodic", "ensemble": 2}],
                         ids=["ensemble", "periodic_ensemble"])
def test_slimming_an_ensemble_halves_every_hidden_layer_and_rebuilds(kwargs):
    torch.manual_seed(0)
    model = swap_head(MLP(10, 16, 2, **kwargs), "head", new_head(16, 3))
    slim_width(model, find_head(model, 10, n_out=3), 0.5, 10)
    layers = [m for m in model.modules() if isinstance(m, tabm.LinearBatchEnsemble)]
    assert [(m.out_features, m.s.shape[1], m.bias.shape[1]) for m in layers] == [(8, 8, 8)] * 2
    assert layers[1].in_features == layers[1].r.shape[1] == 8 and model.head.in_features == 8
    x = torch.randn(5, 10)
    rebuilt = build(architecture(model))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_slimming_keeps_the_embeddings_whole():
    torch.manual_seed(0)
    model = swap_head(MLP(10, 16, 2, embedding="periodic", embedding_dim=4), "head", new_head(16, 3))
    embed = {k: v.clone() for k, v in model.embed.state_dict().items()}
    slim_width(model, find_head(model, 10, n_out=3), 0.5, 10)
    assert [m.out_features for m in model.body if isinstance(m, nn.Linear)] == [8, 8]
    assert model.body[0].in_features == 10 * 4
    assert all(torch.equal(v, model.embed.state_dict()[k]) for k, v in embed.items())


def test_dropping_a_block_of_an_ensemble_keeps_its_output():
    model = swap_head(MLP(10, 16, 2, ensemble=2), "head", new_head(16, 3))
    drop_blocks(model, 1)
    assert len(model.body) == 2 and model(torch.randn(4, 10)).shape == (4, 3)
    build(architecture(model)).load_state_dict(model.state_dict())


def test_a_misspelled_embedding_is_refused_in_one_line(experiment):
    result = invoke("convert", *tiny_args(experiment, "--set", "model.embedding=periodc"))
    assert result.exit_code == 1 and "unknown model.embedding 'periodc'" in result.output
    assert "periodic, piecewise" in result.output and len(result.output.strip().splitlines()) == 1
    assert runs_of(experiment) == []


@pytest.mark.parametrize("key, value, least", [("ensemble", 0, 1), ("embedding_dim", 0, 1), ("n_bins", 1, 2)],
                         ids=["ensemble", "embedding_dim", "n_bins"])
def test_an_out_of_range_model_option_is_named_in_its_error(key, value, least):
    with pytest.raises(UserError, match=f"^model.{key} must be at least {least}, got {value}$"):
        config.load(None, {f"model.{key}": value})


@pytest.mark.parametrize("width, rows, expected", [(0, 300, 64), (0, 499, 64), (0, 500, 256), (0, 99_999, 256),
                                                   (0, 100_000, 64), (16, 300, 16), (16, 10**6, 16)],
                         ids=["auto-few", "auto-below-500", "auto-from-500", "auto-below-100k", "auto-large",
                              "given-small", "given-large"])
def test_the_mlp_width_auto_rule(width, rows, expected):
    from pipeline.model import mlp_width

    assert mlp_width(width, rows) == expected
