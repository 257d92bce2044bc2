"""Chaos: SIGKILL a real `reg2cls convert` at a random moment, run it again, and check what is left; or
(`--hostile`) feed real commands what a hostile user would, one case per kind of failure.

Each round starts a convert on small data in a fresh directory and SQLite store, kills it (SIGKILL: no
handler runs) at a seeded random moment within the length of one full convert, measured first, then runs
the same convert again. Prints, per round and in total: runs left RUNNING by the kill and after the rerun,
runs lost (present after the kill, gone after the rerun), processes of the killed command still alive 10 s
later (its workers, fork server, resource tracker), stages the rerun reused vs ran again, whether the rerun
completed, and SQLite's `PRAGMA integrity_check`. Target: 0 RUNNING, 0 processes left, 0 corrupt stores,
every rerun completes.

`--hostile` runs each case of HOSTILE (odd tables, names, configs, predict inputs, model code that exits, the
store's trash and registry) as a real command and prints its exit code, whether its output holds the
expected line and no traceback, and the runs it left RUNNING; then the temporary files a full convert left
behind and whether it wrote ./mlruns into the working directory. Target: every case as expected, 0 RUNNING,
0 temporary files, no ./mlruns.

    python bench/bench_chaos.py [--rounds 20] [--seed 0] [extra convert args...]
    python bench/bench_chaos.py --hostile
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

from bench_scale import _tree

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


def still_alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in
            Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[:1]}


def one_round(kill_at: float, args: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cwd, db = Path(tmp), Path(tmp) / "mlflow.db"
        proc = convert(cwd, db, args)
        children: set[int] = set()
        try:
            proc.wait(timeout=kill_at)
            killed = False  # finished before its moment came
        except subprocess.TimeoutExpired:
            children = set(_tree(proc.pid)) - {proc.pid}  # every process below the command
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
        time.sleep(10 if children else 0)
        left = still_alive(children)
        for pid in left:  # not this bench's to keep: the count is the result
            os.kill(pid, signal.SIGKILL)
        after_kill = runs(db)
        check_kill = integrity(db)
        rerun = convert(cwd, db, args)
        out = rerun.communicate(timeout=600)[0]
        after = runs(db)
        reused = sorted({m for m in re.findall(r"^(\w+): reusing finished run", out, re.M) if m in STAGES})
        return {
            "kill_at": kill_at, "killed": killed, "running_after_kill": list(after_kill.values()).count("RUNNING"),
            "processes_left": len(left),
            "integrity_after_kill": check_kill, "rerun_rc": rerun.returncode, "rerun_tail": out[-600:],
            "ended_by_sweep": int(m.group(1)) if (m := re.search(r"store: ended (\d+) run", out)) else 0,
            "running_after_rerun": list(after.values()).count("RUNNING"),
            "lost": len(set(after_kill) - set(after)), "integrity": integrity(db),
            "reused": reused, "rerun_stages": [s for s in STAGES if s not in reused],
        }


# ------------------------------------------------------------------------------------------ hostile input
SMALL = ["--epochs", "5", "--device", "cpu", "--folds", "1", "--set", "train.jobs=1", "--set", "model.width=16"]
FAST = [*SMALL, "--strategies", "threshold,warm_start", "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false",
        "--set", "slim.epochs=3", "--set", "compare.reference=false", "--set", "tune.n_trials=1"]
EXITS = (REPO / "tests" / "exits.py").read_text()  # a model that exits where EXIT_AT says
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh")) + \
    "head_swap:\n  strategies: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"
MODEL = ["--model", "exits.py:Net", "--model-kwargs", '{"input_dim": 5}', "--retrain"]
# case -> (command and arguments, {environment}, expected exit code, a piece of the expected output)
HOSTILE = {
    "repeated-columns": (["convert", "--data", "repeated.csv", *FAST], {}, 1, "repeated column name(s) 'a', 'target'"),
    "saved-index": (["baseline", "--data", "indexed.csv", *SMALL], {}, 0, "dropped the unnamed column 1"),
    "thousands-separators": (["baseline", "--data", "thousands.csv", *SMALL], {}, 0, "6 features"),
    "ambiguous-separators": (["convert", "--data", "ambiguous.csv", *FAST], {}, 1, "could use ',' as a thousands"),
    "nested-parquet": (["convert", "--data", "nested.parquet", *FAST], {}, 1, "holds lists or structs"),
    "wide-one-hot": (["baseline", "--data", "wide.csv", *SMALL], {}, 0, "one-hot encoding adds up to"),
    "features-repeated": (["convert", "--data", "base.csv", "--features", "a,a,b", *FAST], {}, 1, "more than once"),
    "experiment-newline": (["convert", "--data", "base.csv", "--experiment", "a\nb", *FAST], {}, 1,
                           "control character"),
    "register-at-sign": (["convert", "--data", "base.csv", "--set", "compare.register=a@b", *FAST], {}, 1,
                         "contains '@'"),
    "yaml-alias-bomb": (["convert", "--config", "laughs.yaml", "--data", "base.csv", *FAST], {}, 1,
                        "expands to more than"),
    "yaml-deep": (["convert", "--config", "deep.yaml", "--data", "base.csv", *FAST], {}, 1, "nested too deeply"),
    "exit-at-import": (["convert", "--data", "base.csv", *MODEL, *FAST], {"EXIT_AT": "import"}, 1, "SystemExit: 2"),
    "exit-in-init": (["convert", "--data", "base.csv", *MODEL, *FAST], {"EXIT_AT": "init"}, 1, "sys.exit(3) at"),
    "exit-in-training": (["convert", "--data", "base.csv", *MODEL, *FAST], {"EXIT_AT": "training"}, 1,
                         "sys.exit(9) at"),
    "exit-in-a-worker": (["convert", "--data", "base.csv", *MODEL, *FAST, "--set", "train.jobs=2"],
                         {"EXIT_AT": "worker"}, 1, "sys.exit(7) at"),
    "os-exit-in-forward": (["convert", "--data", "base.csv", *MODEL, *FAST], {"EXIT_AT": "os-exit"}, 1,
                           "os._exit(6) at"),
    "zip-bomb-checkpoint": (["convert", "--data", "base.csv", "--model", "exits.py:Net", "--checkpoint", "bomb.pt",
                             *FAST], {}, 1, "declares 256 MB of content"),
    "deleted-experiment": (["convert", "--data", "base.csv", "--experiment", "trashed", *FAST], {}, 1,
                           "mlflow experiments restore"),
    "foreign-champion": (["convert", "--data", "base.csv", "--set", "compare.register=foreign", *FAST], {}, 1,
                         "that reg2cls did not register"),
    "predict-over-its-input": (["predict", "--model-uri", "models:/hostile-base@champion", "--input", "new.csv",
                                "--output", "new.csv"], {}, 1, "is the --input file"),
    "predict-header-only": (["predict", "--model-uri", "models:/hostile-base@champion", "--input", "empty.csv"],
                            {}, 0, "wrote 0 predictions"),
    "predict-beyond-float32": (["predict", "--model-uri", "models:/hostile-base@champion", "--input", "huge.csv"],
                               {}, 1, "too large for the model"),
}


def hostile_files(cwd: Path) -> None:
    """The tables, configs and model file the HOSTILE cases read."""
    import zipfile

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    base = pd.DataFrame(rng.normal(size=(300, 5)), columns=list("abcde"))
    base["target"] = base["a"] * 2 + base["b"] + rng.normal(size=300) * 0.3
    base.to_csv(cwd / "base.csv", index=False)
    (cwd / "repeated.csv").write_text("a,a,b,target,target\n" + "".join(
        f"{r.a},{r.a},{r.b},{r.target},{r.target}\n" for r in base.itertuples()))
    base.sort_values("target").to_csv(cwd / "indexed.csv")
    base.assign(f=[f"{v:,}" for v in rng.integers(1000, 5_000_000, 300)]).to_csv(cwd / "thousands.csv", index=False)
    base.assign(f=[f"{v:,}" for v in rng.integers(1000, 9999, 300)]).to_csv(cwd / "ambiguous.csv", index=False)
    base.assign(f=[[1.0, 2.0]] * 300).to_parquet(cwd / "nested.parquet")
    base.assign(f=[f"k{v}" for v in rng.integers(0, 90, 300)]).to_csv(cwd / "wide.csv", index=False)
    (cwd / "laughs.yaml").write_text(LAUGHS)
    (cwd / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (cwd / "exits.py").write_text(EXITS)
    with zipfile.ZipFile(cwd / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 2**28)
    features = base.drop(columns=["target"])
    features.head(20).to_csv(cwd / "new.csv", index=False)
    features.head(0).to_csv(cwd / "empty.csv", index=False)
    features.head(5).assign(a=[0.1, 1e308, 0.2, 0.3, 0.4]).to_csv(cwd / "huge.csv", index=False)


def hostile_store(db: Path) -> None:
    """What the store-side cases meet: an experiment in the trash, a champion alias someone else set."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    client.delete_experiment(client.create_experiment("trashed"))
    client.create_registered_model("foreign")
    version = client.create_model_version("foreign", source="file:///nowhere/model")
    client.set_registered_model_alias("foreign", "champion", version.version)


