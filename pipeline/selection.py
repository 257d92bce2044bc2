"""selection: how a stage picks among the runs it just trained, on validation; the one home of that rule.

A strategy (or slim variant) is judged by its mean over seeds, never by its luckiest seed (`by_strategy`);
the best is the highest mean, the first of equals in the order the stage tried them (`best`); where a smaller
model is as good, the smallest within a tolerance of the best ships (`smallest_within`, slim's
recommendation); the model that stands for a chosen strategy is its best seed's run (`best_run`). head_swap,
slim, the leaderboard's `best_run` column and the shipped ensemble's fold members all pick through here. The
champion applies the same idea with the evidence's own tolerance: the simplest row that simultaneous
intervals cannot tell from the best (stages/leaderboard.choose). Tune keeps a trial only when it beats the
untuned model by more than its noise (study.keeps).
"""
from __future__ import annotations

import numpy as np

SCORE = "val/f1_macro"  # what every pick reads: higher is better


def by_strategy(rows: list[dict]) -> list[dict]:
    """One row per strategy, in the order each first appears: the mean of every numeric value over its seeds'
    rows (each row a run's `strategy` and logged values)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], []).append(r)
    return [{"strategy": name, **{k: float(np.mean([r[k] for r in group])) for k, v in group[0].items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            for name, group in groups.items()]


def best(means: list[dict]) -> str:
    """The strategy with the highest mean validation score; the first of equals."""
    return max(means, key=lambda m: m[SCORE])["strategy"]  # max keeps the first of equal keys


def smallest_within(means: list[dict], tolerance: float) -> str:
    """The strategy with the fewest parameters whose mean validation score is within `tolerance` of the best
    (then the better of equally small ones)."""
    top = max(m[SCORE] for m in means)
    return min((m for m in means if m[SCORE] >= top - tolerance), key=lambda m: (m["cost/params"], -m[SCORE]))[
        "strategy"]


def best_run(runs: list, score=lambda r: r.data.metrics.get(SCORE, float("-inf"))):
    """Of one strategy's runs (its seeds, on one split), the one with the highest validation score: the model
    that stands for it. `score` reads a run's score (default: its logged validation macro-F1)."""
    return max(runs, key=score)
