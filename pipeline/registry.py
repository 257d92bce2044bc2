"""The champion in the MLflow model registry: logged as a pyfunc (serving.py: the raw table in, a
`label` and one `proba_<class>` column per class out), registered with the alias `champion`, and
loaded back for `reg2cls predict`. The output's shape is spelled once, in `output_frame`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from .config import UserError, first_line
from .tracking import pip_requirements

PACKAGE_DIR = Path(__file__).resolve().parent


def output_frame(class_names: list[str], proba: np.ndarray) -> pd.DataFrame:
    """What the champion returns for (N, K) probabilities: the argmax class's name and each probability."""
    out = pd.DataFrame({"label": np.asarray(class_names, dtype=object)[proba.argmax(axis=1)]})
    for i, name in enumerate(class_names):
        out[f"proba_{name}"] = proba[:, i]
    return out


def register_champion(model, meta: dict, example: pd.DataFrame, registered_name: str, description: str,
                      tags: dict[str, str]) -> str:
    """Log the champion as a pyfunc on the active run, register it as `registered_name` with the alias
    `champion`; returns the version. A champion already registered from the same run is re-aliased,
    not registered again."""
    from .model import save_state

    client = MlflowClient()
    with contextlib.suppress(Exception):  # no such model or alias yet
        current = client.get_model_version_by_alias(registered_name, "champion")
        if current.tags.get("champion_run") == tags.get("champion_run"):
            client.update_model_version(registered_name, current.version, description=description)
            return current.version
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    k = len(meta["class_names"])
    output = output_frame(meta["class_names"], np.full((len(example), k), 1.0 / k))
    with tempfile.TemporaryDirectory() as tmp:
        save_state(model, Path(tmp) / "state")
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=1))
        info = mlflow.pyfunc.log_model(
            name="champion", python_model=str(PACKAGE_DIR / "serving.py"),
            artifacts={"meta": str(Path(tmp) / "meta.json"), "state": str(Path(tmp) / "state")},
            code_paths=[str(PACKAGE_DIR)], signature=infer_signature(example, output), input_example=example,
            pip_requirements=pip_requirements(f"pandas=={pd.__version__}", f"numpy=={np.__version__}"),
            registered_model_name=registered_name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(registered_name, "champion", version)
    client.update_model_version(registered_name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    return version


def load_champion(uri: str):
    """A champion pyfunc and the input columns its signature names; a one-line UserError if it won't load."""
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as e:
        raise UserError(f"cannot load {uri}: {first_line(e)}") from None
    schema = model.metadata.get_input_schema()
    return model, list(schema.input_names()) if schema is not None else []
