"""Candidate built-in regressors side by side: validation RMSE, the validation macro-F1 of the regressor cut at
the class edges (what the `threshold` strategy scores) and wall seconds, per data set.

Each candidate runs the pipeline's own baseline stage (data.prepare, the MLP with its options, fit, the logged
metrics) in one process, in a throwaway MLflow store, one after the other on the same splits. Validation
metrics only: the default is chosen from these, so test rows stay unseen. The wall seconds include the
stage's logging, which a default `convert` pays too; builtin:diabetes shows the cost where the default
`convert` has its 60 s budget.

An ensemble (model.ensemble) trains each member on its own loss (train.batch_loss, as TabM does); the candidates
marked "mean loss" train it as before, on the loss of the members' mean output, for the comparison.

    python bench/bench_regressor.py [--diamonds-rows 15000] [--only plain,periodic] [--data wine,diamonds,diabetes]
    python bench/bench_regressor.py --data wine,diamonds,diabetes,penguins,friedman1 \
        --only "2x256,2x256 ens 8,2x256 ens 8 mean loss"     # the ensemble's loss, per member or of the mean
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the clone
# name -> (source, target, classes); diamonds is subsampled to --diamonds-rows below
DATASETS = {"wine": ("wine_white.csv", "quality", "thresholds:6.5"),   # a file name: a file of --data-dir
            "diamonds": ("diamonds.csv", "price", "quantile:3"),
            "diabetes": ("builtin:diabetes", "target", "quantile:3"),
            "penguins": ("penguins.csv", "body_mass_g", "quantile:3"),
            "friedman1": ("synthetic:friedman1?rows=20000", "target", "quantile:3")}
# every candidate is 2x64 unless it says otherwise (model.width's auto would pick 256 on these tables)
CANDIDATES = {"plain 2x64": {"width": 64}, "3x128": {"depth": 3, "width": 128}, "2x256": {"width": 256},
              "periodic": {"width": 64, "embedding": "periodic"}, "piecewise": {"width": 64, "embedding": "piecewise"},
              "ensemble 8": {"width": 64, "ensemble": 8},
              "periodic+ens 8": {"width": 64, "embedding": "periodic", "ensemble": 8},
              "ensemble 8 mean loss": {"width": 64, "ensemble": 8, "mean loss": True},
              "2x256 ens 8": {"width": 256, "ensemble": 8},
              "2x256 ens 8 mean loss": {"width": 256, "ensemble": 8, "mean loss": True}}


@contextlib.contextmanager
def mean_loss(on: bool):
    """While `on`, an ensemble trains on the loss of its members' mean output (before train.batch_loss trained
    each member on its own): without `member_outputs`, batch_loss takes the model's output."""
    from pipeline.model import MLP

    if not on:
        yield
        return
    MLP.member_outputs, saved = None, MLP.member_outputs
    try:
        yield
    finally:
        MLP.member_outputs = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diamonds-rows", type=int, default=15000)
    p.add_argument("--data", default="wine,diamonds,diabetes")
    p.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidate names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=DATA, help="where the tables are (default: %(default)s)")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_regressor_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    os.chdir(tmp)  # the stage's artifacts land in the throwaway folder too
    import mlflow
    import torch

    from pipeline import config, tracking
    from pipeline.data import prepare
    from pipeline.stages.baseline import baseline

    torch.set_num_threads(1)  # what the pipeline runs with (train.threads)
    mlflow.set_experiment("bench_regressor")
    rows = []
    for name in args.data.split(","):
        source, target, classes = DATASETS[name]
        if source.endswith(".csv"):
            source = str(args.data_dir.resolve() / source)
        if name == "diamonds":
            frame = pd.read_csv(source).sample(n=args.diamonds_rows, random_state=0)
            source = str(tmp / "diamonds_sample.csv")
            frame.to_csv(source, index=False)
        cfg = config.load(None, {"data.source": source, "data.target": target, "data.classes": classes,
                                 "data.folds": "1", "seed": args.seed, "train.device": "cpu"})
        data = prepare(cfg.data, cfg.seed)
        if not rows:  # a warm-up run, not shown: the first run in a process pays one-off costs (imports, caches)
            baseline(cfg, data, None, force=True)
        for label in args.only.split(","):
            options = {k: v for k, v in CANDIDATES[label].items() if k != "mean loss"}
            run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **options))
            t = time.perf_counter()
            with mean_loss(CANDIDATES[label].get("mean loss", False)):
                result = baseline(run_cfg, data, None, force=True)
            wall = time.perf_counter() - t
            m = tracking.get_run(result.run_id).data.metrics
            rows.append((name, label, m["val/rmse"], m["val/f1_macro"], m["cost/train_seconds"], wall,
                         m["best_epoch"], m["cost/params"]))
            print(f"  {name:9s} {label:15s} done in {wall:.1f} s", flush=True)
    print(f"\n{'data':9s} {'candidate':15s} {'val RMSE':>10s} {'val F1':>7s} {'train s':>8s} {'wall s':>7s} "
          f"{'best ep':>7s} {'params':>8s}")
    for name, label, rmse, f1, train_s, wall, best, params in rows:
        print(f"{name:9s} {label:15s} {rmse:10.4g} {f1:7.3f} {train_s:8.1f} {wall:7.1f} {best:7.0f} {params:8.0f}")


if __name__ == "__main__":
    main()
