"""Who owns a run, and whether that owner still lives: the facts behind "no run is left RUNNING".

Every run that `tracking.start` opens is tagged with its owner (host, pid namespace, pid, process start
time) and a `heartbeat` (Unix seconds), which one daemon thread per process refreshes for every run the
process holds open. `orphan_reason` reads those tags back and says why a RUNNING run can no longer be
ended by its owner: the owner is provably gone (same host and pid namespace, and the pid is dead, a
zombie, or reused by a process with another start time), or, for an owner this machine cannot inspect,
its heartbeat is older than the limit. A live owner on this machine is never judged by its heartbeat: a
busy or suspended worker is still the owner. Talks to no store: tracking.py writes and reads the tags.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

OWNER_TAGS = ("owner.host", "owner.pidns", "owner.pid", "owner.start")
HEARTBEAT_TAG = "heartbeat"
KILLED_REASON_TAG = "killed_reason"


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment; a bad value is refused by `check_env`."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 and value == value and value != float("inf") else default


def heartbeat_interval() -> float:
    """Seconds between two heartbeats of one process (REG2CLS_HEARTBEAT_S, default 30)."""
    return _env_seconds("REG2CLS_HEARTBEAT_S", 30.0)


def stale_after() -> float:
    """A run whose heartbeat is older than this many seconds has lost its owner (REG2CLS_STALE_AFTER_S,
    default 600); applies only to owners on another machine, whose pid cannot be checked from here."""
    return _env_seconds("REG2CLS_STALE_AFTER_S", 600.0)


def check_env() -> str | None:
    """A one-line complaint about a malformed liveness variable, or None."""
    for name in ("REG2CLS_HEARTBEAT_S", "REG2CLS_STALE_AFTER_S"):
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            ok = 0 < float(raw) < float("inf")
        except ValueError:
            ok = False
        if not ok:
            return f"{name}={raw!r} must be a positive number of seconds"
    if heartbeat_interval() * 3 > stale_after():
        return (f"REG2CLS_HEARTBEAT_S ({heartbeat_interval():g}) must be at most a third of REG2CLS_STALE_AFTER_S "
                f"({stale_after():g}), or live runs on other machines would look dead")
    return None


# ------------------------------------------------------------------------------------ the owner
def _pid_namespace() -> str:
    # two containers may share a hostname, never a pid namespace: a pid means something only inside one
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start(pid: int) -> str:
    """When `pid` started, as whole Unix seconds ('' where /proc cannot tell: not Linux). A reused pid
    has another start time, so (pid, start) names one process for the life of the machine."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    except (OSError, IndexError):
        return ""
    boot = _boot_time()
    if boot is None:
        return ""
    # field 22 of stat (index 19 after the name) is the start in clock ticks since boot
    return str(int(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")))


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


_ME: dict[str, str] = {}


def owner_tags() -> dict[str, str]:
    """This process as a run's owner (computed once: none of it changes while the process lives)."""
    if not _ME:
        _ME.update({"owner.host": socket.gethostname(), "owner.pidns": _pid_namespace(),
                    "owner.pid": str(os.getpid()), "owner.start": process_start(os.getpid())})
    return dict(_ME)


def is_mine(tags: dict[str, str]) -> bool:
    me = owner_tags()
    return all(tags.get(k) == me[k] for k in OWNER_TAGS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return not _zombie(pid)


def alive(pid: int, start: str = "") -> bool:
    """Whether process `pid` still runs here, and is the one that started at `start` (process_start) when given."""
    return _alive(pid) and (not start or process_start(pid) in ("", start))


def orphan_reason(tags: dict[str, str], now: float | None = None, limit: float | None = None) -> str | None:
    """Why a RUNNING run's owner can no longer end it, or None while the owner may still be at work.

    Runs without owner tags (not opened by reg2cls) are never judged: nothing proves their owner gone."""
    if "owner.pid" not in tags:
        return None
    me = owner_tags()
    if is_mine(tags):
        return None
    now = time.time() if now is None else now
    limit = stale_after() if limit is None else limit
    host = tags.get("owner.host", "")
    if host == me["owner.host"] and tags.get("owner.pidns", "") == me["owner.pidns"]:
        try:
            pid = int(tags["owner.pid"])
        except ValueError:
            return None
        if not _alive(pid):
            return f"owner process {pid} on {host} is gone (killed or crashed)"
        start = tags.get("owner.start", "")
        if start and me["owner.start"] and process_start(pid) not in ("", start):
            return f"owner process {pid} on {host} is gone (its pid now belongs to another process)"
        return None  # alive here: its heartbeat does not matter
    try:
        beat = float(tags.get(HEARTBEAT_TAG, ""))
    except ValueError:
        return None
    if now - beat > limit:
        return f"no heartbeat from {host} pid {tags['owner.pid']} for {now - beat:.0f} s (limit {limit:g} s)"
    return None


# ------------------------------------------------------------------------------------ heartbeat
class Heartbeat:
    """One daemon thread per process that refreshes the `heartbeat` tag of every run the process holds
    open, every `heartbeat_interval()` seconds. `write(run_id, uri, tags)` does the writing (tracking.py
    passes it in: this module does not talk to MLflow); a failed write is skipped, never raised."""

    def __init__(self, write) -> None:
        self.write = write
        self.runs: dict[str, str] = {}  # run id -> tracking URI
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def hold(self, run_id: str, uri: str) -> None:
        with self.lock:
            self.runs[run_id] = uri
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="reg2cls-heartbeat", daemon=True)
                self.thread.start()

    def release(self, run_id: str) -> None:
        with self.lock:
            self.runs.pop(run_id, None)

    def held(self) -> set[str]:
        with self.lock:
            return set(self.runs)

    def _run(self) -> None:
        last = time.time()
        while True:
            # short naps, the interval read anew each time: a changed REG2CLS_HEARTBEAT_S applies at once
            time.sleep(min(1.0, heartbeat_interval()))
            if time.time() - last < heartbeat_interval():
                continue
            last = time.time()
            with self.lock:
                runs = dict(self.runs)
            beat = {HEARTBEAT_TAG: str(int(time.time()))}
            for run_id, uri in runs.items():
                with contextlib.suppress(Exception):  # a busy store or an ended run: the next beat will do
                    self.write(run_id, uri, beat)
