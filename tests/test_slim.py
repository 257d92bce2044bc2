"""Slimming: really smaller models (fewer parameters, not masks), their costs, and the recommendation."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
import user_models as um
from conftest import invoke, runs_of, tiny_args
from torch import nn

from pipeline import registry, tracking
from pipeline.metrics import count_params
from pipeline.model import MLP, architecture, track
from pipeline.surgery import build, drop_blocks, find_head, new_head, slim_width, swap_head
from pipeline.checkpoint import load_run_model
from pipeline.train import Distill


def classifier(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return swap_head(MLP(10, 16, 2), "head", new_head(16, k))


def test_keep_ratio_one_keeps_the_function():
    model = classifier()
    x = torch.randn(50, 10)
    before = model.eval()(x)
    slim_width(model, find_head(model, 10, n_out=3), 1.0, 10)
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)


def test_half_width_halves_every_hidden_layer_and_rebuilds():
    model = classifier()
    slim_width(model, find_head(model, 10, n_out=3), 0.5, 10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [8, 8, 3]
    assert count_params(model) == (10 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    assert model(torch.randn(5, 10)).shape == (5, 3)
    rebuilt = build(architecture(model))
    rebuilt.load_state_dict(model.state_dict())  # strict: the recorded resize recreates every layer


def test_batchnorm_model_slims_coupled_layers():
    torch.manual_seed(0)
    model = track(um.BNNet(10), {"kind": "test"})
    swap_head(model, "regressor", new_head(16, 4))
    slim_width(model, find_head(model, 10, n_out=4), 0.5, 10)
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [8, 8]
    assert model.eval()(torch.randn(6, 10)).shape == (6, 4)


def test_dropping_a_block_shortens_the_mlp():
    model = classifier()
    drop_blocks(model, 1)
    assert len(model.body) == 2 and model(torch.randn(3, 10)).shape == (3, 3)
    build(architecture(model)).load_state_dict(model.state_dict())


def test_distillation_loss_prefers_the_teacher():
    teacher = torch.tensor([[4.0, 0.0, -4.0]] * 8)
    target = torch.zeros(8, dtype=torch.long)
    d = Distill(teacher, temperature=2.0, alpha=1.0)
    assert d.loss(teacher.clone(), teacher, target, "multiclass") < d.loss(-teacher, teacher, target, "multiclass")


@pytest.mark.slow
def test_slim_stage_logs_variants_costs_and_a_recommendation(experiment):
    result = invoke("convert", *tiny_args(experiment, "--strategies", "finetune", "--set", "slim.keep_ratios=1.0,0.5",
                                          "--set", "slim.distill=true"))
    assert result.exit_code == 0, result.output
    runs = runs_of(experiment)
    [stage] = [r for r in runs if r.data.tags["stage"] == "slim" and "strategy" not in r.data.tags]
    variants = {r.data.tags["strategy"]: r for r in runs
                if r.data.tags["stage"] == "slim" and "strategy" in r.data.tags}
    assert set(variants) == {"width_1.0", "width_0.5", "depth_-1", "width_1.0_distill", "width_0.5_distill",
                             "depth_-1_distill"}
    for run in variants.values():
        assert {"cost/params", "cost/flops", "cost/model_bytes", "cost/latency_ms_per_1k",
                "test/f1_macro"} <= set(run.data.metrics)
    half = variants["width_0.5"]
    assert half.data.metrics["cost/params"] == (10 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    assert half.data.metrics["cost/flops"] == 10 * 8 + 8 * 8 + 8 * 3
    # logged cost/params equals the parameters of the model loaded back, both ways
    assert count_params(load_run_model(half.info.run_id)) == half.data.metrics["cost/params"]
    uri = registry.export(half.info.run_id)  # a servable model made from the variant's state, on request
    assert uri == f"runs:/{half.info.run_id}/width_0_5"  # '.' is not allowed in a name
    meta = json.loads(tracking.read_artifact(half.info.run_id, "state/meta.json"))
    served = mlflow.pyfunc.load_model(uri).predict(registry.example_input(meta["preprocessor"]))
    assert served.shape == (1, 1 + 3)  # label and one probability per class
    assert stage.data.tags["recommended"] in set(variants) | {"unslimmed"}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id)}
    assert "pareto.png" in artifacts
    [parent] = [r for r in runs if r.data.tags["stage"] == "convert"]
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert set(variants) <= set(board[board["stage"] == "slim"]["strategy"])  # the leaderboard has every variant


@pytest.mark.slow
def test_slim_alone_builds_on_the_latest_head_swap(experiment):
    assert invoke("baseline", *tiny_args(experiment)).exit_code == 0
    assert invoke("head-swap", *tiny_args(experiment, "--strategies", "linear_probe")).exit_code == 0
    result = invoke("slim", *tiny_args(experiment, "--keep-ratios", "0.5"))
    assert result.exit_code == 0, result.output
    [stage] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "slim" and "strategy" not in r.data.tags]
    probe = next(r for r in runs_of(experiment) if r.data.tags.get("strategy") == "linear_probe")
    assert stage.data.tags["source_run"] == probe.info.run_id


def test_rebuild_keeps_per_channel_prelu_and_batchnorm_settings():
    """Pruned shapes are replayed onto freshly built modules, so their settings (eps, momentum) stay."""
    from pipeline.surgery import replay

    class Net(nn.Module):  # an in-test stand-in; the file-based path is covered in test_user_model
        def __init__(self):
            super().__init__()
            self.fc1, self.bn, self.act = nn.Linear(10, 16), nn.BatchNorm1d(16, eps=1e-3, momentum=0.01), nn.PReLU(16)
            self.fc2 = nn.Linear(16, 1)

        def forward(self, x):
            return self.fc2(self.act(self.bn(self.fc1(x))))

    torch.manual_seed(0)
    model = track(Net(), {"kind": "test"})  # only the ops are replayed below
    swap_head(model, "fc2", new_head(16, 3))
    model.train()(torch.randn(64, 10))  # running statistics worth keeping
    slim_width(model, find_head(model, 10, n_out=3), 0.5, 10)
    rebuilt = track(Net(), {"kind": "test"})
    for op in architecture(model)["ops"]:
        replay(rebuilt, op)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.act.num_parameters == 8 and rebuilt.bn.eps == 1e-3 and rebuilt.bn.momentum == 0.01
    x = torch.randn(5, 10)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_a_tuned_model_tuned_again_gets_new_rates_not_more_dropout():
    from pipeline.surgery import add_dropout, recorded_head, set_dropout

    model = classifier()
    add_dropout(model, find_head(model, 10, recorded_head(model), n_out=3), 0.4, 0.2)
    head = find_head(model, 10, recorded_head(model), n_out=3)
    assert head.name == "head.1"
    set_dropout(model, head, 0.1, 0.05)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    assert model.head[0].p == 0.1 and model.body[1][1].p == 0.05
    build(architecture(model)).load_state_dict(model.state_dict())


def test_a_variant_that_collapsed_to_one_output_is_flagged_and_never_on_the_front(experiment, tiny_data):
    from pipeline.stages.common import flag_collapsed
    from pipeline.stages.leaderboard import leaderboard, strategy_runs

    constant = classifier()
    with torch.no_grad():
        constant.head.weight.zero_()  # every row gets the same logits: the probabilities have no spread
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as parent:
        with mlflow.start_run(nested=True, tags={"stage": "slim", "strategy": "width_0.25"}) as run:
            assert flag_collapsed(constant, tiny_data, "cpu") == "collapsed"
            mlflow.log_metrics({"val/f1_macro": 0.9, "cost/params": 10})
        with mlflow.start_run(nested=True, tags={"stage": "slim", "strategy": "width_0.5"}):
            assert flag_collapsed(classifier(), tiny_data, "cpu") is None
            mlflow.log_metrics({"val/f1_macro": 0.5, "cost/params": 100})
    assert mlflow.get_run(run.info.run_id).data.tags["training"] == "collapsed"
    board = leaderboard(strategy_runs(parent.info.run_id)).set_index("strategy")
    assert board.loc["width_0.25", "excluded"] == "collapsed"
    assert not board.loc["width_0.25", "pareto"] and board.loc["width_0.5", "pareto"]
