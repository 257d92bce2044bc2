"""The tracking store (MLflow's backend store): pointing MLflow at it and opening it once per process (a fresh
SQLite store made atomically under a file lock, a bad URI or a silent server a one-line error), write-ahead
logging before several processes write, and the experiment runs go to. Run logging is tracking.py's.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from .config import UserError, first_line

_OPENED: set[str] = set()  # tracking URIs this process has opened (setup checks each once)


def setup(tracking_uri: str | None) -> str:
    """Point MLflow at the store and open it once per process; returns the tracking URI in use.

    Opening checks the URI (scheme, a SQLite path that is a folder or another kind of file, a tracking server
    that does not answer) and creates a fresh SQLite store atomically under a file lock, so commands started
    together never race on its tables. A store that cannot be opened is a one-line UserError."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if not os.environ.get("REG2CLS_TRACEBACK"):
        # MLflow logs a failing store's traceback (a full disk: one per write) before raising the error, which
        # the command then says in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    uri = mlflow.get_tracking_uri()
    if uri not in _OPENED:
        _open_store(uri)
        _OPENED.add(uri)
    return uri


def enable_concurrent_writes() -> None:
    """Switch a SQLite store to write-ahead logging before several processes write to it: writers then
    stop locking out readers and fsyncing each commit (the mode stays with the file). No-op elsewhere."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        import sqlite3

        path = uri[len("sqlite:///"):]
        with lock(path), contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            deadline = time.monotonic() + 60
            while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # reading the mode takes no lock
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError as e:
                    # another command's write in progress: SQLite refuses the switch at once instead of waiting
                    # (waiting could deadlock), so the busy timeout does not apply; retry until that write ends
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


@contextlib.contextmanager
def lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock` (fcntl.flock), for what must not run twice at once on one SQLite
    file: creating its tables, switching its journal mode. The kernel drops the lock when its holder dies,
    even by SIGKILL. Where flock is unavailable (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        handle = open(f"{path}.lock", "a")
    except OSError as e:
        raise UserError(f"cannot create the lock file {path}.lock beside the store ({e.strerror}); "
                        "check the folder's permissions") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_store(uri: str) -> None:
    """Check that `uri` names a store that can be opened, and open it: a fresh SQLite store is made in a
    temporary file and renamed into place under `lock`, so a second command never sees half-made
    tables and a kill during creation leaves no half-made store. One-line UserError otherwise."""
    from mlflow.exceptions import MlflowException

    hint = "use --tracking-uri sqlite:///path/mlflow.db, http(s)://host:port or a database URL"
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _probe_server(uri)
        return
    try:
        if scheme == "sqlite":
            _open_sqlite(uri)
        else:
            MlflowClient(uri).search_experiments(max_results=1)
    except UserError:
        raise
    except (MlflowException, OSError, ImportError, ValueError) as e:
        if "unsupported URI" in str(e) or "Unexpected URI scheme" in str(e):
            raise UserError(f"tracking URI {uri}: MLflow has no store for the scheme '{scheme}'; {hint}") from None
        raise UserError(f"cannot open the tracking store {uri}: {first_line(e)}; {hint}") from None
    except Exception as e:  # SQLAlchemy errors: a file that is no database, a server that refuses
        raise UserError(f"cannot open the tracking store {uri}: {type(e).__name__}: {first_line(e)}; {hint}") from None


def _open_sqlite(uri: str) -> None:
    if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
        raise UserError(f"tracking store {uri}: give a file, sqlite:///path/mlflow.db "
                        "(an in-memory store keeps nothing)")
    path = Path(uri[len("sqlite:///"):])
    if path.is_dir():
        raise UserError(f"tracking store {path} is a folder, not a file; point --tracking-uri at a file in it: "
                        f"sqlite:///{path / 'mlflow.db'}")
    if not path.parent.is_dir():
        raise UserError(f"the folder of the tracking store {path} does not exist; create it or choose another path")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise UserError(f"tracking store {path} is not an SQLite database (the file holds something else); "
                                "point --tracking-uri at a new file, e.g. sqlite:///mlflow.db")
    with lock(path):
        if not path.is_file() or path.stat().st_size == 0:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
            tmp.unlink(missing_ok=True)
            try:
                _empty_store(tmp)
                os.replace(tmp, path)  # atomic: the store appears whole or not at all
            finally:
                tmp.unlink(missing_ok=True)
        # tracking and registry tables exist now; opening checks the schema version
        MlflowClient(uri, registry_uri=uri).search_registered_models(max_results=1)


def _empty_store(path: Path) -> None:
    """An empty MLflow store at `path`: a copy of the one kept for this MLflow version in the user's cache,
    made here the first time. MLflow makes a store by running every one of its schema migrations, seconds that
    every first command in a new folder (and every test's store) would wait; a copy takes milliseconds. The
    kept copy holds no experiment: MLflow makes the Default one, with this store's artifact folder, on opening."""
    import shutil
    import sqlite3

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reg2cls"
    kept = cache / f"empty-mlflow-{mlflow.__version__}.db"
    if kept.is_file():
        shutil.copyfile(kept, path)
        return
    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments(max_results=1)  # creates every table, and the Default experiment
    _dispose_engine(uri)
    with contextlib.suppress(OSError, sqlite3.Error):  # no cache (a read-only home): each store is made in full
        cache.mkdir(parents=True, exist_ok=True)
        part = cache / f".{kept.name}.{os.getpid()}"
        shutil.copyfile(path, part)
        with contextlib.closing(sqlite3.connect(part)) as db, db:
            db.execute("DELETE FROM experiment_tags")
            db.execute("DELETE FROM experiments")
        os.replace(part, kept)  # whole or not at all, whichever command gets there first


def _dispose_engine(uri: str) -> None:
    """Close MLflow's cached engine for `uri` (its connections would hold the renamed file open)."""
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore._engine_map.pop(uri).dispose()


def _probe_server(uri: str) -> None:
    """A tracking server that does not answer fails now, in seconds, not after MLflow's minutes of retries.
    Any HTTP answer (even 401 or 404) counts: only the connection is checked."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10)
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"the tracking server {uri} does not answer ({reason}); start it, or fix --tracking-uri "
                        "/ MLFLOW_TRACKING_URI") from None


def use_experiment(name: str) -> None:
    """Create or select the experiment, unless running under `mlflow run`.

    There MLFLOW_RUN_ID names the run MLflow created for the entry point, in the experiment
    `mlflow run` was given: that run becomes the parent, and the experiment is left alone
    (set_experiment with another name would fail). A new experiment in a SQLite store keeps its artifacts
    beside the store (`artifact_location`), not in ./mlruns of whatever folder the command ran in. An
    experiment of that name in the store's trash is refused with the fix (MLflow would raise).
    """
    from mlflow.exceptions import MlflowException

    if os.environ.get("MLFLOW_RUN_ID"):
        return
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location(mlflow.get_tracking_uri(), name))
        except MlflowException as e:  # another command created it a moment ago: use theirs
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise UserError(f"experiment '{name}' was deleted (it is in the store's trash); restore it with "
                        f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or choose another "
                        "--experiment")
    mlflow.set_experiment(experiment_id=experiment.experiment_id)


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: `mlruns/<name>-<hash>` in the store's own
    folder; None (the store's default) for any other store."""
    import hashlib
    import re

    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)[:60]
    return (folder / f"{slug}-{hashlib.sha256(experiment.encode()).hexdigest()[:8]}").as_uri()
