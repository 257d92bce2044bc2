"""--jobs 2 vs --jobs 1: the default convert on diamonds (price, quantile:3), side by side in one run.

Each runs the real `reg2cls convert` in its own fresh store; prints both wall times, the ratio (goal: >= 1.7x
on 2 cores) and the two leaderboards' validation and test macro-F1, which must agree within noise (every
training is seeded, so they should agree exactly). `--rounds N` alternates the two N times and reports each
round's ratio and the median wall times: one run moves by several seconds on a noisy machine.

    python bench/bench_jobs.py [--rounds N] [--data PATH] [--rows N] [--target COL --classes SPEC]
    python bench/bench_jobs.py --data ../shared/data/wine_white.csv --target quality --classes thresholds:6.5

The second, wine (4,898 rows), is cross-fitted over 5 folds: there the folds' baselines and tuned refits
run side by side too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DIAMONDS = REPO.parent / "shared" / "data" / "diamonds.csv"


def convert(jobs: int, args: list[str]) -> tuple[float, pd.DataFrame]:
    """Wall seconds of one convert in a fresh store, and its leaderboard."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", PYTHONPATH=str(REPO),
                   MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--jobs", str(jobs), *args],
                              env=env, cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode:
            sys.exit(f"convert --jobs {jobs} failed: {proc.stderr.strip().splitlines()[-1]}")
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        [parent] = mlflow.search_runs(experiment_names=["reg2cls"], filter_string="tags.stage = 'convert'",
                                      output_format="list")
        board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                                artifact_path="leaderboard.csv"))
    return seconds, board.set_index(["stage", "strategy"])[["val_f1_macro", "f1_macro"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DIAMONDS))
    p.add_argument("--rows", type=int, default=0, help="use the first N rows (0: all)")
    p.add_argument("--target", default="price")
    p.add_argument("--classes", default="quantile:3")
    p.add_argument("--rounds", type=int, default=1, help="alternate --jobs 1 and 2 this many times")
    a = p.parse_args()
    data = str(Path(a.data).resolve())  # convert runs in its own temporary folder
    if a.rows:
        data = str(Path(tempfile.mkdtemp()) / "subset.csv")
        pd.read_csv(a.data).head(a.rows).to_csv(data, index=False)
    args = ["--data", data, "--target", a.target, "--classes", a.classes]
    ones, twos = [], []
    for i in range(a.rounds):
        (one, board_one), (two, board_two) = convert(1, args), convert(2, args)
        ones.append(one)
        twos.append(two)
        if a.rounds > 1:
            print(f"round {i + 1}: --jobs 1 {one:7.1f} s, --jobs 2 {two:7.1f} s, speed-up {one / two:.2f}x", flush=True)
    one, two = statistics.median(ones), statistics.median(twos)
    print(f"data: {a.data}{f' (first {a.rows} rows)' if a.rows else ''}, {os.cpu_count()} cores")
    median = " (median of the rounds)" if a.rounds > 1 else ""
    print(f"convert --jobs 1: {one:7.1f} s{median}")
    print(f"convert --jobs 2: {two:7.1f} s{median}   speed-up {one / two:.2f}x (goal >= 1.7x)")
    both = board_one.add_suffix(" (1 job)").join(board_two.add_suffix(" (2 jobs)"))
    print(both.round(4).to_string())
    print(f"largest difference in test macro-F1: {(board_one['f1_macro'] - board_two['f1_macro']).abs().max():.4f}")


if __name__ == "__main__":
    main()
