"""Chaos: SIGKILL a real `reg2cls convert` at a random moment, run it again, and check what is left.

Each round starts a convert on small data in a fresh directory and SQLite store, kills it (SIGKILL: no
handler runs) at a seeded random moment within the length of one full convert, measured first, then runs
the same convert again. Prints, per round and in total: runs left RUNNING by the kill and after the rerun,
runs lost (present after the kill, gone after the rerun), stages the rerun reused vs ran again, whether
the rerun completed, and SQLite's `PRAGMA integrity_check`. Target: 0 RUNNING, 0 corrupt stores, every
rerun completes.

    python bench/bench_chaos.py [--rounds 20] [--seed 0] [extra convert args...]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONVERT = ["--data", "synthetic:friedman1?rows=300", "--epochs", "20", "--device", "cpu", "--set", "data.folds=1",
           "--set", "tune.n_trials=2", "--set", "tune.epochs=10", "--set", "slim.epochs=10",
           "--experiment", "chaos"]
STAGES = ("baseline", "head_swap", "slim", "tune", "compare")


def env_for(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(REPO),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def runs(db: Path) -> dict[str, str]:
    """run id -> status, read straight from the SQLite file (no MLflow import here)."""
    if not db.exists():
        return {}
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return dict(con.execute("SELECT run_uuid, status FROM runs"))
        except sqlite3.DatabaseError:  # killed before the tables existed
            return {}


def integrity(db: Path) -> str:
    if not db.exists():
        return "ok (no store yet)"
    with sqlite3.connect(db, timeout=30) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def convert(cwd: Path, db: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "convert", *args], cwd=cwd, env=env_for(db),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def one_round(kill_at: float, args: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cwd, db = Path(tmp), Path(tmp) / "mlflow.db"
        proc = convert(cwd, db, args)
        try:
            proc.wait(timeout=kill_at)
            killed = False  # finished before its moment came
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
        after_kill = runs(db)
        check_kill = integrity(db)
        rerun = convert(cwd, db, args)
        out = rerun.communicate(timeout=600)[0]
        after = runs(db)
        reused = sorted({m for m in re.findall(r"^(\w+): reusing finished run", out, re.M) if m in STAGES})
        return {
            "kill_at": kill_at, "killed": killed, "running_after_kill": list(after_kill.values()).count("RUNNING"),
            "integrity_after_kill": check_kill, "rerun_rc": rerun.returncode, "rerun_tail": out[-600:],
            "ended_by_sweep": int(m.group(1)) if (m := re.search(r"store: ended (\d+) run", out)) else 0,
            "running_after_rerun": list(after.values()).count("RUNNING"),
            "lost": len(set(after_kill) - set(after)), "integrity": integrity(db),
            "reused": reused, "rerun_stages": [s for s in STAGES if s not in reused],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    known, extra = parser.parse_known_args()
    args = CONVERT + extra
    rng = random.Random(known.seed)

    with tempfile.TemporaryDirectory() as tmp:  # one full convert: the window the kills fall in
        t = time.perf_counter()
        ref = convert(Path(tmp), Path(tmp) / "mlflow.db", args)
        ref_out = ref.communicate(timeout=600)[0]
        full = time.perf_counter() - t
        if ref.returncode != 0:
            sys.exit(f"the reference convert failed:\n{ref_out[-2000:]}")
    print(f"reg2cls convert {' '.join(args)}\none full convert: {full:.1f} s; kills drawn uniformly in "
          f"[0.5, {full:.1f}] s (seed {known.seed})\n")
    print(f"{'round':>5} {'kill s':>6} {'killed':>6} {'RUNNING':>7} {'ended':>5} {'RUNNING':>7} {'lost':>4} "
          f"{'rerun':>5} {'integrity':>9}  reused / re-run")
    print(f"{'':>5} {'':>6} {'':>6} {'by kill':>7} {'sweep':>5} {'after':>7} {'':>4} {'rc':>5} {'':>9}")
    results = []
    for i in range(known.rounds):
        r = one_round(rng.uniform(0.5, full), args)
        results.append(r)
        print(f"{i:>5} {r['kill_at']:>6.1f} {'yes' if r['killed'] else 'no':>6} {r['running_after_kill']:>7} "
              f"{r['ended_by_sweep']:>5} {r['running_after_rerun']:>7} {r['lost']:>4} {r['rerun_rc']:>5} "
              f"{r['integrity'][:9]:>9}  {','.join(r['reused']) or '-'} / {','.join(r['rerun_stages'])}", flush=True)
        if r["rerun_rc"] != 0:
            print(f"      rerun output: {r['rerun_tail']}")
    n = len(results)
    print(f"\n{n} rounds, {sum(r['killed'] for r in results)} killed mid-run")
    print(f"  runs left RUNNING by the kills      : {sum(r['running_after_kill'] for r in results)} "
          f"(ended by the rerun's sweep: {sum(r['ended_by_sweep'] for r in results)})")
    print(f"  runs RUNNING after the reruns       : {sum(r['running_after_rerun'] for r in results)}   (target 0)")
    print(f"  runs lost                           : {sum(r['lost'] for r in results)}   (target 0)")
    sound = [r["integrity"].startswith("ok") and r["integrity_after_kill"].startswith("ok") for r in results]
    corrupt = sound.count(False)
    print(f"  stores failing integrity_check      : {corrupt}   (target 0; checked after the kill and after the rerun)")
    print(f"  reruns that did not complete        : {sum(r['rerun_rc'] != 0 for r in results)}   (target 0)")
    print(f"  stages reused / re-run by the reruns: {sum(len(r['reused']) for r in results)} / "
          f"{sum(len(r['rerun_stages']) for r in results)}")


if __name__ == "__main__":
    main()
