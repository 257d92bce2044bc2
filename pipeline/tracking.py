"""MLflow run logging: runs and their lifecycle (owners, heartbeats, orphans), params, batched metrics, tags,
datasets, artifacts and predictions, and what people read in the UI. Besides backend.py (opening the store),
checkpoint.py (a run's model to and from the store), serving.py (the champion as a pyfunc) and registry.py
(the model registry), the only module that talks to MLflow.

Conventions (docs/design.md): every run carries the tag `stage` (and `strategy` on strategy runs);
params are the flattened config, logged once; per-epoch metrics are buffered and sent with
`log_batch`; a run always ends FINISHED, FAILED or KILLED, also on Ctrl+C and SIGTERM. When a stage may
reuse a run is reuse.py's.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from . import liveness
from .memory import release_freed_memory


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def ui_page(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's route (relative: it works wherever the UI is served) to an experiment or a run, in the UI's
    model-training mode: MLflow 3's UI opens in its GenAI mode (traces, evaluations) unless the link says so."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + "?workflowType=machine_learning"


def run_link(tracking_uri: str, run_id: str) -> str:
    """Where to see a run in the MLflow UI, as MLflow's own "View run ... at:" line: its page on the tracking
    server, or, for a local store, the `mlflow ui` command to start and the page it will then serve."""
    run = get_run(run_id)
    page = ui_page(run.info.experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"View run {run.info.run_name} at: {tracking_uri.rstrip('/')}/{page}"
    return (f"View run {run.info.run_name}: start\n  {ui_command(tracking_uri)}\n"
            f"  then open http://127.0.0.1:5000/{page}")


@contextlib.contextmanager
def start(name: str, stage: str, strategy: str | None = None, tags: dict[str, str] | None = None,
          parent: str | None = None, killed_on: tuple[type[BaseException], ...] = ()) -> Iterator[str]:
    """A run nested under `parent`, else under the active run (top level when there is none); yields its id.

    Ends FINISHED on success; KILLED on KeyboardInterrupt (the CLI turns SIGTERM into one) or on an
    exception in `killed_on` (a pruned trial); FAILED on any other exception. Exceptions are re-raised.
    The run carries its owner (liveness.owner_tags) and a heartbeat this process refreshes while the run
    is open, so that a later command can end it KILLED if this process dies without ending it (SIGKILL).
    """
    all_tags = {"stage": stage, **({"strategy": strategy} if strategy else {}), **(tags or {}),
                **liveness.owner_tags(), liveness.HEARTBEAT_TAG: str(int(time.time()))}
    if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID"):
        # the run `mlflow run` made for the entry point (MLflow reads and clears the variable): adopt it,
        # naming and tagging it like our own, and nesting it under `parent` when there is one
        run = mlflow.start_run(tags={**all_tags, **({MLFLOW_PARENT_RUN_ID: parent} if parent else {})})
        mlflow.set_tag("mlflow.runName", name)
    else:
        # a worker's run names its parent by tag: MLflow's parent_run_id would first read the parent back from the
        # store to check it is not deleted, a store call on each of the ~80 runs of a default convert, whose parents
        # the command opened and holds open
        by_tag = bool(parent) and _PARENTS_HELD and mlflow.active_run() is None
        run = mlflow.start_run(run_name=name, nested=True, parent_run_id=None if by_tag else parent,
                               tags={**all_tags, MLFLOW_PARENT_RUN_ID: parent} if by_tag else all_tags)
        _FRESH[run.info.run_id] = Logged()
    if MLFLOW_PARENT_RUN_ID not in run.data.tags:  # a top-level run: its experiment opens as model training
        mark_experiment(run.info.experiment_id)
    _HEARTBEAT.hold(run.info.run_id, mlflow.get_tracking_uri())
    try:
        yield run.info.run_id
    except (KeyboardInterrupt, *killed_on):
        _FRESH.pop(run.info.run_id, None)
        _HEARTBEAT.release(run.info.run_id)
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        _FRESH.pop(run.info.run_id, None)
        _HEARTBEAT.release(run.info.run_id)
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    _FRESH.pop(run.info.run_id, None)
    _HEARTBEAT.release(run.info.run_id)
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    release_freed_memory()  # its arrays are garbage now, in whichever process ran it


_PARENTS_HELD = False  # the parents this process's runs nest under are held open by the command (a worker)


def parents_held() -> None:
    """Say that this process is a worker of a command that holds open the runs its runs nest under (`start`)."""
    global _PARENTS_HELD
    _PARENTS_HELD = True


class Logged:
    """What this process has logged on a run it created itself (`start`), the only writer of its params: so
    that logging more needs no read from the store."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}


