"""Bringing your own regression model: every strategy runs on it, and every mistake is one clear line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import user_models as um
from conftest import REPO, TINY, exported_predictions, invoke, process_env, runs_of, settled, tiny_args

MODELS_FILE = um.__file__
STRATEGIES = "threshold,linear_probe,lp_ft,warm_start,scratch"


def checkpoint(tmp_path: Path, cls, **kwargs) -> str:
    torch.manual_seed(0)
    path = tmp_path / f"{cls.__name__}.pt"
    torch.save(cls(**kwargs).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def unit_csv(tmp_path_factory) -> str:
    """A target in (0, 1), for the Sigmoid regressor (its output is the raw target)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 10))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)])
    frame["target"] = 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 1])))
    path = tmp_path_factory.mktemp("data") / "unit.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AttrNet", "SeqNet", "DictNet", "FunctionalNet", "BNNet", "SigmoidNet"])
def test_convert_runs_every_strategy_on_a_brought_model(experiment, tmp_path, unit_csv, name):
    cls = getattr(um, name)
    args = tiny_args(experiment, "--model", f"{MODELS_FILE}:{name}", "--model-kwargs", '{"input_dim": 10}',
                     "--checkpoint", checkpoint(tmp_path, cls, input_dim=10), "--strategies", STRATEGIES)
    if name != "BNNet":  # one brought model goes through every stage; the others stop after one slim variant
        args += ["--set", "tune.n_trials=0", "--set", "slim.keep_ratios=0.5"]
    if name == "SigmoidNet":
        args[args.index("--data") + 1] = unit_csv
        args += ["--target-scaling", "none"]
    result = invoke("convert", *args)
    assert result.exit_code == 0, result.output
    if name == "SigmoidNet":
        assert "output activation 'squash' (Sigmoid) removed" in result.output
    runs = runs_of(experiment)
    assert settled(runs)
    by_strategy = {r.data.tags["strategy"]: r for r in runs
                   if r.data.tags["stage"] == "head_swap" and "strategy" in r.data.tags}
    assert set(by_strategy) == set(STRATEGIES.split(","))
    base = next(r for r in runs if r.data.tags["stage"] == "baseline")
    assert base.data.params["user_model.spec"].endswith(f":{name}") and "test/r2" in base.data.metrics
    assert "cost/train_seconds" in base.data.metrics and "train/loss" not in base.data.metrics  # evaluated, not trained
    # warm_start starts where threshold is; the per-epoch curve starts from the computed head
    assert "warm_start.scale" in by_strategy["warm_start"].data.params
    # a servable model of the run, its model's file travelling with it as code
    assert exported_predictions(by_strategy["lp_ft"].info.run_id).shape == (1, 1 + 3)


@pytest.mark.slow
def test_retrain_trains_a_model_without_checkpoint(experiment):
    result = invoke("convert", *tiny_args(experiment, "--model", f"{MODELS_FILE}:SeqNet", "--model-kwargs",
                                          '{"input_dim": 10, "hidden_dim": 8}', "--retrain",
                                          "--strategies", "threshold,finetune"))
    assert result.exit_code == 0, result.output
    base = next(r for r in runs_of(experiment) if r.data.tags["stage"] == "baseline")
    history = mlflow.MlflowClient().get_metric_history(base.info.run_id, "epoch/train_loss")
    assert len(history) > 1 and history[-1].value < history[0].value


@pytest.mark.slow
def test_model_uri_from_mlflow_and_from_a_reg2cls_run(experiment, store, tmp_path):
    model = um.BNNet(10)
    mlflow.set_experiment("user-registry")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="regressor", serialization_format="pickle",
                                        pip_requirements=["torch"])
    result = invoke("convert", *tiny_args(experiment, "--model-uri", info.model_uri,
                                          "--strategies", "threshold,warm_start"))
    assert result.exit_code == 0, result.output
    base = next(r for r in runs_of(experiment) if r.data.tags["stage"] == "baseline")
    # a run that reg2cls logged is reloaded from state/ (weights_only), then converted again
    again = invoke("convert", *tiny_args(experiment + "b", "--model-uri", f"runs:/{base.info.run_id}/baseline",
                                         "--strategies", "threshold,linear_probe"))
    assert again.exit_code == 0, again.output


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


