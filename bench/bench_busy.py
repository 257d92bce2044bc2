"""The baseline fit on a busy machine: its time beside one CPU-bound process over its idle time, per thread count.

The same fit (the pipeline's MLP as the baseline regressor, fixed epochs and no early stopping, so every
condition does the same work) is timed idle and while one other process spins on a core (`while True: pass`
in a subprocess), with the process's threads as the pipeline sets them (`use_threads(1)`, the default) and
with 2. Conditions alternate round by round so drift hits them alike; medians are printed. Goal: busy/idle
at most 1.3x with the default.

    python bench/bench_busy.py [--data ../shared/data/diamonds.csv] [--rows 40000] [--epochs 20] [--rounds 3]
                               [--batch-size auto|64]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from pipeline.config import Data, Model, Train
from pipeline.data import prepare
from pipeline.model import MLP, mlp_width
from pipeline.train import batch_and_lr, fit, seeded, use_threads


def timed_fit(d, epochs: int, batch: int, lr: float) -> float:
    with seeded(0):  # the baseline's own MLP: its default width and depth for this many training rows
        model = MLP(d.n_features, mlp_width(Model().width, len(d.train.x)), Model().depth, 1)
    start = time.perf_counter()
    fit(model, d.train, d.val, "regression", epochs=epochs, batch_size=batch, lr=lr, patience=0, seed=0)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/diamonds.csv")
    ap.add_argument("--target", default="price")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", default="auto", help="auto (the pipeline's rule) or a whole number, e.g. 64")
    args = ap.parse_args()
    d = prepare(Data(source=args.data, target=args.target), 0)
    t = Train()
    batch, lr = batch_and_lr(args.batch_size, t.lr, len(d.train.x), t.max_steps_per_epoch, t.lr_scaling)
    print(f"{args.data}: {len(d.train.x)} training rows, batch {batch}, {args.epochs} epochs, {args.rounds} rounds; "
          f"busy = one `while True: pass` process beside the fit")
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            use_threads(threads)
            times.setdefault((threads, "idle"), []).append(timed_fit(d, args.epochs, batch, lr))
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.5)  # let it reach full speed
                times.setdefault((threads, "busy"), []).append(timed_fit(d, args.epochs, batch, lr))
            finally:
                spinner.kill()
                spinner.wait()
    print(f"{'threads':>7} {'idle s':>8} {'busy s':>8} {'busy/idle':>9}")
    for threads in (1, 2):
        idle, busy = (statistics.median(times[(threads, k)]) for k in ("idle", "busy"))
        note = "  (the pipeline's default)" if threads == 1 else ""
        print(f"{threads:7d} {idle:8.2f} {busy:8.2f} {busy / idle:8.2f}x{note}")


if __name__ == "__main__":
    main()
