"""Label smoothing on the classifier heads (train.label_smoothing): the validation macro-F1 of the trained head-swap
strategies with and without it, per data set and seed.

Per table and seed: the default baseline regressor trains once, then the head_swap stage converts it once per
smoothing value, on the same splits, in a throwaway MLflow store, one process and one core (train.jobs 1).
Validation only: the default is chosen from these, so test rows stay unseen. Each strategy's val/f1_macro is the
one its run logs (its decision rule fitted on validation, as for every run the champion is chosen from).

    python bench/bench_smoothing.py --data wine,penguins,diabetes --seeds 3 --smoothing 0,0.1
    python bench/bench_smoothing.py --smoothing 0 --set train.lr_schedule=cosine --set train.epochs=30 \
        --set train.patience=0     # other settings, for baseline and heads alike: compare with a run without them
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd

from bench_regressor import DATA, table_source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="wine,penguins,diabetes")
    p.add_argument("--smoothing", default="0,0.1", help="comma-separated train.label_smoothing values")
    p.add_argument("--strategies", default="finetune,lp_ft,warm_start,scratch,corn")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--diamonds-rows", type=int, default=10000)
    p.add_argument("--friedman-rows", type=int, default=10000)
    p.add_argument("--data-dir", type=Path, default=DATA, help="where the tables are (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config setting for the baseline and every head-swap run (repeatable)")
    args = p.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)

    tmp = Path(tempfile.mkdtemp(prefix="bench_smoothing_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    os.chdir(tmp)
    import mlflow
    import torch

    from pipeline import config, tracking
    from pipeline.data import prepare
    from pipeline.stages.baseline import baseline
    from pipeline.stages.head_swap import head_swap

    torch.set_num_threads(1)
    mlflow.set_experiment("bench_smoothing")
    rows = []
    for name in args.data.split(","):
        source, target, classes = table_source(name, args, tmp)
        for seed in range(args.seeds):
            base = {"data.source": source, "data.target": target, "data.classes": classes, "data.folds": "1",
                    "seed": seed, "train.device": "cpu", "train.jobs": 1,
                    "head_swap.strategies": tuple(args.strategies.split(",")), **settings}
            cfg = config.load(None, base)
            data = prepare(cfg.data, cfg.seed)
            regressor = baseline(cfg, data, None, force=True)
            for s in args.smoothing.split(","):
                run_cfg = config.load(None, {**base, "train.label_smoothing": float(s)})
                stage = head_swap(run_cfg, data, regressor, force=True)
                for child in tracking.children(stage.run_id):
                    strategy = child.data.tags.get("strategy", child.info.run_name)
                    if "val/f1_macro" in child.data.metrics and strategy != "threshold":
                        rows.append((name, float(s), seed, strategy, child.data.metrics["val/f1_macro"]))
            print(f"  {name} seed {seed} done", flush=True)
    table = pd.DataFrame(rows, columns=["data", "smoothing", "seed", "strategy", "f1"])
    per = table.pivot_table(index=["data", "strategy"], columns="smoothing", values="f1", aggfunc="mean")
    print("\nmean validation macro-F1 over seeds, per strategy:\n" + per.round(3).to_string())
    best = table.groupby(["data", "smoothing", "seed"]).f1.max().reset_index()
    summary = best.groupby(["data", "smoothing"]).f1.agg(["mean", "min", "max"])
    print("\nbest trained strategy's validation macro-F1 (mean [min, max] over seeds):\n"
          + summary.round(3).to_string())
    mean = table.groupby(["data", "smoothing", "seed"]).f1.mean().reset_index()
    summary = mean.groupby(["data", "smoothing"]).f1.agg(["mean", "min", "max"])
    print("\nmean over trained strategies (mean [min, max] over seeds):\n" + summary.round(3).to_string())
    for label, per_seed in (("best trained strategy", best), ("mean over trained strategies", mean)):
        wide = per_seed.pivot_table(index=["data", "seed"], columns="smoothing", values="f1")
        paired = wide.sub(wide.iloc[:, 0], axis=0).iloc[:, 1:]  # each value minus the first, seed by seed
        print(f"\n{label}, minus smoothing {wide.columns[0]:g} on the same seed (mean [min, max], wins/seeds):")
        for name, g in paired.groupby(level="data", sort=False):
            for s in g.columns:
                d = g[s]
                print(f"  {name:9s} {s:g}: {d.mean():+.4f} [{d.min():+.4f}, {d.max():+.4f}] {(d > 0).sum()}/{len(d)}")


if __name__ == "__main__":
    main()
