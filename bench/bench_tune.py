"""Tuning throughput, pruning, and where trials start from, measured side by side in one run.

1. Trial throughput: the same study size (--trials trials, fixed epochs, no pruner, no early stopping)
   run by 1 worker and by 2 worker processes (one torch thread each), process start-up included.
2. Pruning: the same trial count and seed with the median pruner and without; total epochs trained
   and the best validation macro-F1 each reached.
3. Where trials start (`--start`, on real data): a finetune classifier is trained by the pipeline's own
   stages, then the same study is run twice: trials continuing from its trained weights for 60 epochs
   (the behaviour before trials retrained from the start) and trials retraining it from its start with the
   untuned configuration as trial 0 (now). Prints every trial's value and the untuned model's.

Every trial logs its MLflow run and model, as in real use (throwaway stores in a temp dir).

    python bench/bench_tune.py [--trials 16] [--epochs 1000]
    python bench/bench_tune.py --start [--data ../shared/data/wine_white.csv --target quality
                                        --classes thresholds:6.5 --trials 8]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run_study(cfg, data, model, workers: int, tmp: str, name: str, state: dict | None = None,
              epochs: int | None = None, untuned: dict | None = None):
    """A study of cfg.tune.n_trials trials on `model`'s architecture, each starting from `state` (default: the
    model's weights) for `epochs` (default tune.epochs); `untuned` queued as trial 0. Returns it and its seconds."""
    from pipeline import study as optuna_study
    from pipeline import backend, tracking
    from pipeline.model import architecture

    url = f"sqlite:///{tmp}/optuna.db"
    study = optuna_study.open_study(url, name, cfg.tune.metric)
    if untuned:
        optuna_study.enqueue_untuned(study, untuned)
    with tracking.start(name, "tune") as run_id:
        job = optuna_study.Job(cfg, data, architecture(model), state or model.state_dict(), backend.setup(None),
                               run_id, url, name, target=cfg.tune.n_trials, timeout=None, seed=cfg.seed,
                               recipe=optuna_study.Recipe(((epochs or cfg.tune.epochs, 1.0, False),)),
                               train_seed=cfg.seed)
        t = time.perf_counter()
        optuna_study.run_workers(job, workers, lambda msg: None)
        seconds = time.perf_counter() - t
    return study, seconds


def throughput_and_pruning(args, tmp: str) -> None:
    from pipeline import backend, config, data
    from pipeline.model import MLP, mlp_width
    from pipeline.surgery import new_head, swap_head

    cfg = config.load(None, {"train.device": "cpu", "tune.n_trials": args.trials, "tune.epochs": args.epochs,
                             "train.patience": 0, "tune.pruner": "none"})
    prepared = data.prepare(cfg.data, cfg.seed)
    backend.setup(f"sqlite:///{tmp}/mlflow.db")
    backend.use_experiment("bench-tune")
    torch.manual_seed(0)
    width = mlp_width(cfg.model.width, len(prepared.train.x))
    model = swap_head(MLP(prepared.n_features, width, cfg.model.depth), "head", new_head(width, prepared.n_classes))

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


def where_trials_start(args, tmp: str) -> None:
    from pipeline import backend, config, data, stages
    from pipeline import study as optuna_study
    from pipeline.stages.tune import start_weights

    cfg = config.load(None, {"data.source": args.data, "data.target": args.target, "data.classes": args.classes,
                             "data.folds": "1", "train.device": "cpu", "train.jobs": 1, "tune.n_trials": args.trials,
                             "head_swap.strategies": ("finetune",)})
    prepared = data.prepare(cfg.data, cfg.seed)
    backend.setup(f"sqlite:///{tmp}/mlflow.db")
    backend.use_experiment("bench-tune-start")
    t = time.perf_counter()
    source = stages.head_swap(cfg, prepared, stages.baseline(cfg, prepared, None))
    untuned_value = optuna_study.val_values(source.model, prepared, "cpu")[cfg.tune.metric]
    print(f"3. {args.data} ({len(prepared.train.x)} training rows, classes {args.classes}): finetune trained in "
          f"{time.perf_counter() - t:.0f} s, untuned {cfg.tune.metric} {untuned_value:.4f}; {args.trials} trials, "
          f"median pruner, 1 worker")
    untuned = optuna_study.untuned_params(source.model, cfg, prepared)
    studies = {"before: from the trained weights, 60 epochs": dict(state=None, epochs=60, untuned=None),
               "now:    from the start, untuned = trial 0": dict(state=start_weights(source.model),
                                                                   epochs=cfg.train.epochs,
                                                                   untuned=untuned)}
    for i, (label, how) in enumerate(studies.items()):
        study, seconds = run_study(cfg, prepared, source.model, 1, tmp, f"start-{i}", **how)
        values = [t.value for t in study.trials]
        done = [v for v, t in zip(values, study.trials) if t.state.name == "COMPLETE"]
        beats = study.best_value > untuned_value  # by any margin: tune keeps only a gain beyond the noise
        print(f"   {label}: {len(set(done))} distinct values among {len(done)} completed trials, best "
              f"{study.best_value:.4f} ({'beats' if beats else 'does not beat'} the untuned model), {seconds:.0f} s")
        print("      " + " ".join(f"{v:.4f}{'' if t.state.name == 'COMPLETE' else 'p'}"
                                   for v, t in zip(values, study.trials)) + "   (p: pruned, last reported value)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--start", action="store_true", help="only 3: where trials start, on --data")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "wine_white.csv"))
    p.add_argument("--target", default="quality")
    p.add_argument("--classes", default="thresholds:6.5")
    args = p.parse_args()
    args.data = str(Path(args.data).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        if args.start:
            where_trials_start(args, tmp)
        else:
            throughput_and_pruning(args, tmp)


if __name__ == "__main__":
    main()
