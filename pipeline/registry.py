"""Servable models: the champion in the MLflow model registry, logged as a pyfunc (serving.py: the raw table
in, a `label` and one `proba_<class>` column per class out), registered with the alias `champion`, and
loaded back for `reg2cls predict`; and the same kind of model made on request from any run's state
(`export`, `reg2cls export`). Only these get a full MLflow model (`log_servable`): every run keeps its state
(checkpoint.log_state). The output's shape is spelled once, in `output_frame`.

The champion carries everything it needs to load anywhere: the package and, for a model brought as
`file.py:Class`, that file and the user's modules it imports (code_paths); `checking_loads` proves it, in a
clean process outside the working directory. The alias never moves silently to a model that takes other
columns or gives other classes, nor when it holds a model reg2cls did not register: `champion_conflict` says
why, and registering is refused.
"""
from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from .config import UserError, first_line
from . import tracking

PACKAGE_DIR = Path(__file__).resolve().parent


def model_name(tags: dict[str, str]) -> str:
    """The name `reg2cls export` gives a run's servable model by default: its strategy or variant, else its stage,
    with the characters MLflow refuses in a model name (`.`, `/`, `:`, ...) as `_`: width_0.5 is width_0_5."""
    name = tags.get("strategy") or tags.get("stage") or "model"
    return "".join("_" if c in "/:.%\"'" else c for c in name)


def pip_requirements(*extra: str) -> list[str]:
    """Explicit requirements of a logged model: the versions running here (far cheaper than MLflow inferring them)."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", *extra]


def output_frame(class_names: list[str], proba: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """What the champion returns for (N, K) probabilities and the (N,) classes its decision rule picked
    (decision.outputs): the picked class's name as `label`, and each probability."""
    out = pd.DataFrame({"label": np.asarray(class_names, dtype=object)[np.asarray(pred)]})
    for i, name in enumerate(class_names):
        out[f"proba_{name}"] = proba[:, i]
    return out


def serving_meta(data) -> dict:
    """What a served model needs around its network (serving.py's `meta` artifact), for a data.Prepared split:
    the preprocessor fitted on its training rows, and the class names."""
    from dataclasses import asdict

    return {"preprocessor": asdict(data.preprocessor), "class_names": data.class_names}


def register_champion(model, meta: dict, example: pd.DataFrame, registered_name: str, description: str,
                      tags: dict[str, str], run_id: str | None = None, model_description: str | None = None) -> str:
    """Log the champion as a pyfunc (`runs:/<run>/champion`) on `run_id`, the champion's own run (reopened
    for the moment, and ended FINISHED with its own end time again), else on the active run; register it as
    `registered_name` with the alias `champion`, so the registry's badge and lineage point at that run;
    returns the version. `description` is the version's (markdown), `model_description` the registered
    model's. A champion already registered from the same run is re-aliased, not registered again."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    with contextlib.suppress(Exception):  # no such model or alias yet
        current = client.get_model_version_by_alias(registered_name, "champion")
        if current.tags.get("champion_run") == tags.get("champion_run"):
            client.update_model_version(registered_name, current.version, description=description)
            if model_description:
                client.update_registered_model(registered_name, description=model_description)
            return current.version
    with reopened(run_id):
        version = _log_and_register(model, meta, example, registered_name, description, tags)
    if model_description:
        with contextlib.suppress(MlflowException):
            client.update_registered_model(registered_name, description=model_description)
    return version


@contextlib.contextmanager
def reopened(run_id: str | None):
    """tracking.reopened(run_id) for the block; no-op for None or the active run."""
    from . import tracking

    if run_id is None or (mlflow.active_run() and mlflow.active_run().info.run_id == run_id):
        yield
        return
    with tracking.reopened(run_id):
        yield


def _log_and_register(model, meta: dict, example: pd.DataFrame, registered_name: str, description: str,
                      tags: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        info = log_servable(model, meta, example, "champion", registered_name)
        version = str(info.registered_model_version)
        client.set_registered_model_alias(registered_name, "champion", version)
        client.update_model_version(registered_name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, value)
    except MlflowException as e:  # the registry refused (name, permissions, a server error): one line
        raise UserError(f"cannot register the champion as '{registered_name}': {first_line(e)}; pass another name "
                        "with --register NAME, or check the registry") from None
    return version


def _brought_code(model, stage: Path) -> list[str]:
    """The code_paths of a model brought as `file.py:Class`: that file, and the user's modules and packages it
    imports from its folder (model.local_imports), copied into `stage` as they lie there (only their .py
    files), each top-level one a code path. MLflow puts them all in the model's code/ folder, on the path
    when it loads: serving.py imports the model file from there, and it imports its neighbours as at home."""
    import shutil

    from .model import local_imports, model_file

    brought = model_file(model)
    if brought is None:
        return []
    for rel in local_imports(brought):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(brought.parent / rel, stage / rel)
    return [str(brought)] + ([str(p) for p in sorted(stage.iterdir())] if stage.is_dir() else [])


# run in the clean process: the champion loaded from its folder and given the input example it carries. It ends
# with os._exit once it has passed: Python's own shutdown, tearing down torch's and MLflow's modules, takes about a
# second, which the command would wait for (a failure raises first, and exits 1 with its traceback on stderr)
_LOAD_AND_PREDICT = """import os
import sys
import mlflow.pyfunc
import torch  # what loading any champion imports: done while it is still being chosen
from mlflow.models import Model
path = sys.stdin.readline().strip()
if path:
    example = Model.load(path).load_input_example(path)
    out = mlflow.pyfunc.load_model(path).predict(example)
    assert "label" in out.columns and len(out) == len(example), "the champion returned no label for each row"
