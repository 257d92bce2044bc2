"""What a convert spends around its trainings, before and after a change, side by side in one run.

For the default `reg2cls convert` (built-in data, 5 folds) and for the white wine table (5 folds), runs the
real CLI twice: once from a pre-change commit (`--before`, checked out in a temporary `git worktree`) and once
from this checkout, each in a fresh folder with a new SQLite store. From each store it reads the training runs
(the baselines, and every strategy, variant, trial and tuned run with `cost/train_seconds` > 0) and prints:

- train s: their summed `cost/train_seconds`; run s: their summed run durations (end - start);
- train/run: the share of a run spent training; overhead: the median of (duration - training) over those runs;
- wall s: the command's wall time (with the memory sampler's small share of a core); MB, files: what the folder
  holds besides the stores (the artifacts);
- peak MiB: the peak proportional set size summed over the command and its workers (bench_scale's measure).

    python bench/bench_overhead.py [--before REF] [--cases default wine] [--data-dir ../shared/data] [--rounds N]

`--rounds N` alternates before and after N times per case and then prints the median wall of each and the median
of the pairs' after/before ratios: the machine's speed can move by half within an hour, and only pairs run side
by side compare.

REF defaults to the merge base of HEAD and main. Goals: overhead <= 0.15 s, train/run >= 0.5 on the default
convert, default wall <= 20 s on 2 cores, default artifacts <= 5 MB, peak <= 1.2 GiB.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_scale import sampled

REPO = Path(__file__).resolve().parents[1]
CASES = {"default": [],
         "wine": ["--data", "{data}/wine_white.csv", "--target", "quality", "--classes", "thresholds:6.5",
                  "--folds", "5"]}
STORES = ("mlflow.db", "optuna.db")  # and their -wal, -shm, .lock files


def convert(code: Path, args: list[str], folder: Path) -> tuple[float, int, int]:
    """(wall seconds, peak summed PSS in bytes, exit code) of one convert from the package in `code`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-m", "pipeline", "convert", "--quiet", "--tracking-uri",
           f"sqlite:///{folder}/mlflow.db", *args]
    with open(folder / "out.log", "w") as log:
        return sampled(cmd, folder, env, log)


def training_runs(folder: Path) -> list[tuple[float, float]]:
    """(training seconds, run seconds) of every run that trained, from the store in `folder`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    out = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            tags, seconds = run.data.tags, run.data.metrics.get("cost/train_seconds", 0.0)
            if seconds > 0 and (tags.get("stage") == "baseline" or "strategy" in tags) and run.info.end_time:
                out.append((seconds, (run.info.end_time - run.info.start_time) / 1000))
    return out


def artifacts(folder: Path) -> tuple[int, int]:
    """(bytes, files) the convert wrote into `folder` besides its stores and log."""
    n_bytes = n_files = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.startswith(STORES) and path.name != "out.log":
            n_bytes, n_files = n_bytes + path.stat().st_size, n_files + 1
    return n_bytes, n_files


@contextlib.contextmanager
def checked_out(before: str | None):
    """A temporary `git worktree` of the pre-change commit `before` (default: the merge base of HEAD and main),
    said on the first line of the output, removed afterwards. The after side is this checkout."""
    git = ["git", "-C", str(REPO)]
    before = before or subprocess.check_output([*git, "merge-base", "HEAD", "main"], text=True).strip()
    after = subprocess.check_output([*git, "rev-parse", "--short", "HEAD"], text=True).strip()
    with tempfile.TemporaryDirectory(prefix="bench_before_") as tmp:
        old = Path(tmp) / "code"
        subprocess.run([*git, "worktree", "add", "--detach", str(old), before], check=True, capture_output=True)
        try:
            print(f"before: {before[:10]}   after: {after} (this checkout, uncommitted changes included)")
            yield old
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(old)], check=False, capture_output=True)


def measure(code: Path, args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        folder = Path(tmp)
        wall, peak, rc = convert(code, args, folder)
        if rc != 0:
            sys.exit(f"convert from {code} failed (exit {rc}):\n" + (folder / "out.log").read_text()[-2000:])
        runs = training_runs(folder)
        n_bytes, n_files = artifacts(folder)
    train, run = sum(t for t, _ in runs), sum(r for _, r in runs)
    return {"runs": len(runs), "train s": train, "run s": run, "train/run": train / run,
            "overhead": statistics.median(r - t for t, r in runs), "wall s": wall, "MB": n_bytes / 1e6,
            "files": n_files, "peak MiB": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="the commit to compare with (default: merge base of HEAD and main)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                    help="the folder holding wine_white.csv (default: ../shared/data from the repository root)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate before and after this many times per case")
    args = ap.parse_args()
    if "wine" in args.cases and not (args.data_dir / "wine_white.csv").is_file():
        sys.exit(f"{args.data_dir / 'wine_white.csv'} not found; pass --data-dir")
    with checked_out(args.before) as old:
        header = ("runs", "train s", "run s", "train/run", "overhead", "wall s", "MB", "files", "peak MiB")
        print(f"{'case':8} {'code':6} " + " ".join(f"{h:>9}" for h in header), flush=True)
        for case in args.cases:
            walls = {"before": [], "after": []}
            for _ in range(args.rounds):
                for label, code in (("before", old), ("after", REPO)):
                    row = measure(code, [a.format(data=args.data_dir.resolve()) for a in CASES[case]])
                    walls[label].append(row["wall s"])
                    print(f"{case:8} {label:6} " + " ".join(
                        f"{row[h]:9d}" if isinstance(row[h], int) else f"{row[h]:9.2f}" for h in header),
                        flush=True)
            if args.rounds > 1:
                pairs = list(zip(walls["before"], walls["after"]))
                print(f"{case}: median wall before {statistics.median(walls['before']):.2f} s, after "
                      f"{statistics.median(walls['after']):.2f} s; after/before, median of {len(pairs)} pairs "
                      f"{statistics.median(a / b for b, a in pairs):.3f}; after faster in "
                      f"{sum(a < b for b, a in pairs)}", flush=True)


if __name__ == "__main__":
    main()
