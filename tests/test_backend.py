"""backend: opening the tracking store."""
import sqlite3

import mlflow


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