sys.stderr.flush()
os._exit(0)
"""


@contextlib.contextmanager
def checking_loads() -> Iterator[Callable[[str], None]]:
    """A fresh Python process, in an empty folder, isolated from PYTHONPATH and the user's site (`python -I`),
    that loads the champion and predicts its own input example: what `reg2cls predict` meets on another machine
    or in another folder. It starts now and imports MLflow and torch (seconds) while the block chooses the
    champion; the block hands it the registered model's URI with the function it yields, and draws the report
    while it loads. Its outcome is awaited when the block ends: a one-line UserError when it failed (the champion
    is registered; it is not deliverable as it stands). Given no URI, the process just ends."""
    import subprocess
    import sys

    given: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        elsewhere = Path(tmp) / "elsewhere"
        elsewhere.mkdir()
        proc = subprocess.Popen([sys.executable, "-I", "-c", _LOAD_AND_PREDICT], cwd=elsewhere, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def check(uri: str) -> None:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(Path(tmp) / "model"))
            given.append(uri)
            # a process that already ended (e.g. it could not import MLflow) says why on its stderr, read below
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(local + "\n")
                proc.stdin.flush()

        try:
            yield check
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:  # the block failed, or the check hangs: it is not left behind
                proc.kill()
                proc.wait()
    if given and proc.returncode != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        raise UserError(f"the champion {given[0]} does not load in a clean process outside this folder "
                        f"({lines[-1].strip() if lines else f'exit code {proc.returncode}'}); a model file's own "
                        "imports must be modules beside it or installed packages")


def log_servable(model, meta: dict, example: pd.DataFrame, name: str, registered_name: str | None = None):
    """`model` on the active run as a full MLflow model named `name`, a pyfunc (serving.py) that `mlflow models
    serve` and `reg2cls predict` load: its state, `meta` (`serving_meta`), the package (and a brought model's
    file) as code, signature, input example and pinned requirements; registered as `registered_name` when given
    (refused with a one-line UserError if that name's champion takes other columns or gives other classes).
    Only served models get one (the champion, `export`); every run keeps its state (checkpoint.log_state)."""
    from .model import requirements, save_state

    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    k = len(meta["class_names"])
    output = output_frame(meta["class_names"], np.full((len(example), k), 1.0 / k), np.zeros(len(example), int))
    signature = infer_signature(example, output)
    conflict = champion_conflict(registered_name, signature) if registered_name else None
    if conflict:
        raise UserError(conflict)
    run = mlflow.active_run()
    run_tags = run.data.tags if run else {}  # the model says what it is in the UI's list of logged models
    with tempfile.TemporaryDirectory() as tmp:
        code_paths = [str(PACKAGE_DIR), *_brought_code(model, Path(tmp) / "local")]
        save_state(model, Path(tmp) / "state", with_start=False)  # served, never retrained: no start
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=1))
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(PACKAGE_DIR / "serving.py"),
            artifacts={"meta": str(Path(tmp) / "meta.json"), "state": str(Path(tmp) / "state")},
            code_paths=code_paths, signature=signature, input_example=example,
            pip_requirements=pip_requirements(f"pandas=={pd.__version__}", f"numpy=={np.__version__}",
                                               *requirements(model)),
            registered_model_name=registered_name,
            tags={k: run_tags[k] for k in ("stage", "strategy") if k in run_tags})


def export(run_id: str, name: str | None = None) -> str:
    """Make a full servable MLflow model (`log_servable`) of any run that kept a classifier's state (a strategy,
    variant, trial or tuned run), on that run, named `name` (default: its strategy, `model_name`);
    returns its URI, runs:/<run>/<name>. The run's end time and status stay as they were. One-line UserError
    for a run that keeps no classifier (a regressor's baseline: no `state/meta.json`)."""
    from . import checkpoint, tracking

    model = checkpoint.load_run_model(run_id)  # a missing or unfinished run, or one without state/: one line
    raw = tracking.read_artifact(run_id, "state/meta.json")
    if raw is None:
        raise UserError(f"run {run_id} keeps no classifier to serve (state/meta.json missing: a baseline "
                        "regressor); export a head_swap, slim or tune run")
    meta = json.loads(raw)
    if name is None:
        name = model_name(tracking.get_run(run_id).data.tags)
    elif model_name({"stage": name}) != name:
        raise UserError(f"--name {name!r}: a model name cannot hold / : . % \" or '; e.g. "
                        f"{model_name({'stage': name})}")
    with reopened(run_id):
        log_servable(model, meta, example_input(meta["preprocessor"]), name)
    return f"runs:/{run_id}/{name}"


def example_input(preprocessor: dict) -> pd.DataFrame:
    """One row of raw input a served model takes, from its preprocessor (`serving_meta`): each numeric column's
    training median (as float64, like the champion's example), each category column's first category."""
    row = {c: [float(m)] for c, m in zip(preprocessor["numeric"], preprocessor["medians"])}
    row |= {c: [str(values[0]) if values else ""] for c, values in preprocessor.get("categories", {}).items()}
    return pd.DataFrame(row)


def signature_for(preprocessor, class_names: list[str]):
    """The signature a champion of these input columns and classes gets (as `register_champion` infers it
    from its example: numbers as double, categories as string)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("double", c) for c in preprocessor.numeric]
                    + [ColSpec("string", c) for c in preprocessor.categories])
    outputs = Schema([ColSpec("string", "label")] + [ColSpec("double", f"proba_{c}") for c in class_names])
    return ModelSignature(inputs, outputs)


def _describe(signature) -> tuple[list[str], list[str]]:
    inputs = [f"{c['name']}:{c['type']}" for c in signature.inputs.to_dict()]
    outputs = [c["name"] for c in signature.outputs.to_dict()]
    return inputs, outputs


def champion_conflict(registered_name: str, signature) -> str | None:
    """Why moving `registered_name`'s `champion` alias to a model with `signature` would silently change what
    its users get (other input columns or types, other classes), or None (no champion yet, or the same)."""
    try:
        current = MlflowClient().get_model_version_by_alias(registered_name, "champion")
    except Exception:  # no such model or alias: nothing that could break
        return None
    if "champion_run" not in current.tags:  # every champion reg2cls registers carries it (register_champion)
        return (f"registered model '{registered_name}' has a champion (version {current.version}) that reg2cls did not "
                "register; moving its alias would silently replace someone else's model: register this one under "
                "another name with --register NAME, or delete that alias first if it may go")
    try:
        held = mlflow.models.get_model_info(f"models:/{registered_name}@champion").signature
    except Exception:  # no readable MLmodel: nothing that could break
        return None
    if held is None or held.inputs is None or held.outputs is None:
        return None
    (held_in, held_out), (new_in, new_out) = _describe(held), _describe(signature)
    if held_in == new_in and held_out == new_out:
        return None
    what = []
    if held_in != new_in:
        gone, new = [c for c in held_in if c not in new_in], [c for c in new_in if c not in held_in]
        what.append(f"input columns ({'without ' + ', '.join(gone) if gone else ''}"
                    f"{'; ' if gone and new else ''}{'with ' + ', '.join(new) if new else ''}"
                    f"{'reordered' if not gone and not new else ''})")
    if held_out != new_out:
        what.append(f"classes ({', '.join(c[6:] for c in held_out[1:])} -> {', '.join(c[6:] for c in new_out[1:])})")
    return (f"registered model '{registered_name}' has a champion (version {current.version}) with other "
            f"{' and '.join(what)}; moving its alias would break whoever serves it: register this one under another "
            "name with --register NAME")


def load_champion(uri: str):
    """A champion pyfunc, the input columns its signature names and those of them that are numeric; a
    one-line UserError if it won't load or is not a champion (a pyfunc that returns `label`)."""
    try:  # the MLmodel file first: a model that is no champion is refused before any of it is loaded
        signature = mlflow.models.get_model_info(uri).signature
    except Exception as e:
        run_id = uri.split("/")[1] if uri.startswith("runs:/") else ""
        if run_id and tracking.read_artifact(run_id, "state/architecture.json") is not None:  # a run's weights only
            raise UserError(f"{uri} is not a reg2cls champion: run {run_id} keeps its weights, not a servable model; "
                            f"make one with `reg2cls export --run-id {run_id}`") from None
        raise UserError(f"cannot load {uri}: {first_line(e)}") from None
    inputs, outputs = (signature.inputs, signature.outputs) if signature is not None else (None, None)
    if (inputs is None or inputs.is_tensor_spec() or outputs is None or outputs.is_tensor_spec()
            or "label" not in outputs.input_names()):
        raise UserError(f"{uri} is not a reg2cls champion (a model that takes the raw columns and returns `label`); "
                        "use models:/<name>@champion or runs:/<champion run id>/champion")
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as e:
        raise UserError(f"cannot load {uri}: {first_line(e)}") from None
    columns = [c["name"] for c in inputs.to_dict()]
    numeric = [c["name"] for c in inputs.to_dict() if c["type"] in ("double", "float", "long", "integer")]
    return model, columns, numeric
