"""Slim variants of the default experiment against the unslimmed classifier, measured in one run.

Runs baseline -> head_swap -> slim in-process on the default data (a throwaway MLflow store), then
re-times every model's forward pass over 1,000 rows, interleaved round by round so machine noise
hits all alike, and prints params, FLOPs, latency and test macro-F1 relative to the unslimmed model.

    python bench/bench_slim.py [--rounds 30] [--distill]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--distill", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        from pipeline import backend, checkpoint, config, data, stages, tracking

        cfg = config.load(None, {"train.device": "cpu", **({"slim.distill": "true"} if args.distill else {})})
        prepared = data.prepare(cfg.data, cfg.seed)
        backend.setup(f"sqlite:///{tmp}/mlflow.db")
        backend.use_experiment("bench-slim")
        base = stages.baseline(cfg, prepared, None)
        swapped = stages.head_swap(cfg, prepared, base)
        slimmed = stages.slim(cfg, prepared, swapped)
        # the unslimmed classifier first, then every variant, each read back from its run
        runs = [tracking.get_run(swapped.model_run)] + tracking.children(slimmed.run_id)
        rows = [{"strategy": "unslimmed" if i == 0 else run.data.tags["strategy"],
                 "model": checkpoint.load_run_model(run.info.run_id), **run.data.metrics}
                for i, run in enumerate(runs)]

    x = torch.randn(1000, prepared.n_features)
    times: dict[str, list[float]] = {r["strategy"]: [] for r in rows}
    with torch.no_grad():
        for r in rows:
            r["model"].eval().cpu()(x)  # warm-up
        for _ in range(args.rounds):
            for r in rows:
                t = time.perf_counter()
                r["model"](x)
                times[r["strategy"]].append(time.perf_counter() - t)
    ref = rows[0]
    ref_ms = statistics.median(times[ref["strategy"]]) * 1000
    print(f"default experiment ({cfg.data.source}, {prepared.n_classes} classes), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, latency = median of {args.rounds} interleaved passes over 1,000 rows")
    print(f"{'variant':20s} {'params':>8s} {'x':>6s} {'FLOPs':>8s} {'x':>6s} "
          f"{'ms/1k':>7s} {'x':>6s} {'test F1':>8s} {'delta':>7s}")
    for r in rows:
        ms = statistics.median(times[r["strategy"]]) * 1000
        print(f"{r['strategy']:20s} {r['cost/params']:8.0f} {r['cost/params'] / ref['cost/params']:6.2f} "
              f"{r['cost/flops']:8.0f} {r['cost/flops'] / ref['cost/flops']:6.2f} {ms:7.3f} {ms / ref_ms:6.2f} "
              f"{r['test/f1_macro']:8.3f} {r['test/f1_macro'] - ref['test/f1_macro']:+7.3f}")


if __name__ == "__main__":
    main()