KW = '{"input_dim": 10}'
BAD_MODELS = {  # id -> (arguments, with {ck}, {partial}, ... for the files below; the message expected)
    "missing-file": (["--model", "{tmp}/nope.py:Net", "--checkpoint", "{ck}"], "model file"),
    "syntax-error": (["--model", "{broken}:Net", "--checkpoint", "{ck}"], "cannot import"),
    "no-such-class": (["--model", "{models}:Nope", "--checkpoint", "{ck}"], "class 'Nope' not found in"),
    "wrong-kwargs": (["--model", "{models}:AttrNet", "--model-kwargs", '{"width": 3}', "--checkpoint", "{ck}"],
                     "AttrNet(input_dim: int, hidden_dim: int = 16) rejected --model-kwargs"),
    "bad-json": (["--model", "{models}:AttrNet", "--model-kwargs", "{bad json", "--checkpoint", "{ck}"],
                 "--model-kwargs is not valid JSON"),
    "no-checkpoint": (["--model", "{models}:AttrNet", "--model-kwargs", KW], "without --checkpoint has random weights"),
    "keys-differ": (["--model", "{models}:AttrNet", "--model-kwargs", KW, "--checkpoint", "{partial}"],
                    "missing keys fc3.bias, fc3.weight; unexpected keys extra.w"),
    "shapes-differ": (["--model", "{models}:AttrNet", "--model-kwargs", KW, "--checkpoint", "{wrong_shape}"],
                      "fc1.weight (8, 10) vs (16, 10)"),
    "too-few-inputs": (["--model", "{models}:AttrNet", "--model-kwargs", '{"input_dim": 4}', "--retrain"],
                       "does not accept 10 input features"),
    "several-outputs": (["--model", "{models}:MultiOutput", "--model-kwargs", KW, "--retrain"],
                        "a regressor must output (N,) or (N, 1)"),
    "no-linear": (["--model", "{models}:NoLinear", "--model-kwargs", KW, "--retrain"], "name the head with --head"),
    "functional-sigmoid": (["--model", "{models}:FunctionalSigmoid", "--model-kwargs", KW, "--retrain"],
                           "functional activation"),
    "flattening": (["--model", "{models}:Flattening", "--model-kwargs", KW, "--retrain"], "reshapes the head's output"),
    "unknown-head": (["--model", "{models}:AttrNet", "--model-kwargs", KW, "--retrain", "--head", "fc9"],
                     "--head 'fc9' is not a module"),
    "unknown-run": (["--model-uri", "runs:/0123456789abcdef0123456789abcdef/model"], "cannot load"),
    "checkpoint-alone": (["--checkpoint", "{ck}"], "need a model"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_models_exit_with_one_line_and_leave_no_run(case, experiment, tmp_path):
    ck = checkpoint(tmp_path, um.AttrNet, input_dim=10)
    partial = tmp_path / "partial.pt"
    kept = {k: v for k, v in torch.load(ck, weights_only=True).items() if not k.startswith("fc3")}
    torch.save(kept | {"extra.w": torch.zeros(1)}, partial)
    files = {"tmp": tmp_path, "ck": ck, "partial": partial, "models": MODELS_FILE,
             "wrong_shape": checkpoint(tmp_path / "..", um.AttrNet, input_dim=10, hidden_dim=8),
             "broken": _write(tmp_path / "broken.py", "def oops(:\n")}
    extra, message = BAD_MODELS[case]
    for name, path in files.items():  # str.format would trip over the JSON arguments' braces
        extra = [a.replace("{" + name + "}", str(path)) for a in extra]
    result = invoke("convert", *tiny_args(experiment, *extra))
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines()  # but the data summary (wrapped) and MLflow's creating a store
             if not ln.startswith(("data: ", "classes: ", "    ")) and " INFO mlflow" not in ln]
    assert len(lines) == 1 and message in lines[0], result.output
    assert runs_of(experiment) == []


def test_a_checkpoint_that_needs_pickle_is_refused_without_running_it(experiment, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"fc1.weight": torch.zeros(16, 10), "payload": Payload()}, evil)
    result = invoke("convert", *tiny_args(experiment, "--model", f"{MODELS_FILE}:AttrNet", "--model-kwargs",
                                          '{"input_dim": 10}', "--checkpoint", str(evil)))
    assert result.exit_code == 1
    assert "refused" in result.output and "can run code" in result.output
    assert not marker.exists()
    assert runs_of(experiment) == []