_FRESH: dict[str, Logged] = {}  # the runs this process created and still holds open


def _new_params(run_id: str, params: dict[str, object]) -> dict[str, str]:
    """The params to log on `run_id`: those it does not hold yet; a key it holds with another value (an
    `mlflow run` entry-point parameter such as `seed`, as typed or left empty) as `resolved.<key>` instead,
    since MLflow forbids changing a param. Read from the store only for a run another process created."""
    held = _FRESH[run_id].params if run_id in _FRESH else MlflowClient().get_run(run_id).data.params
    out = {}
    for k, v in params.items():
        v = "" if v is None else str(v)
        if k not in held:
            out[k] = v
        elif held[k] != v:
            out[f"resolved.{k}"] = v
    return out


def log_params(params: dict[str, object]) -> None:
    """Log params once on the active run (`_new_params`)."""
    run_id = mlflow.active_run().info.run_id
    out = _new_params(run_id, params)
    if out:
        mlflow.log_params(out)
        if run_id in _FRESH:
            _FRESH[run_id].params.update(out)


def log_metrics(values: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """Many metrics in one call, on `run_id` or the active run; NaN values (an undefined AUC) are skipped."""
    clean = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
    if clean:
        mlflow.log_metrics(clean, step=step, run_id=run_id)


def epoch_key(key: str) -> str:
    """The name a metric's per-epoch curve is logged under: `epoch/val_loss` for `val/loss`. Kept apart from the
    key itself, which holds the returned (restored best) model's value, so no curve ends on a drop to that value."""
    return "epoch/" + key.replace("/", "_")


class EpochLog:
    """Buffers per-epoch metrics (each under its `epoch_key`) and sends them with one `log_batch` call per
    1,000 points."""

    def __init__(self) -> None:
        self.points: list[Metric] = []

    def add(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.points += [Metric(epoch_key(k), float(v), ts, step) for k, v in values.items() if np.isfinite(v)]

    def flush(self) -> None:
        run_id = mlflow.active_run().info.run_id
        client = MlflowClient()
        for i in range(0, len(self.points), 1000):  # the store's limit per batch
            client.log_batch(run_id, metrics=self.points[i:i + 1000])
        self.points = []


def log_dataset(example: pd.DataFrame, n_rows: int, source: str, target: str, digest: str,
                context: str = "all splits", missing: tuple[str, ...] = ()) -> None:
    """A data set as the active run's input, `context` saying its role: a stage run's whole table (`all
    splits`), or one split of a strategy run (`train`, `validation`, `test`: log_split_inputs).

    Recorded from `example`, the table's first rows, and its size `n_rows`: MLflow's own inference from a whole
    table tests every value for missing in Python, slow on large tables. The columns'
    types are the example's dtypes (the whole column's), a column is required unless named in `missing`, and
    the profile counts every row, as MLflow's would. MLflow registers a data set once per experiment by a
    check-then-insert, so two commands logging the same new data set at once collide on a UNIQUE constraint;
    the loser retries and then finds the winner's row."""
    _log_inputs([_dataset_input(example, n_rows, source, target, digest, context, missing)])


def _dataset_input(example: pd.DataFrame, n_rows: int, source: str, target: str, digest: str, context: str,
                   missing: tuple[str, ...] = ()):
    """The DatasetInput `log_dataset` logs."""
    import json
    import warnings

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # a hint about model signatures with integer columns: not one here
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
        # the source goes in the name: a local path as `source` makes MLflow warn about ambiguous source types
        record = mlflow.data.from_pandas(example, targets=target, name=source, digest=digest)._to_mlflow_entity()
    schema = json.loads(record.schema)
    for column in schema.get("mlflow_colspec", []):
        column["required"] = column.get("name") not in missing
    record = Dataset(record.name, record.digest, record.source_type, record.source, json.dumps(schema),
                     json.dumps({"num_rows": int(n_rows), "num_elements": int(n_rows) * example.shape[1]}))
    return DatasetInput(record, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _log_inputs(inputs: list) -> None:
    """DatasetInputs on the active run in one call, retried on a lost race to register a data set."""
    from mlflow.exceptions import MlflowException

    for attempt in range(5):
        try:
            MlflowClient().log_inputs(mlflow.active_run().info.run_id, datasets=inputs)
            return
        except MlflowException as e:
            if attempt == 4 or not _conflict(e):
                raise
            time.sleep(0.05 * (attempt + 1))


def log_figure(figure, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact; a pyplot figure (Optuna's plots) is closed after."""
    mlflow.log_figure(figure, name)
    if figure.canvas.manager is not None:  # pyplot keeps its figures until closed
        import matplotlib.pyplot as plt

        plt.close(figure)


def newest_finished(filter_string: str, experiment_ids: list[str] | None = None) -> str | None:
    """Id of the newest FINISHED run matching `filter_string` (MLflow search syntax), in the current
    experiment unless `experiment_ids` says otherwise."""
    runs = MlflowClient().search_runs(
        experiment_ids or [current_experiment_id()], f"{filter_string} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def latest_run(stage: str, split_key: str) -> str | None:
    """The newest FINISHED stage run (not a strategy run) of `stage` on the same data, split and
    classes, in the current experiment."""
    return newest_finished(f"tags.stage = '{stage}' and tags.split_key = '{split_key}' and tags.strategy IS NULL")


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def current_experiment_id() -> str:
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return mlflow.tracking.fluent._get_experiment_id()


def set_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    """Tags on `run_id`, else on the active run: one store call either way (`log_batch`)."""
    if run_id is None:
        mlflow.set_tags(tags)
    else:
        _write_tags(run_id, None, {key: str(value) for key, value in tags.items()})


def adopt(run_id: str, parent: str, tags: dict[str, str]) -> None:
    """Nest the run `run_id`, started before `parent` existed, under `parent`, adding `tags`."""
    set_tags({MLFLOW_PARENT_RUN_ID: parent, **tags}, run_id)


def experiment_name(run_id: str) -> str:
    client = MlflowClient()
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def end_if_running(run_id: str, status: str = "FAILED") -> bool:
    """Mark a run that its process can no longer end (a killed worker's) as ended; True if it was RUNNING."""
    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status)
        return True
    return False


def children(run_id: str) -> list:
    """Runs nested directly under `run_id`, oldest first."""
    exp = MlflowClient().get_run(run_id).info.experiment_id
    return MlflowClient().search_runs([exp], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
                                      order_by=["attributes.start_time ASC"], max_results=1000)


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)


def log_files_to(run_id: str, files: dict[str, str | bytes]) -> None:
    """Artifacts `name -> text or bytes` on any run (the parent, from a nested stage)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        MlflowClient().log_artifacts(run_id, tmp)


def predictions_file(rows: np.ndarray, c: np.ndarray, proba: np.ndarray, pred: np.ndarray,
                     **more: np.ndarray) -> dict[str, np.ndarray]:
    """A run's predictions as the arrays of `predictions.npz` (`log_state`, `log_predictions`): the test rows'
    positions in the data table (n,), their classes (n,), the predicted probabilities (n, K, float32: the
    leaderboard's log loss and calibration are computed from them) and the classes the model's decision rule
    picked (n,), for compare's pooled metrics and bootstrap; `more` integer arrays beside them
    (stages.common.test_scores: the validation rows' classes and decisions, and each row's fold when a run spans
    several). Integers are stored in the smallest type that holds them (`read_predictions` widens them)."""
    ints = {"rows": rows, "c": c, "pred": pred, **more}
    return {"proba": proba.astype(np.float32), **{name: _compact(np.asarray(a)) for name, a in ints.items()}}


def _compact(a: np.ndarray) -> np.ndarray:
    """Integers in the smallest type that holds all of them."""
    low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
    return a.astype(np.result_type(np.min_scalar_type(low), np.min_scalar_type(high)))


def log_predictions(rows: np.ndarray, c: np.ndarray, proba: np.ndarray, pred: np.ndarray,
                    **more: np.ndarray) -> None:
    """Predictions (`predictions_file`) on the active run as `predictions.npz`, for a run with no model (the
    gradient-boosting reference, the floor); a model's run logs them with its state (`log_state`)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "predictions.npz", **predictions_file(rows, c, proba, pred, **more))
        mlflow.log_artifact(str(Path(tmp) / "predictions.npz"))


def read_predictions(run) -> dict[str, np.ndarray] | None:
    """What `log_predictions` or `log_state` logged on `run` (a Run, or its id) (rows, c, proba, pred and what else
    it was given; integers as int64, probabilities as float32), or None; arrays only, never pickle."""
    raw = read_artifact(run, "predictions.npz")
    if raw is None:
        return None
    import io

    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        logged = {name: npz[name].astype(np.float32 if name == "proba" else np.int64) for name in npz.files}
    return logged


def read_artifact(run, path: str) -> bytes | None:
    """An artifact's bytes, or None when the run has no such artifact. `run`: a Run, or its id. Artifacts on this
    machine's disk (a file store or SQLite's default `mlruns/`) are read where they lie: MLflow's download, which
    looks the run up and copies the file first, costs ~20 ms an artifact, and compare reads one a run."""
    from urllib.parse import urlparse

    from mlflow.utils.file_utils import local_file_uri_to_path

    try:
        uri = run.info.artifact_uri if hasattr(run, "info") else MlflowClient().get_run(run).info.artifact_uri
        if urlparse(uri).scheme in ("", "file"):
            return (Path(local_file_uri_to_path(uri)) / path).read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/{path}", dst_path=tmp)
            return Path(local).read_bytes()
    except Exception:
        return None


def latest_parent(experiment: str | None) -> str | None:
    """The newest FINISHED convert run of `experiment` (or of the current one)."""
    ids = None
    if experiment:
        exp = MlflowClient().get_experiment_by_name(experiment)
        if exp is None:
            return None
        ids = [exp.experiment_id]
    return newest_finished("tags.stage = 'convert'", ids)


# ------------------------------------------------------------------ owners: this process's heartbeat, orphans
def _write_tags(run_id: str, uri: str | None, tags: dict[str, str]) -> None:
    """`tags` on `run_id` in the store at `uri` (None: the current one), in one call."""
    from mlflow.entities import RunTag

    MlflowClient(uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


_HEARTBEAT = liveness.Heartbeat(_write_tags)


def _conflict(e: Exception) -> bool:
    """Whether a store error is a lost race on a unique key (SQLite, PostgreSQL, MySQL wordings)."""
    text = str(e)
    return any(s in text for s in ("UNIQUE constraint failed", "IntegrityError", "duplicate key", "Duplicate entry"))


def end_orphans(experiment_id: str | None = None, status: str = "KILLED") -> int:
    """End as `status` (KILLED; FAILED for a worker that died under a live command) the RUNNING runs of the
    experiment (the current one by default) whose owner can no longer end them (liveness.orphan_reason: its
    process is gone, or its heartbeat is too old), each with the tag `killed_reason`; returns how many. Runs
    this process holds open, and runs of live owners on this machine (a tune worker in another process), are
    never touched."""
    experiment_id = experiment_id or current_experiment_id()
    client = MlflowClient()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    mine, adopted = _HEARTBEAT.held(), os.environ.get("MLFLOW_RUN_ID")
    now, n = time.time(), 0
    for run in running:
        if run.info.run_id in mine or run.info.run_id == adopted:
            continue
        reason = liveness.orphan_reason(run.data.tags, now)
        if reason is None:
            continue
        with contextlib.suppress(Exception):  # another command ending it at the same moment
            client.set_tag(run.info.run_id, liveness.KILLED_REASON_TAG, f"{reason}; ended by pid {os.getpid()}")
            client.set_terminated(run.info.run_id, status)
            n += 1
    return n


def current_experiment_name() -> str:
    """The name of the experiment runs go to now (under `mlflow run`, the one it was given)."""
    return MlflowClient().get_experiment(current_experiment_id()).name


# ------------------------------------------------------------------ what people read in the UI
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (markdown), on runs and experiments


# the experiment's declared kind, "Machine learning" in MLflow 3's UI: UIs that open an experiment by its kind
# then show its runs, not an empty Traces page. MLflow 3.17's UI opens by a global GenAI / Model training switch
# instead, which the links reg2cls writes set (`ui_page`)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_experiment(experiment_id: str) -> None:
    """Tag the experiment as model training (EXPERIMENT_KIND), unless it already has a kind."""
    client = MlflowClient()
    if EXPERIMENT_KIND[0] not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def describe_experiment(text: str, experiment_id: str | None = None) -> None:
    """Give the experiment (the current one by default) the description `text`, once: one it has is kept."""
    client = MlflowClient()
    experiment = client.get_experiment(experiment_id or current_experiment_id())
    if not experiment.tags.get(NOTE_TAG):
        client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, text)


def log_final_metrics(values: dict[str, float], params: dict[str, object] | None = None) -> None:
    """A run's final metrics (the returned model's), logged once at step 0, with `params` (`log_params`'s way)
    in the same call. Their per-epoch curves live under `epoch_key` names (EpochLog), so the final value adds no
    point, and no cliff, to any curve. NaN is skipped."""
    from mlflow.entities import Param

    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and np.isfinite(v)]
    new = [Param(k, v) for k, v in _new_params(run_id, params or {}).items()]
    client = MlflowClient()
    for i in range(max(len(points) // 1000, len(new) // 100) + 1):  # the store's limits per batch
        client.log_batch(run_id, metrics=points[i * 1000:(i + 1) * 1000], params=new[i * 100:(i + 1) * 100])
    if run_id in _FRESH:
        _FRESH[run_id].params.update({p.key: p.value for p in new})


def epoch_curves(keys: list[str], run_id: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """The per-epoch curves of `keys` (`val/loss`, ...: read from their `epoch_key` names) on `run_id` (the active
    run by default) as (step, value) sorted by step, each step's first point only; keys the run has no curve of
    (fewer than two steps) are left out."""
    client = MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    curves = {}
    for key in keys:
        first: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, epoch_key(key)):
            if m.step not in first or m.timestamp < first[m.step][0]:
                first[m.step] = (m.timestamp, m.value)
        if len(first) > 1:
            curves[key] = [(step, first[step][1]) for step in sorted(first)]
    return curves


def log_split_inputs(split_key: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                     source: str | None = None) -> None:
    """Each split the active run was trained, validated or tested on as its own data set input, with the split
    as its context (`train`, `validation`, `test`): the preprocessed features `x0..` and the class `c`, named
    `<source> [<context>]` (`source`: the run's param `data.source` by default), digested by the split key
    (same key, same rows). Logged in one call; each split's record is made once a process (`_SPLIT_INPUTS`)."""
    import hashlib

    if source is None:
        run_id = mlflow.active_run().info.run_id
        held = _FRESH[run_id].params if run_id in _FRESH else MlflowClient().get_run(run_id).data.params
        source = held.get("data.source", "data")
    inputs = []
    for context, (x, c) in splits.items():
        key = (source, split_key, context)
        if key not in _SPLIT_INPUTS:
            head = pd.DataFrame(np.asarray(x[:5]), columns=[f"x{i}" for i in range(x.shape[1])])
            head["c"] = np.asarray(c[:5])
            digest = hashlib.sha256(f"{split_key}:{context}".encode()).hexdigest()[:16]
            _SPLIT_INPUTS[key] = _dataset_input(head, len(c), f"{source} [{context}]", "c", digest, context)
        inputs.append(_SPLIT_INPUTS[key])
    _log_inputs(inputs)


_SPLIT_INPUTS: dict[tuple[str, str, str], object] = {}  # (source, split key, context) -> its DatasetInput


@contextlib.contextmanager
def reopened(run_id: str) -> Iterator[None]:
    """The FINISHED run `run_id` active again for the block (nested under the active run: MLflow keeps its
    parent), then FINISHED again with its original end time, also when the block fails. While open it is
    owned by this process with a live heartbeat, so no other command ends it as an orphan; its original
    owner tags come back after."""
    client = MlflowClient()
    run = client.get_run(run_id)
    held = {k: run.data.tags[k] for k in (*liveness.OWNER_TAGS, liveness.HEARTBEAT_TAG) if k in run.data.tags}
    _write_tags(run_id, mlflow.get_tracking_uri(), {**liveness.owner_tags(),
                                                    liveness.HEARTBEAT_TAG: str(int(time.time()))})
    mlflow.start_run(run_id=run_id, nested=True)
    _HEARTBEAT.hold(run_id, mlflow.get_tracking_uri())
    try:
        yield
    finally:
        _HEARTBEAT.release(run_id)
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
        if held:
            _write_tags(run_id, mlflow.get_tracking_uri(), held)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=run.info.end_time)
