"""A run's model moved to and from the store: `log_state` uploads a trained model's state (model.save_state:
the weights and the recipe), `load_run_model` and `rebuild` make the nn.Module again (surgery.build replays
the recipe), `load_model_uri` brings a PyTorch model already in MLflow.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from .config import UserError, first_line


def log_state(model, meta: dict | None = None, predictions: dict[str, np.ndarray] | None = None) -> int:
    """What a trained model's run keeps, uploaded in one call: `state/` (model.save_state: the one weights file
    and the recipe to rebuild it, `load_run_model`), with `meta` (the preprocessor fitted on the run's training
    rows and the class names: what `export` needs to make a servable model of it) as `state/meta.json`, and
    `predictions` (`predictions_file`) as `predictions.npz`. No MLflow model: making one costs more than the
    training of a small model, and only what is served needs it (registry.log_servable: the champion, and
    `reg2cls export` on request). Returns the size of the weights in bytes."""
    import json

    from .model import save_state

    with tempfile.TemporaryDirectory() as tmp:
        n_bytes = save_state(model, Path(tmp) / "state")
        if meta is not None:
            (Path(tmp) / "state" / "meta.json").write_text(json.dumps(meta, indent=1))
        if predictions is not None:
            np.savez(Path(tmp) / "predictions.npz", **predictions)
        mlflow.log_artifacts(tmp)
    return n_bytes


def load_run_model(run_id: str, stage: str | None = None, split_key: str | None = None):
    """The nn.Module a FINISHED run logged (of `stage` and on the split `split_key`, when given);
    a one-line UserError otherwise."""
    from mlflow.exceptions import MlflowException

    from .model import load_state

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id} not found in the tracking store {mlflow.get_tracking_uri()}") from None
    if (stage and run.data.tags.get("stage") != stage) or run.info.status != "FINISHED":
        pruned = (" (a tuning trial stopped early, pruned or killed, keeps no model; the tune run keeps the best "
                  "trial's)" if run.data.tags.get("optuna_trial") and run.info.status == "KILLED" else "")
        raise UserError(f"run {run_id} is not a finished {stage + ' ' if stage else ''}run "
                        f"(stage={run.data.tags.get('stage')}, status={run.info.status}){pruned}")
    if split_key and run.data.tags.get("split_key") != split_key:
        raise UserError(f"run {run_id} was trained on other data, target, classes, features or seed than given now; "
                        "pass the options it ran with, or leave out --baseline-run to take the newest matching one")
    with tempfile.TemporaryDirectory() as tmp:  # the copy goes with the block (else each load leaves one in /tmp)
        try:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="state", dst_path=tmp))
        except (MlflowException, OSError):
            why = run.data.tags.get("state", "artifact state/ missing")  # a tuning trial's (study.NOT_KEPT)
            raise UserError(f"run {run_id} has no model logged by reg2cls ({why})") from None
        return load_state(local, rebuild, run_weights)


def run_weights(run_id: str) -> dict:
    """The weights (a state_dict) that run `run_id` logged in its state/: what a start shared with them
    (model.mark_start's `shared_with`) reads back. One-line UserError when that run or its state is gone."""
    import io

    from . import tracking
    from .model import read_weights

    raw = tracking.read_artifact(run_id, "state/weights.pt")
    if raw is None:
        raise UserError(f"this model's starting weights are shared with run {run_id}, whose state/ is gone; "
                        "run head-swap again (reg2cls head-swap) for a run to tune from, or tune a slim or tune run")
    return read_weights(io.BytesIO(raw))[0]


def rebuild(arch: dict, state: dict | None = None):
    """surgery.build, fetching the base model from MLflow when the architecture starts from a URI; with `state`
    (a state_dict) loaded when given."""
    from .model import fold_ensemble
    from .surgery import build

    base = arch["base"]
    if base["kind"] == "ensemble":  # each member fetches its own base
        model = fold_ensemble([rebuild(member) for member in base["members"]], base["n_classes"], [])
    else:
        model = build(arch, load_model_uri(base["uri"]) if base["kind"] == "uri" else None)
    if state is not None:
        model.load_state_dict(state)
    return model


def load_model_uri(uri: str):
    """A PyTorch model already in MLflow (runs:/<id>/model, models:/<name>/<version>) as an nn.Module.

    A run logged by reg2cls is rebuilt from its state/ (no pickle). Anything else goes through
    mlflow.pytorch.load_model, which unpickles models saved in the `pickle` format: bring only models
    from a store you trust.
    """
    from mlflow.exceptions import MlflowException
    from torch import nn

    from .model import track

    parts = uri.split("/")
    if uri.startswith("runs:/") and len(parts) >= 3 and parts[1]:
        try:
            has_state = any(f.path == "state" for f in MlflowClient().list_artifacts(parts[1]))
        except MlflowException:
            raise UserError(f"cannot load {uri}: run {parts[1]} not found in {mlflow.get_tracking_uri()}") from None
        if has_state:
            return load_run_model(parts[1])
    try:
        from mlflow import pytorch as mlflow_pytorch

        model = mlflow_pytorch.load_model(uri, map_location="cpu")
    except Exception as e:  # MlflowException, OSError, unpickling errors: all mean "cannot load"
        raise UserError(f"cannot load {uri}: {first_line(e)}") from None
    if not isinstance(model, nn.Module) or not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise UserError(f"the model at {uri} has no nn.Linear layers to swap "
                        "(MLflow's pt2 format keeps a traced graph, not modules); "
                        "log it with serialization_format='pickle', or bring its class with --model and --checkpoint")
    return track(model, {"kind": "uri", "uri": uri})
