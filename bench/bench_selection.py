"""Does choosing on validation flatter trained rows against threshold? The decision rule (decision.py) is fitted
on the validation rows; scored on the same rows it looks better than it is, while `threshold` keeps the identity
rule and fits nothing. This bench measures that optimism on calibrated scores, where the class is drawn from the
model's own probabilities, so no rule can truly beat argmax on fresh rows and every validation gain is overfitting:

    in-sample:    the rule fitted on all validation rows, scored on them (how selection scored rows before)
    cross-fitted: each validation row decided by a rule fitted on the other half (decision.cross_fitted, today)
    test:         the rule fitted on all validation rows, scored on fresh rows (what the gain is really worth)

Each figure is a mean over simulations of (macro-F1 under the rule) - (macro-F1 of argmax), side by side.

    python bench/bench_selection.py [--sims 200] [--classes 3]
"""
from __future__ import annotations

import argparse

import numpy as np

from pipeline import decision, metrics


def draw(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated log-scores and classes: probabilities from a Dirichlet, the class drawn from them."""
    p = rng.dirichlet(np.full(k, 2.0), size=n)
    c = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return decision.scores_of(np.log(p), k), c


def gains(rng: np.random.Generator, per_class: int, k: int) -> tuple[float, float, float]:
    scores, c = draw(rng, per_class * k, k)
    test_scores, test_c = draw(rng, 5000, k)
    argmax = metrics.f1_macro(c, scores.argmax(axis=1), k)
    rule = decision.fit_scores(scores, c)
    in_sample = metrics.f1_macro(c, decision.apply(rule, scores)[1], k) - argmax
    crossed = metrics.f1_macro(c, decision.cross_fitted(scores, c, seed=int(rng.integers(1 << 31))), k) - argmax
    test = (metrics.f1_macro(test_c, decision.apply(rule, test_scores)[1], k)
            - metrics.f1_macro(test_c, test_scores.argmax(axis=1), k))
    return in_sample, crossed, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.classes} classes, calibrated scores, {args.sims} simulations a row; "
          "mean gain over argmax in macro-F1 (± standard error)")
    print(f"{'validation rows a class':>24} {'in-sample':>16} {'cross-fitted':>16} {'test':>16}")
    rng = np.random.default_rng(0)
    for per_class in (50, 100, 300):
        g = np.array([gains(rng, per_class, args.classes) for _ in range(args.sims)])
        cells = [f"{m:+.4f} ± {s:.4f}" for m, s in zip(g.mean(axis=0), g.std(axis=0, ddof=1) / np.sqrt(len(g)))]
        print(f"{per_class:>24} " + " ".join(f"{cell:>16}" for cell in cells))


if __name__ == "__main__":
    main()
