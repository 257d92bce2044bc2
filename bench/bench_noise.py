"""How often does convert name a winner where there is none? Tables whose features are independent of the target
(600 rows, 8 features, three quantile classes, as a user's table with no signal would be), converted with the
default settings; a verdict that says a row "beats" thresholding, or a champion whose test interval against the
class prior excludes zero, is a false winner. Goal: at most the nominal 5% of tables.

    python bench/bench_noise.py [--tables 10] [convert options, e.g. --folds 1]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd


def one_table(seed: int, folder: Path, extra: list[str]) -> tuple[str, str, float, float]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.normal(size=(600, 8)), columns=[f"x{i}" for i in range(8)])
    table["y"] = rng.normal(size=600)
    path = folder / f"noise_{seed}.csv"
    table.to_csv(path, index=False)
    store = f"sqlite:///{folder}/mlflow_{seed}.db"
    out = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--data", str(path), "--target", "y",
                          "--classes", "quantile:3", "--tracking-uri", store, "--quiet", *extra],
                         capture_output=True, text=True, cwd=folder)
    if out.returncode != 0:
        raise SystemExit(f"convert failed on table {seed}: {out.stderr.strip().splitlines()[-1:]}")
    verdict = next((line for line in out.stdout.splitlines() if line.startswith("Verdict:")), "")
    mlflow.set_tracking_uri(store)
    [parent] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'convert'",
                                  output_format="list")
    m = parent.data.metrics
    return parent.data.tags["champion"], verdict, m.get("champion/vs_prior_low", float("nan")), \
        m["champion/test_f1_macro"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=10)
    args, extra = parser.parse_known_args()
    false = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.tables):
            champion, verdict, vs_prior_low, f1 = one_table(seed, Path(tmp), extra)
            wrong = " beats " in verdict or vs_prior_low > 0
            false += wrong
            print(f"table {seed}: champion {champion:<16} test macro-F1 {f1:.3f}  "
                  f"{'FALSE WINNER' if wrong else 'ok'}  | {verdict[:90]}", flush=True)
    print(f"false winners: {false} of {args.tables} tables ({false / args.tables:.0%}); goal <= 5%")


if __name__ == "__main__":
    main()
