"""Is what ships at least as good on fresh rows as the evidence convert printed? A share of a public table is
held out of everything; convert runs on the rest (its defaults: cross-fitted below 10,000 rows, so the champion
ships as the average of its fold models); the registered champion then predicts the held-out rows, and their
macro-F1 is set beside the interval convert printed for the champion (pooled out-of-fold test rows).

    python bench/bench_shipped.py                       # white wine, quality > 6.5
    python bench/bench_shipped.py --data ../shared/data/diamonds.csv --target price --classes quantile:3
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

from pipeline import data, metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "wine_white.csv"))
    parser.add_argument("--target", default="quality")
    parser.add_argument("--classes", default="thresholds:6.5")
    parser.add_argument("--held-out", type=float, default=0.2)
    args, extra = parser.parse_known_args()
    table = pd.read_csv(args.data)
    fresh = np.random.default_rng(0).random(len(table)) < args.held_out
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table[~fresh].to_csv(tmp / "rest.csv", index=False)
        table[fresh].drop(columns=[args.target]).to_csv(tmp / "fresh.csv", index=False)
        store = f"sqlite:///{tmp}/mlflow.db"
        run = [sys.executable, "-m", "pipeline"]
        subprocess.run([*run, "convert", "--data", str(tmp / "rest.csv"), "--target", args.target, "--classes",
                        args.classes, "--tracking-uri", store, "--quiet", *extra], check=True, cwd=tmp)
        mlflow.set_tracking_uri(store)
        [parent] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'convert'",
                                      output_format="list")
        tags, m = parent.data.tags, parent.data.metrics
        if not tags.get("registered_version"):
            raise SystemExit(f"nothing registered (champion {tags['champion']}): nothing to check")
        subprocess.run([*run, "predict", "--model-uri", f"models:/{tags['registered_model']}@champion", "--input",
                        str(tmp / "fresh.csv"), "--output", str(tmp / "labels.csv"), "--tracking-uri", store],
                       check=True, cwd=tmp)
        labels = pd.read_csv(tmp / "labels.csv")["label"].astype(str)
        names = [n.strip() for n in parent.data.params["data.class_names"].split("|")]
        edges = np.array([float(e) for e in parent.data.params["data.edges"].split(",")])
        truth = data.to_classes(table[fresh][args.target].to_numpy(), edges)
        pred = np.array([names.index(name) for name in labels])
    f1 = metrics.f1_macro(truth, pred, len(names))
    low, high = m["champion/test_f1_macro_ci_low"], m["champion/test_f1_macro_ci_high"]
    where = "inside" if low <= f1 <= high else "above" if f1 > high else "BELOW"
    print(f"{Path(args.data).name}, {args.classes}: champion {tags['champion']}; convert printed test macro-F1 "
          f"{m['champion/test_f1_macro']:.3f} [{low:.3f}, {high:.3f}] (pooled out-of-fold); the shipped model on "
          f"{int(fresh.sum())} fresh rows: {f1:.3f} ({where} the interval)")


if __name__ == "__main__":
    main()
