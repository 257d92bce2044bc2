"""How much cross-fitting tightens the verdict: the champion's 95% interval of test macro-F1 with one split
vs with --folds 5, on the default data and on penguins, and what the bootstrap costs.

Each data set runs the real `reg2cls convert` twice in one fresh store (same seed, same settings but the
folds); the figure is the ratio of the interval widths, measured side by side in this run. The champion is
chosen on validation in both; with folds its test rows are pooled out-of-fold predictions (every row once).

    python bench/bench_verdict.py
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_quality import leaderboard  # runs the real convert in a fresh store, reads its leaderboard

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = {"default (diabetes)": [], "penguins": ["--data", str(DATA / "penguins.csv"), "--target", "body_mass_g"]}


def champion_width(store: Path, experiment: str, args: list[str]) -> tuple[float, float, int, str, float]:
    """Run convert; return (interval width, f1, test rows, champion, wall seconds) of its champion row."""
    board, seconds = leaderboard(store, experiment, args)
    top = board[board["champion"]].iloc[0]
    return (top["f1_macro_ci_high"] - top["f1_macro_ci_low"], top["f1_macro"], int(top["test_rows"]),
            f"{top['strategy']} ({top['stage']})", seconds)


def bootstrap_seconds(rows: int = 10, n: int = 10_000, n_boot: int = 1000) -> float:
    """Wall time of the leaderboard's bootstrap: `rows` rows of `n` test predictions, K=3, with every paired
    difference to one reference row (median of 5)."""
    from pipeline import stats

    rng = np.random.default_rng(0)
    c = rng.integers(0, 3, n)
    preds = {f"row{i}": np.where(rng.random(n) < 0.7, c, rng.integers(0, 3, n)) for i in range(rows)}
    times = []
    for _ in range(5):
        t = time.perf_counter()
        boot = stats.bootstrap(c, preds, 3, n_boot=n_boot, seed=0)
        for row in preds:
            boot.interval(row, "f1_macro"), boot.interval(row, "accuracy"), boot.difference(row, "row0")
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # this process reads the leaderboards
    print(f"{'data':20s} {'folds':>5s} {'champion':28s} {'test rows':>9s} {'macro-F1':>8s} {'95% width':>9s} "
          f"{'wall s':>7s}")
    for name, args in SETS.items():
        with tempfile.TemporaryDirectory() as tmp:
            widths = {}
            for folds in ("1", "5"):
                width, f1, n, champion, seconds = champion_width(Path(tmp), f"bench-{folds}", [*args, "--folds", folds])
                widths[folds] = width
                print(f"{name:20s} {folds:>5s} {champion:28s} {n:9d} {f1:8.3f} {width:9.3f} {seconds:7.1f}")
        print(f"{name:20s} interval width, --folds 5 / one split: {widths['5'] / widths['1']:.2f}")
    print(f"bootstrap, 10 rows x 10,000 test rows x 1,000 resamples with paired differences: "
          f"{bootstrap_seconds():.3f} s")


if __name__ == "__main__":
    main()
