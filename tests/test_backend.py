"""backend: opening the tracking store."""
import os
import sqlite3

import mlflow
import pytest


def _experiments(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, artifact_location FROM experiments").fetchall()


def test_a_new_sqlite_store_is_a_copy_of_the_kept_empty_one_with_its_own_default_experiment(tmp_path, monkeypatch):
    """MLflow's schema migrations run once per MLflow version: the empty store they make is kept in the cache
    without experiments, and every new store is a copy whose Default experiment keeps its artifacts beside it."""
    from pipeline import backend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        backend.setup(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        assert _experiments(tmp_path / name / "mlflow.db") == [("Default", str(tmp_path / name / "mlruns" / "0"))]
    [kept] = (tmp_path / "cache" / "reg2cls").iterdir()
    assert kept.name == f"empty-mlflow-{mlflow.__version__}.db" and _experiments(kept) == []


def _artifact_run(experiment: str):
    """A finished run of `experiment` with one artifact, `notes/a.txt`."""
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_text("ratio 0.8", "notes/a.txt")
    return mlflow.get_run(run.info.run_id)


def test_read_artifact_reads_a_local_artifact_by_run_or_by_id_and_none_when_missing(experiment):
    from pipeline import tracking

    run = _artifact_run(experiment)
    assert tracking.read_artifact(run, "notes/a.txt") == b"ratio 0.8"
    assert tracking.read_artifact(run.info.run_id, "notes/a.txt") == b"ratio 0.8"
    assert tracking.read_artifact(run, "notes/missing.txt") is None


@pytest.mark.slow
def test_read_artifact_downloads_what_a_tracking_server_serves(mlflow_server, monkeypatch):
    """Through a server the artifact URI is mlflow-artifacts:/, not a path here: read by download."""
    from pipeline import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    run = _artifact_run(f"read-{os.getpid()}")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert tracking.read_artifact(run, "notes/a.txt") == b"ratio 0.8"
    assert tracking.read_artifact(run, "notes/missing.txt") is None


def test_a_start_shared_with_a_run_without_state_says_what_to_tune_instead(experiment):
    """checkpoint.run_weights (what start_of calls for a head-swap run's start): one line with the fix."""
    from pipeline import checkpoint
    from pipeline.config import UserError

    run = _artifact_run(experiment)  # a run with no state/ (its baseline run garbage-collected reads the same)
    with pytest.raises(UserError, match=f"shared with run {run.info.run_id}, whose state/ is gone; .*head-swap"):
        checkpoint.run_weights(run.info.run_id)


def _nested(experiment: str, parent: str) -> tuple[str, str]:
    """The status and parent tag of a run that tracking.start opened under `parent`."""
    from pipeline import tracking

    with tracking.start("child", "head_swap", parent=parent) as run_id:
        pass
    run = mlflow.get_run(run_id)
    return run.info.status, run.data.tags["mlflow.parentRunId"]


@pytest.mark.parametrize("held", [False, True], ids=["command", "worker"])
def test_a_run_nests_under_the_parent_it_names_in_a_command_and_in_a_worker(experiment, monkeypatch, held):
    """A worker names its parent by tag (tracking.parents_held: the command holds it open); a command lets MLflow
    check the parent first. Either way the run ends nested under it."""
    from pipeline import tracking

    monkeypatch.setattr(tracking, "_PARENTS_HELD", held)
    parent = _artifact_run(experiment).info.run_id
    assert _nested(experiment, parent) == ("FINISHED", parent)


def test_a_command_refuses_to_nest_a_run_under_a_deleted_parent(experiment):
    """Outside a worker (`reg2cls compare --run-id` of a deleted convert) MLflow's check of the parent stays."""
    from mlflow.exceptions import MlflowException

    parent = _artifact_run(experiment).info.run_id
    mlflow.MlflowClient().delete_run(parent)
    with pytest.raises(MlflowException, match="deleted state"):
        _nested(experiment, parent)