@pytest.mark.slow
def test_the_shipped_example_converts_its_user_model(store, tmp_path):
    """README: `python experiments/user_regressor.py user_regressor.pt` then convert with its experiment file."""
    import subprocess
    import sys

    env = process_env(store)
    ck = tmp_path / "user_regressor.pt"
    made = subprocess.run([sys.executable, "experiments/user_regressor.py", str(ck), "--epochs", "3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    converted = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--config", "experiments/user_model.yaml",
                                "--checkpoint", str(ck), "--epochs", "2", "--experiment", "example-user-model",
                                "--strategies", "threshold,warm_start", "--folds", "1", "--set", "tune.n_trials=2",
                                "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert "regression head 'fc_out' (Linear 32->1)" in converted.stdout
    assert settled(runs_of("example-user-model"))


def test_files_that_import_neighbours_and_common_checkpoint_forms_load(tmp_path):
    from pipeline.model import load_user_model

    (tmp_path / "blocks.py").write_text("from torch import nn\n\n"
                                        "def block(i, o):\n    return nn.Sequential(nn.Linear(i, o), nn.ReLU())\n")
    (tmp_path / "net.py").write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\n"
        "from torch import nn\nfrom blocks import block\n\n"
        "@dataclass\nclass Sizes:\n    hidden: int = 8\n\n"
        "class Net(nn.Module):\n    def __init__(self, input_dim: int):\n        super().__init__()\n"
        "        self.body, self.out = block(input_dim, Sizes().hidden), nn.Linear(Sizes().hidden, 1)\n\n"
        "    def forward(self, x):\n        return self.out(self.body(x))\n")
    spec = f"{tmp_path / 'net.py'}:Net"
    state = load_user_model(spec, '{"input_dim": 10}', "").state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")        # DataParallel
    torch.save({"model_state_dict": state, "epoch": torch.tensor(3)}, tmp_path / "tut.pt")  # the tutorials' form
    for ck in ("dp.pt", "tut.pt"):
        loaded = load_user_model(spec, '{"input_dim": 10}', str(tmp_path / ck))
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())


def test_warm_start_refuses_edges_its_output_activation_cannot_reach(experiment, tmp_path, unit_csv):
    """A Sigmoid regressor of a raw target: classes cut at 1.5 cannot be moved back through the Sigmoid."""
    args = tiny_args(experiment, "--model", f"{MODELS_FILE}:SigmoidNet", "--model-kwargs", '{"input_dim": 10}',
                     "--checkpoint", checkpoint(tmp_path, um.SigmoidNet, input_dim=10),
                     "--target-scaling", "standard")  # standardised edges fall outside the Sigmoid's (0, 1)
    args[args.index("--data") + 1] = unit_csv
    result = invoke("convert", *args)
    assert result.exit_code == 1 and ("warm_start cannot reproduce threshold through the output activation Sigmoid"
                                      in result.output)
    assert runs_of(experiment) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LSTMNet", "TransformerNet"])
