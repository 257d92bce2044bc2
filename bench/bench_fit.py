"""fit() vs a DataLoader(TensorDataset, shuffle=True) loop: samples/s on the same model and batch size.

Both loops train the same MLP on the same data in this one process, interleaved round by round so
machine noise hits both alike; the figure that matters is the ratio of medians.

    python bench/bench_fit.py [--rows 20000] [--batch-size 64] [--rounds 5] [--epochs 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipeline.config import Data
from pipeline.data import prepare
from pipeline.model import MLP
from pipeline.train import fit


def dataloader_loop(model, split, epochs: int, batch_size: int, fused: bool) -> None:
    """The textbook loop: per-sample indexing and collation through a DataLoader."""
    loader = DataLoader(TensorDataset(split.x, split.y), batch_size=batch_size, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.mse_loss(model(xb).reshape(-1), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    d = prepare(Data(source=f"synthetic:friedman1?rows={args.rows}"), seed=0)
    n = len(d.train) * args.epochs
    contenders = {
        "fit() (randperm slices, fused AdamW)": lambda m: fit(m, d.train, d.val, "regression", epochs=args.epochs,
                                                             batch_size=args.batch_size, lr=1e-3),
        "DataLoader + AdamW": lambda m: dataloader_loop(m, d.train, args.epochs, args.batch_size, fused=False),
        "DataLoader + fused AdamW": lambda m: dataloader_loop(m, d.train, args.epochs, args.batch_size, fused=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            torch.manual_seed(0)
            model = MLP(d.n_features, 64, 2)
            t = time.perf_counter()
            run(model)
            rates[name].append(n / (time.perf_counter() - t))
    ours = statistics.median(rates["fit() (randperm slices, fused AdamW)"])
    print(f"{len(d.train)} training rows, batch {args.batch_size}, {args.epochs} epochs, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:40s} {med:>10,.0f} samples/s   fit() speed-up x{ours / med:.2f}")


if __name__ == "__main__":
    main()
