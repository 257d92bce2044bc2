"""Tuning throughput and pruning, measured side by side in one run on the default data.

1. Trial throughput: the same study size (--trials trials, fixed epochs, no pruner, no early stopping)
   run by 1 worker and by 2 worker processes (one torch thread each), process start-up included.
2. Pruning: the same trial count and seed with the median pruner and without; total epochs trained
   and the best validation macro-F1 each reached.

Every trial logs its MLflow run and model, as in real use (throwaway stores in a temp dir).

    python bench/bench_tune.py [--trials 16] [--epochs 1000]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import torch


def run_study(cfg, data, model, workers: int, tmp: str, name: str):
    from pipeline import study as optuna_study
    from pipeline import tracking
    from pipeline.model import architecture

    url = f"sqlite:///{tmp}/optuna.db"
    study = optuna_study.open_study(url, name, cfg.tune.metric)
    with tracking.start(name, "tune") as run_id:
        job = optuna_study.Job(cfg, data, architecture(model), model.state_dict(), tracking.setup(None), run_id,
                               url, name, target=cfg.tune.n_trials, timeout=None, seed=cfg.seed)
        t = time.perf_counter()
        optuna_study.run_workers(job, workers, lambda msg: None)
        seconds = time.perf_counter() - t
    return study, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        from pipeline import config, data, tracking
        from pipeline.model import MLP
        from pipeline.surgery import new_head, swap_head

        cfg = config.load(None, {"train.device": "cpu", "tune.n_trials": args.trials, "tune.epochs": args.epochs,
                                 "train.patience": 0, "tune.pruner": "none"})
        prepared = data.prepare(cfg.data, cfg.seed)
        tracking.setup(f"sqlite:///{tmp}/mlflow.db")
        tracking.use_experiment("bench-tune")
        torch.manual_seed(0)
        model = swap_head(MLP(prepared.n_features, cfg.model.width, cfg.model.depth), "head",
                          new_head(cfg.model.width, prepared.n_classes))

        print(f"default data ({cfg.data.source}), {args.trials} trials, torch {torch.__version__}, "
              f"{os.cpu_count()} cores")
        print(f"1. throughput, {args.epochs} epochs per trial, no pruning, no early stopping:")
        _, one = run_study(cfg, prepared, model, 1, tmp, "one-worker")
        _, two = run_study(cfg, prepared, model, 2, tmp, "two-workers")
        print(f"   1 worker : {args.trials / one:.3f} trials/s ({one:.1f} s)")
        print(f"   2 workers: {args.trials / two:.3f} trials/s ({two:.1f} s)   speed-up x{one / two:.2f}")

        print("2. pruning, 1 worker, same trials and seed, early stopping on (train.patience 25):")
        for pruner in ("none", "median"):
            c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, patience=25),
                                    tune=dataclasses.replace(cfg.tune, pruner=pruner))
            study, seconds = run_study(c, prepared, model, 1, tmp, f"pruner-{pruner}")
            epochs = sum(t.user_attrs.get("epochs", 0) for t in study.trials)
            pruned = sum(t.state.name == "PRUNED" for t in study.trials)
            print(f"   pruner {pruner:6s}: {epochs:5d} epochs trained, {pruned} of {len(study.trials)} trials pruned, "
                  f"best val macro-F1 {study.best_value:.4f}, {seconds:.1f} s")


if __name__ == "__main__":
    main()