def test_sequence_models_convert_whole_and_a_variant_that_cannot_be_slimmed_fails_alone(experiment, name):
    """Recurrent, convolutional and attention layers through a whole convert: a slim variant that pruning cannot
    cut (an LSTM's packed weights) ends as one line and a FAILED run; the leaderboard and champion still come."""
    result = invoke("convert", *tiny_args(experiment, "--model", f"{MODELS_FILE}:{name}", "--model-kwargs", KW,
                                          "--retrain", "--epochs", "3", "--strategies", "threshold,finetune",
                                          "--set", "slim.keep_ratios=0.5", "--set", "tune.n_trials=0",
                                          "--set", "compare.reference=false"))
    assert result.exit_code == 0, result.output
    assert "Leaderboard" in result.output and "Traceback" not in result.output
    variant = next(r for r in runs_of(experiment) if r.data.tags.get("strategy") == "width_0.5")
    if name == "LSTMNet":
        assert variant.info.status == "FAILED" and "failure" in variant.data.tags
        failed = [ln for ln in result.output.splitlines() if "width_0.5" in ln]
        assert len(failed) == 1 and "FAILED" in failed[0]
    else:
        assert variant.info.status == "FINISHED"


@pytest.mark.parametrize("name", ["LSTMNet", "GRUNet", "ConvNet", "TransformerNet"])
def test_sequence_models_swap_heads_and_slim_or_refuse_to(name):
    """Each layer type either slims to a model that rebuilds from its recipe, or raises (the stage contains it)."""
    from pipeline.model import architecture, load_user_model
    from pipeline.surgery import build, find_head, new_head, slim_width, swap_head

    model = load_user_model(f"{MODELS_FILE}:{name}", KW, "")
    swap_head(model, find_head(model, 10).name, new_head(8, 3))
    x = torch.randn(6, 10)
    try:
        slim_width(model, find_head(model, 10, "fc", n_out=3), 0.5, 10)
    except Exception:
        assert name == "LSTMNet"  # torch_pruning cannot cut an LSTM's packed weights
        return
    rebuilt = build(architecture(model))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


