"""When the default convert starts working, before and after a change, side by side in one run.

Runs the real CLI (`convert --quiet`, built-in data, a new SQLite store in a fresh folder) from a pre-change commit
(`--before`, checked out in a temporary `git worktree`) and from this checkout, alternating, through a small
probe that stamps two moments without changing what runs:
- ready: the command has its config, data and store (`cli._prepare` returned);
- first task: the pool's first submit returned, i.e. the fork server had imported and forked a worker;
and reads a third from the store: the convert run opened. Each is seconds after launch; wall is the command's.
The command waits in that first submit for as long as the fork server still imports: first task minus ready.

    python bench/bench_startup.py [--before REF] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_overhead import REPO, checked_out

# stamps `ready` and `first task` into $STAMPS; importable (the fork server imports a script's main module)
PROBE = '''
import os, time
def stamp(what):
    with open(os.environ["STAMPS"], "a") as f:
        f.write(f"{what} {time.time()}\\n")
if __name__ == "__main__":
    import sys
    from pipeline import cli, jobs
    prepare, submit = cli._prepare, jobs.submit
    def stamped_prepare(opts):
        out = prepare(opts)
        stamp("ready")
        return out
    def stamped_submit(*args):
        out = submit(*args)
        stamp("first task")
        jobs.submit = submit
        return out
    cli._prepare, jobs.submit = stamped_prepare, stamped_submit
    sys.argv = ["reg2cls", *sys.argv[1:]]
    cli.main()
'''


def measure(code: Path) -> dict[str, float]:
    """Seconds after launch of `ready`, `first task` and `convert run`, and the wall, of one convert from `code`."""
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        folder = Path(tmp)
        (folder / "probe.py").write_text(PROBE)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(PYTHONPATH=str(code), STAMPS=str(folder / "stamps"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a normal install: bytecode cached
        start = time.time()
        done = subprocess.run([sys.executable, str(folder / "probe.py"), "convert", "--quiet", "--tracking-uri",
                               f"sqlite:///{folder}/mlflow.db"], cwd=folder, env=env, capture_output=True, text=True)
        wall = time.time() - start
        if done.returncode != 0:
            sys.exit(f"convert from {code} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        stamps = dict(line.rsplit(" ", 1) for line in (folder / "stamps").read_text().splitlines())
        with sqlite3.connect(folder / "mlflow.db") as db:
            [(opened,)] = db.execute("SELECT MIN(start_time) FROM runs").fetchall()
    return {"ready": float(stamps["ready"]) - start, "first task": float(stamps["first task"]) - start,
            "convert run": opened / 1000 - start, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="the commit to compare with (default: merge base of HEAD and main)")
    ap.add_argument("--rounds", type=int, default=3, help="alternate before and after this many times")
    args = ap.parse_args()
    columns = ("ready", "first task", "convert run", "wall")
    with checked_out(args.before) as old:
        print("seconds after launch; the fork server's imports held the first task for (first task - ready)")
        print(f"{'code':6} " + " ".join(f"{c:>11}" for c in columns), flush=True)
        rows = {"before": [], "after": []}
        for _ in range(args.rounds):
            for label, code in (("before", old), ("after", REPO)):
                rows[label].append(measure(code))
                print(f"{label:6} " + " ".join(f"{rows[label][-1][c]:11.2f}" for c in columns), flush=True)
        for label, measured in rows.items():
            print(f"{label:6} median " + ", ".join(f"{c} {statistics.median(r[c] for r in measured):.2f}"
                                                  for c in columns))


if __name__ == "__main__":
    main()
