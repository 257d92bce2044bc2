"""The auto batch-size rule (train.batch_and_lr) against today's batch 64: validation metric and time.

On each data set, the pipeline's MLP is trained as the baseline regressor (val RMSE) and as a classifier from
scratch (val macro-F1), with the default training settings (300 epochs, patience 25), under each rule:
`fixed64` (batch 64, lr 3e-3: the rule before auto), and `auto` with each lr scaling (sqrt, the default; linear;
none), for a few seeds. Only validation metrics are printed: a rule is never chosen on test scores. Where
the auto rule keeps batch 64 (fewer than 6,400 training rows) it is today's training exactly and not re-run.

    python bench/bench_batch.py [--seeds 2] [--data diamonds wine default]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.config import Data, Train
from pipeline.data import prepare
from pipeline.metrics import f1_macro, probabilities
from pipeline.model import MLP
from pipeline.train import batch_and_lr, classification_task, fit, predict, seeded, use_threads

DATA = {"default": Data(),
        "wine": Data(source="../shared/data/wine_white.csv", target="quality", classes="thresholds:6.5"),
        "diamonds": Data(source="../shared/data/diamonds.csv", target="price", classes="quantile:3")}
RULES = {"fixed64": ("64", "sqrt"), "auto-sqrt": ("auto", "sqrt"), "auto-linear": ("auto", "linear"),
         "auto-none": ("auto", "none")}


def one(d, rule: str, seed: int, t: Train) -> tuple[int, float, float, float, float]:
    """(batch, lr, val RMSE, val macro-F1, seconds of both fits) under `rule`."""
    batch, lr = batch_and_lr(RULES[rule][0], t.lr, len(d.train.x), t.max_steps_per_epoch, RULES[rule][1])
    k = d.n_classes
    start = time.perf_counter()
    with seeded(seed):
        reg = MLP(d.n_features, 64, 2, 1)
    fit(reg, d.train, d.val, "regression", epochs=t.epochs, batch_size=batch, lr=lr, weight_decay=t.weight_decay,
        patience=t.patience, seed=seed)
    rmse = float(torch.sqrt(torch.mean((predict(reg, d.val.x).reshape(-1) - d.val.y) ** 2))) * d.y_std
    with seeded(seed):
        cls = MLP(d.n_features, 64, 2, 1 if k == 2 else k)
    fit(cls, d.train, d.val, classification_task(k), epochs=t.epochs, batch_size=batch, lr=lr,
        weight_decay=t.weight_decay, patience=t.patience, seed=seed)
    f1 = f1_macro(d.val.c.numpy(), probabilities(predict(cls, d.val.x), k).argmax(axis=1), k)
    return batch, lr, rmse, f1, time.perf_counter() - start


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    args = ap.parse_args()
    use_threads(1)
    t = Train()
    print(f"train: epochs {t.epochs}, patience {t.patience}, lr {t.lr:g} at batch 64, "
          f"max_steps_per_epoch {t.max_steps_per_epoch}; seeds 0..{args.seeds - 1}; one torch thread")
    print(f"{'data':9} {'rule':12} {'batch':>5} {'lr':>8} {'val RMSE':>18} {'val macro-F1':>16} {'seconds':>8} "
          f"{'time ratio':>10}")
    for name in args.data:
        d = prepare(DATA[name], 0)
        base = None
        for rule in RULES:
            if rule != "fixed64" and batch_and_lr("auto", t.lr, len(d.train.x), t.max_steps_per_epoch)[0] == 64:
                print(f"{name:9} {rule:12} auto keeps batch 64 for {len(d.train.x)} training rows: same as fixed64")
                break
            runs = [one(d, rule, s, t) for s in range(args.seeds)]
            batch, lr = runs[0][0], runs[0][1]
            rmse = [r[2] for r in runs]
            f1 = [r[3] for r in runs]
            secs = statistics.mean(r[4] for r in runs)
            base = base or secs
            print(f"{name:9} {rule:12} {batch:5d} {lr:8.2g} {statistics.mean(rmse):10.4g} ± {sd(rmse):<6.3g}"
                  f"{statistics.mean(f1):9.4f} ± {sd(f1):<5.3f}{secs:8.1f} {secs / base:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