def run_command(cwd: Path, db: Path, args: list[str], env: dict[str, str], timeout: float = 600):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env={**env_for(db), **env},
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def hostile() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd, store, scratch = Path(tmp) / "work", Path(tmp) / "store", Path(tmp) / "tmp"
        for folder in (cwd, store, scratch):
            folder.mkdir()
        db = store / "mlflow.db"
        hostile_files(cwd)
        rc, out, seconds = run_command(cwd, db, ["convert", "--data", "base.csv", "--experiment", "hostile", *FAST],
                                       {"TMPDIR": str(scratch)})
        if rc != 0:
            sys.exit(f"the champion's convert failed:\n{out[-2000:]}")
        left = [p for p in scratch.iterdir() if not p.name.startswith("torchinductor")]  # torch's compile cache
        print(f"a full convert ({seconds:.0f} s): {len(left)} temporary file(s) left (target 0); ./mlruns in the "
              f"working directory: {'yes' if (cwd / 'mlruns').exists() else 'no'} (target no)\n")
        hostile_store(db)
        print(f"{'case':<26} {'rc':>3} {'want':>4} {'line':>4} {'trace':>5} {'RUNNING':>7} {'s':>5}")
        wrong = 0
        for name, (args, env, want_rc, want_text) in HOSTILE.items():
            before = list(runs(db).values()).count("RUNNING")
            rc, out, seconds = run_command(cwd, db, args, env, timeout=300)
            running = list(runs(db).values()).count("RUNNING") - before
            ok = rc == want_rc and want_text in out and "Traceback" not in out and running == 0
            wrong += not ok
            print(f"{name:<26} {rc:>3} {want_rc:>4} {'yes' if want_text in out else 'NO':>4} "
                  f"{'YES' if 'Traceback' in out else 'no':>5} {running:>7} {seconds:>5.1f}"
                  + ("" if ok else f"\n    {out.strip().splitlines()[-1][:300] if out.strip() else '(no output)'}"),
                  flush=True)
        print(f"\n{len(HOSTILE)} hostile cases, {wrong} not as expected (target 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hostile", action="store_true", help="run the hostile-input cases instead of the kills")
    known, extra = parser.parse_known_args()
    if known.hostile:
        hostile()
        return
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
    print(f"{'round':>5} {'kill s':>6} {'killed':>6} {'RUNNING':>7} {'procs':>5} {'ended':>5} {'RUNNING':>7} "
          f"{'lost':>4} {'rerun':>5} {'integrity':>9}  reused / re-run")
    print(f"{'':>5} {'':>6} {'':>6} {'by kill':>7} {'left':>5} {'sweep':>5} {'after':>7} {'':>4} {'rc':>5} {'':>9}")
    results = []
    for i in range(known.rounds):
        r = one_round(rng.uniform(0.5, full), args)
        results.append(r)
        print(f"{i:>5} {r['kill_at']:>6.1f} {'yes' if r['killed'] else 'no':>6} {r['running_after_kill']:>7} "
              f"{r['processes_left']:>5} {r['ended_by_sweep']:>5} {r['running_after_rerun']:>7} {r['lost']:>4} "
              f"{r['rerun_rc']:>5} "
              f"{r['integrity'][:9]:>9}  {','.join(r['reused']) or '-'} / {','.join(r['rerun_stages'])}", flush=True)
        if r["rerun_rc"] != 0:
            print(f"      rerun output: {r['rerun_tail']}")
    n = len(results)
    print(f"\n{n} rounds, {sum(r['killed'] for r in results)} killed mid-run")
    print(f"  runs left RUNNING by the kills      : {sum(r['running_after_kill'] for r in results)} "
          f"(ended by the rerun's sweep: {sum(r['ended_by_sweep'] for r in results)})")
    print(f"  processes left alive by the kills   : {sum(r['processes_left'] for r in results)}   (target 0)")
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
