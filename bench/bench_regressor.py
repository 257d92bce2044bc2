"""Candidate built-in regressors side by side: validation RMSE, the validation macro-F1 of the regressor cut at
the class edges (what the `threshold` strategy scores) and wall seconds, per data set.

Each candidate runs the pipeline's own baseline stage (data.prepare, the MLP with its options, fit, the logged
metrics) in one process, in a throwaway MLflow store, one after the other on the same splits. Validation
metrics only: the default is chosen from these, so test rows stay unseen. The wall seconds include the
stage's logging, which a default `convert` pays too; builtin:diabetes shows the cost where the default
`convert` has its 60 s budget.

An ensemble (model.ensemble) trains each member on its own loss (train.batch_loss, as TabM does); the candidates
marked "mean loss" train it as before, on the loss of the members' mean output, for the comparison. A candidate's
dotted keys (data.scaling, train.lr_schedule, ...) override the config as --set does; plain keys are model.*.
With --seeds N every candidate runs on seeds 0..N-1 (each its own split and initialisation), and a last table
gives each candidate's mean and spread (min-max) over them.

    python bench/bench_regressor.py [--diamonds-rows 15000] [--only plain,periodic] [--data wine,diamonds,diabetes]
    python bench/bench_regressor.py --data wine,diamonds,diabetes,penguins,friedman1 \
        --only "2x256,2x256 ens 8,2x256 ens 8 mean loss"     # the ensemble's loss, per member or of the mean
    python bench/bench_regressor.py --data wine,penguins,diamonds,diabetes,friedman1 --diamonds-rows 10000 \
        --friedman-rows 10000 --seeds 3 --only "default,robust,cosine p50,flat_cosine 100"  # preprocessing, schedule
"""
from __future__ import annotations

import argparse
import contextlib
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
            "friedman1": ("synthetic:friedman1?rows={friedman_rows}", "target", "quantile:3")}
# every candidate is 2x64 unless it says otherwise (model.width's auto: 64 below 500 training rows, 256 up to 100,000)
CANDIDATES = {"plain 2x64": {"width": 64}, "3x128": {"depth": 3, "width": 128}, "2x256": {"width": 256},
              "periodic": {"width": 64, "embedding": "periodic"}, "piecewise": {"width": 64, "embedding": "piecewise"},
              "ensemble 8": {"width": 64, "ensemble": 8},
              "periodic+ens 8": {"width": 64, "embedding": "periodic", "ensemble": 8},
              "ensemble 8 mean loss": {"width": 64, "ensemble": 8, "mean loss": True},
              "2x256 ens 8": {"width": 256, "ensemble": 8},
              "2x256 ens 8 mean loss": {"width": 256, "ensemble": 8, "mean loss": True},
              # the default regressor (width auto: model.mlp_width) against RealMLP-style preprocessing and schedules
              "default": {}, "robust": {"data.scaling": "robust"}, "quantile": {"data.scaling": "quantile"},
              "cosine p50": {"train.lr_schedule": "cosine", "train.patience": 50},
              "flat_cosine 100": {"train.lr_schedule": "flat_cosine", "train.epochs": 100, "train.patience": 0},
              "cosine 50": {"train.lr_schedule": "cosine", "train.epochs": 50, "train.patience": 0},
              "cosine 30": {"train.lr_schedule": "cosine", "train.epochs": 30, "train.patience": 0},
              "flat_cosine 60": {"train.lr_schedule": "flat_cosine", "train.epochs": 60, "train.patience": 0},
              "robust+flat_cosine 100": {"data.scaling": "robust", "train.lr_schedule": "flat_cosine",
                                         "train.epochs": 100, "train.patience": 0}}


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


def table_source(name: str, args, tmp: Path) -> tuple[str, str, str]:
    """DATASETS[name] as convert reads it: (source, target, classes), a file of --data-dir by its path, diamonds
    sampled to --diamonds-rows in `tmp`, friedman1 at --friedman-rows."""
    source, target, classes = DATASETS[name]
    source = source.format(friedman_rows=args.friedman_rows)
    if source.endswith(".csv"):
        source = str(args.data_dir.resolve() / source)
    if name == "diamonds":
        frame = pd.read_csv(source).sample(n=args.diamonds_rows, random_state=0)
        source = str(tmp / "diamonds_sample.csv")
        frame.to_csv(source, index=False)
    return source, target, classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diamonds-rows", type=int, default=15000)
    p.add_argument("--data", default="wine,diamonds,diabetes")
    p.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidate names")
    p.add_argument("--friedman-rows", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="run every candidate on seeds seed..seed+N-1")
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
        source, target, classes = table_source(name, args, tmp)
        for seed in range(args.seed, args.seed + args.seeds):
            base = {"data.source": source, "data.target": target, "data.classes": classes, "data.folds": "1",
                    "seed": seed, "train.device": "cpu"}
            prepared = {}  # data config -> its splits: candidates that share it share them
            for label in args.only.split(","):
                options = {k if "." in k else f"model.{k}": v for k, v in CANDIDATES[label].items() if k != "mean loss"}
                cfg = config.load(None, {**base, **options})
                if cfg.data not in prepared:
                    prepared[cfg.data] = prepare(cfg.data, cfg.seed)
                data = prepared[cfg.data]
                if not rows:  # a warm-up run, not shown: the first run in a process pays one-off costs
                    baseline(cfg, data, None, force=True)
                t = time.perf_counter()
                with mean_loss(CANDIDATES[label].get("mean loss", False)):
                    result = baseline(cfg, data, None, force=True)
                wall = time.perf_counter() - t
                m = tracking.get_run(result.run_id).data.metrics
                rows.append((name, label, seed, m["val/rmse"], m["val/f1_macro"], m["cost/train_seconds"], wall,
                             m["best_epoch"], m["cost/params"]))
                print(f"  {name:9s} {label:15s} seed {seed} done in {wall:.1f} s", flush=True)
    print(f"\n{'data':9s} {'candidate':22s} {'seed':>4s} {'val RMSE':>10s} {'val F1':>7s} {'train s':>8s} "
          f"{'wall s':>7s} {'best ep':>7s} {'params':>8s}")
    for name, label, seed, rmse, f1, train_s, wall, best, params in rows:
        print(f"{name:9s} {label:22s} {seed:4d} {rmse:10.4g} {f1:7.3f} {train_s:8.1f} {wall:7.1f} {best:7.0f} "
              f"{params:8.0f}")
    if args.seeds > 1:
        table = pd.DataFrame(rows, columns=["data", "candidate", "seed", "rmse", "f1", "train_s", "wall", "best",
                                            "params"])
        print(f"\n{'data':9s} {'candidate':22s} {'val RMSE mean [min, max]':>28s} {'val F1 mean [min, max]':>24s} "
              f"{'train s':>8s}")
        for (name, label), g in table.groupby(["data", "candidate"], sort=False):
            print(f"{name:9s} {label:22s} {g.rmse.mean():10.4g} [{g.rmse.min():.4g}, {g.rmse.max():.4g}] "
                  f"{g.f1.mean():7.3f} [{g.f1.min():.3f}, {g.f1.max():.3f}] {g.train_s.mean():8.1f}")


if __name__ == "__main__":
    main()