# ------------------------------------------------------------------ the brought model checked before anything trains
def least_squares_checkpoint(tmp_path: Path, data) -> str:
    """A LinearNet checkpoint fitted (least squares) on `data`'s training split, in its units."""
    x = torch.cat([data.train.x.double(), torch.ones(len(data.train.x), 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(x, data.train.y.double().reshape(-1, 1)).solution.reshape(-1)
    path = tmp_path / "linear.pt"
    torch.save({"fc.weight": w[:-1].float().reshape(1, -1), "fc.bias": w[-1:].float()}, path)
    return str(path)


def check_tags(experiment: str) -> tuple[dict, dict]:
    """The `check.*` tags of the convert run and of the baseline run."""
    runs = runs_of(experiment)
    pick = lambda stage: {k: v for k, v in next(r for r in runs if r.data.tags.get("stage") == stage  # noqa: E731
                                                 ).data.tags.items() if k.startswith("check.")}
    return pick("convert"), pick("baseline")


BRIEF = ("--strategies", "threshold", "--set", "slim.keep_ratios=none", "--set", "slim.depth=false",
         "--set", "tune.n_trials=0", "--set", "compare.reference=false")


@pytest.mark.slow
def test_a_constant_checkpoint_is_named_so_and_the_warning_reaches_the_convert_run(experiment, tmp_path):
    result = invoke("convert", *tiny_args(experiment, "--model", f"{MODELS_FILE}:Constant", "--model-kwargs", KW,
                                          "--checkpoint", checkpoint(tmp_path, um.Constant, input_dim=10), *BRIEF))
    assert result.exit_code == 0, result.output
    assert "a constant predictor" in result.stderr
    parent, base = check_tags(experiment)
    assert parent == base and "constant predictor" in parent["check.no_signal"]


def test_a_scaling_mismatch_shows_what_each_scaling_would_give(tiny_data, tmp_path):
    from pipeline import checks
    from pipeline.config import Data
    from pipeline.data import prepare
    from pipeline.model import load_user_model

    model = load_user_model(f"{MODELS_FILE}:LinearNet", KW, least_squares_checkpoint(tmp_path, tiny_data))
    assert checks.no_signal(model, tiny_data, "cpu", ("standard", "standard")) is None  # trained so: fine
    raw = prepare(Data(source=TINY["data.source"], folds="1", scaling="none"), 0)  # the same rows, unscaled
    line = checks.no_signal(model, raw, "cpu", ("none", "standard"))
    assert "its scaling does not match" in line and line.endswith(
        "pass --scaling standard --target-scaling standard, or the scaling it was trained with")


def test_a_column_that_is_the_target_in_disguise_is_called_a_leak(tmp_path):
    from pipeline import checks
    from pipeline.config import Data
    from pipeline.data import prepare

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    frame["log_price"] = frame["a"] + 0.3 * rng.normal(size=200)
    frame["price"] = np.exp(frame["log_price"])  # monotone in the target: its ranks are the target's
    frame.to_csv(tmp_path / "cars.csv", index=False)
    data = prepare(Data(source=str(tmp_path / "cars.csv"), target="log_price", folds="1"), 0)
    assert "feature 'price' alone determines the target" in checks.leak(data)
    assert checks.leak(prepare(Data(source=str(tmp_path / "cars.csv"), target="log_price", folds="1",
                                    features=("a", "b", "c")), 0)) is None


def test_a_model_that_mixes_the_rows_of_its_batch_is_caught(tiny_data):
    from pipeline import checks
    from pipeline.model import load_user_model

    mixing = load_user_model(f"{MODELS_FILE}:BatchMixingLSTM", KW, "")
    assert "depends on the other rows of its batch" in checks.batch_mixing(mixing, tiny_data, "cpu")
    assert checks.batch_mixing(load_user_model(f"{MODELS_FILE}:LSTMNet", KW, ""), tiny_data, "cpu") is None


def test_a_saved_row_index_is_named_when_the_columns_do_not_fit(experiment, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 10)), columns=[f"x{i}" for i in range(10)])
    frame["target"] = frame["x0"] + rng.normal(size=120)
    # a named index column (an unnamed one is dropped as a saved index when the table is read: data.load)
    frame.to_csv(tmp_path / "indexed.csv", index_label="index")
    args = tiny_args(experiment, "--model", f"{MODELS_FILE}:AttrNet", "--model-kwargs", KW, "--retrain")
    args[args.index("--data") + 1] = str(tmp_path / "indexed.csv")
    result = invoke("convert", *args)
    assert result.exit_code == 1
    assert "does not accept 11 input features" in result.output and "'index' looks like a row index" in \
        result.output
    assert runs_of(experiment) == []


# ------------------------------------------------------------------ a champion that loads anywhere
def user_project(folder: Path) -> str:
    """A model file as a repository holds it: importing a sibling module, which imports a package beside them."""
    (folder / "settings").mkdir(parents=True)
    (folder / "settings" / "__init__.py").write_text("from .sizes import HIDDEN\n")
    (folder / "settings" / "sizes.py").write_text("HIDDEN = 8\n")
    (folder / "blocks.py").write_text("from torch import nn\nfrom settings import HIDDEN\n\n\n"
                                      "def block(i):\n    return nn.Sequential(nn.Linear(i, HIDDEN), nn.ReLU())\n")
    (folder / "notes.py").write_text("raise SystemExit('never imported by the model')\n")
    (folder / "net.py").write_text(
        "import torch\nfrom torch import nn\n\nimport settings\nfrom blocks import block\n\n\n"
        "class Net(nn.Module):\n    def __init__(self, input_dim: int):\n        super().__init__()\n"
        "        self.body, self.out = block(input_dim), nn.Linear(settings.HIDDEN, 1)\n\n"
        "    def forward(self, x):\n        return self.out(self.body(x))\n")
    return str(folder / "net.py")


def test_the_modules_a_model_file_imports_are_found_without_running_it(tmp_path):
    from pipeline.model import local_imports

    net = user_project(tmp_path / "repo")
    assert [str(p) for p in local_imports(Path(net))] == ["blocks.py", "settings/__init__.py", "settings/sizes.py"]


@pytest.mark.slow
@pytest.mark.parametrize("home", ["beside", "elsewhere_on_the_path"])
def test_the_champion_loads_in_a_clean_process_outside_the_working_directory(experiment, tmp_path, monkeypatch, home):
    """Beside the model file, its modules travel with the champion, which then loads and predicts in a clean
    process in another folder; a module found only through this process's path cannot travel, and convert
    says so in one line instead of registering a champion that fails elsewhere."""
    for name in ("blocks", "settings", "settings.sizes"):  # another test's modules of the same names
        monkeypatch.delitem(sys.modules, name, raising=False)
    net = user_project(tmp_path / "repo")
    if home == "elsewhere_on_the_path":
        (tmp_path / "lib").mkdir()
        (tmp_path / "repo" / "blocks.py").rename(tmp_path / "lib" / "blocks.py")
        monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    result = invoke("convert", *tiny_args(experiment, "--model", f"{net}:Net", "--model-kwargs", KW, "--retrain",
                                          *BRIEF, "--set", "compare.check_load=true"))
    if home == "beside":
        assert result.exit_code == 0, result.output
        [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
        registered = parent.data.tags["registered_model"]
        code = Path(mlflow.artifacts.download_artifacts(f"models:/{registered}@champion")) / "code"
        assert {"net.py", "blocks.py", "settings", "pipeline"} <= {p.name for p in code.iterdir()}
    else:
        assert result.exit_code == 1
        assert "does not load in a clean process" in result.output and "blocks" in result.output


@pytest.mark.slow
def test_the_load_check_given_no_champion_ends_without_a_word():
    """compare starts the check before it knows whether anything will be registered (the floor can win)."""
    from pipeline import registry

    with registry.checking_loads():
        pass


@pytest.mark.slow
def test_a_load_check_that_ended_before_it_was_given_the_champion_says_why_in_one_line(tmp_path, monkeypatch):
    """The clean process starts before the champion is chosen: when it dies first (MLflow not importable under
    `python -I`), handing it the URI must not break the pipe into a traceback; its stderr is the error."""
    import time

    from pipeline import registry
    from pipeline.config import UserError

    monkeypatch.setattr(registry, "_LOAD_AND_PREDICT", "import sys; sys.exit('No module named mlflow')")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("")
    with pytest.raises(UserError, match="does not load in a clean process .*No module named mlflow"):
        with registry.checking_loads() as check:
            time.sleep(1.0)  # compare chooses and registers meanwhile; the process has ended
            check(str(tmp_path / "model"))


# ------------------------------------------------------------------ a function that builds the model
def test_a_function_builds_a_model_whose_constructor_takes_a_config_object(tmp_path):
    from pipeline.model import architecture, load_user_model
    from pipeline.surgery import build

    spec = f"{MODELS_FILE}:make_configured"
    model = load_user_model(spec, '{"input_dim": 10, "hidden_dim": 4}', "")
    assert type(model).__name__ == "ConfiguredNet" and model.net.net[0].out_features == 4
    rebuilt = build(architecture(model))  # the recipe calls the function again, as the champion does elsewhere
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(3, 10)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_a_function_that_returns_no_model_is_refused_in_one_line(tmp_path):
    from pipeline.config import UserError
    from pipeline.model import load_user_model

    (tmp_path / "factory.py").write_text("def make(input_dim):\n    return {'layers': input_dim}\n")
    with pytest.raises(UserError, match="make.* returned dict, not an nn.Module"):
        load_user_model(f"{tmp_path / 'factory.py'}:make", KW, "")
