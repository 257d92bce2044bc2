"""Seeded, paired percentile-bootstrap intervals for classification metrics on a shared test set.

Every row of the leaderboard (a strategy) is scored on the same test rows, so one (B, n) matrix of
resample counts is drawn once and shared by all rows: differences between rows are then paired (the
same resamples on both sides), which is what makes them much tighter than the two marginal intervals.

Pipeline, all vectorised over the B resamples (numpy only):
    counts = resample_counts(n, B, seed)          # (B, n) how often each test row is drawn
    cm = confusion(counts, c_true, pred, k)       # (B, k, k) one matmul per prediction vector
    f1_macro(cm), accuracy(cm)                    # (B,)
`bootstrap()` runs this for every row, on one block of resamples at a time (`count_blocks`: its memory does
not grow with B x n), and returns a `Bootstrap` that turns the samples into `Interval`s: `interval(row,
metric)`, the paired `difference(row, reference, metric)`, and `simultaneous(rows, reference, metric)`: max-t
intervals for a whole family of differences at once, which is what a leaderboard of a dozen rows needs (a
dozen unadjusted 95% intervals name a "winner" on pure noise far more often than 5% of the time).

A row trained with several seeds is scored, in each resample, by one of its seeds drawn at random: the
intervals then carry the seed-to-seed variance (the model that ships is one seed's), not only the rows'.

Macro-F1 follows `pipeline.metrics.f1_macro` exactly (unweighted mean of per-class F1; a class
neither present nor predicted in a resample scores 0), so the point estimates equal it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

METRICS = ("f1_macro", "accuracy")
_EXACT_F32 = 2**24  # float32 holds every integer up to here, so counts summing to n <= 2**24 stay exact


def count_blocks(n: int, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """`resample_counts(n, n_boot, seed)` in consecutive blocks of resamples, (b, n) each, about 1M counts a
    block: `bootstrap` scores every row on one block before it draws the next, so its memory stays at one
    block (about 20 MB while it is drawn) whatever the test set's size, where the whole matrix takes 4 bytes
    x n_boot x n (600 MB for 150,000 test rows)."""
    if n < 1:
        raise ValueError(f"need at least one test row to resample, got n={n}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    dtype = np.float32 if n <= _EXACT_F32 else np.float64
    block = max(1, min(n_boot, 2**20 // n))  # ~1M indices per block
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        idx += np.arange(b)[:, None] * n  # offset each resample into its own range of bins
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(dtype)


def resample_counts(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) multiplicities of an exact bootstrap: row b counts how often each of the n test
    rows is drawn in resample b (n draws with replacement, each row sums to n).

    Returned as float32 (float64 when n > 2**24), exact integers ready for a BLAS matmul. Seeded:
    the same (n, n_boot, seed) always gives the same matrix, the blocks of `count_blocks` stacked.
    """
    return np.concatenate(list(count_blocks(n, n_boot, seed)))


def confusion(counts: np.ndarray, c_true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(B, k, k) confusion counts, [b, true, predicted], of `pred` against `c_true` under each
    resample's multiplicities `counts` (B, n). Computed as counts @ onehot(true * k + pred), with
    one column per (true, pred) pair that actually occurs, so it scales with the pairs used, not k*k.
    Labels are assumed valid ints in [0, k); `bootstrap` checks them.
    """
    return _confusion(np.atleast_2d(counts), _pairs(c_true, pred, k), k)


def _pairs(c_true: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (true, pred) pairs that occur, as codes true * k + pred, and each row's pair (its column)."""
    code = np.asarray(c_true, dtype=np.int64) * k + np.asarray(pred, dtype=np.int64)
    used, column = np.unique(code, return_inverse=True)
    return used, column.ravel().astype(np.int32)


def _confusion(counts: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    used, column = pairs
    onehot = np.zeros((len(column), len(used)), dtype=counts.dtype)
    onehot[np.arange(len(column)), column] = 1
    cm = np.zeros((len(counts), k * k), dtype=counts.dtype)
    cm[:, used] = counts @ onehot
    return cm.reshape(len(counts), k, k)


def f1_macro(cm: np.ndarray) -> np.ndarray:
    """(B,) macro-F1 from (B, k, k) confusion counts, as `pipeline.metrics.f1_macro` defines it."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(axis=1) + cm.sum(axis=2)  # predicted + present, per class
    return np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0), axis=1)


def accuracy(cm: np.ndarray) -> np.ndarray:
    """(B,) share of correctly classified draws from (B, k, k) confusion counts."""
    cm = np.asarray(cm, dtype=np.float64)
    return np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))


_SCORERS = {"f1_macro": f1_macro, "accuracy": accuracy}


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap interval [low, high]. `signed` intervals (the
    differences) print with explicit signs: "+0.014 [+0.006, +0.022]"; others "0.812 [0.790, 0.833]"."""

    estimate: float
    low: float
    high: float
    signed: bool = False

    @property
    def excludes_zero(self) -> bool:
        """True when 0 lies outside [low, high]: the difference is significant at the interval's level."""
        return self.low > 0 or self.high < 0

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:
        f = "{:+.3f}" if self.signed else "{:.3f}"
        return f"{f.format(self.estimate)} [{f.format(self.low)}, {f.format(self.high)}]"


@dataclass
class Bootstrap:
    """Bootstrap samples of every row on one shared set of resamples.

    `estimates[row][metric]` is the metric on the original test rows (mean over a row's seeds);
    `samples[row][metric]` the (B,) per-resample values (one seed drawn per resample, same resamples for all rows).
    """

    estimates: dict[str, dict[str, float]]
    samples: dict[str, dict[str, np.ndarray]]
    level: float = 0.95
    n_boot: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_boot = len(next(iter(next(iter(self.samples.values())).values())))

    @property
    def rows(self) -> list[str]:
        return list(self.samples)

    def _get(self, row: str, metric: str) -> tuple[float, np.ndarray]:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        if row not in self.samples:
            raise KeyError(f"unknown row {row!r}; rows are {self.rows}")
        return self.estimates[row][metric], self.samples[row][metric]

    def _bounds(self, samples: np.ndarray) -> tuple[float, float]:
        alpha = (1 - self.level) / 2
        low, high = np.quantile(samples, [alpha, 1 - alpha])
        return float(low), float(high)

    def interval(self, row: str, metric: str = "f1_macro") -> Interval:
        """The row's metric on the original test rows with its percentile interval."""
        est, s = self._get(row, metric)
        return Interval(est, *self._bounds(s))

    def simultaneous(self, rows: list[str], reference: str, metric: str = "f1_macro") -> dict[str, Interval]:
        """Paired `row - reference` for every row of `rows` (the reference left out) as max-t simultaneous
        intervals: estimate +- q * se, with se each difference's bootstrap standard deviation and q the `level`
        quantile over resamples of the largest standardised deviation of any row. Together they cover every true
        difference with probability `level` (the bootstrap version of Tukey's and Dunnett's intervals)."""
        est_ref, s_ref = self._get(reference, metric)
        diffs = {}
        for row in rows:
            if row != reference:
                est, s = self._get(row, metric)
                diffs[row] = (est - est_ref, s - s_ref)
        se = {row: float(np.std(d)) for row, (_, d) in diffs.items()}
        live = [row for row in diffs if se[row] > 0]
        q = 0.0
        if live:
            t = np.max([np.abs(diffs[r][1] - diffs[r][0]) / se[r] for r in live], axis=0)
            q = float(np.quantile(t, self.level))
        return {row: Interval(d, d - q * se[row], d + q * se[row], signed=True) for row, (d, _) in diffs.items()}

    def difference(self, row: str, reference: str, metric: str = "f1_macro") -> Interval:
        """Paired `row - reference`: point difference with the percentile interval of the per-resample
        differences (both rows scored on the same resamples). A row against itself is 0 [0, 0]."""
        est_r, s_r = self._get(row, metric)
        est_ref, s_ref = self._get(reference, metric)
        return Interval(est_r - est_ref, *self._bounds(s_r - s_ref), signed=True)


def _check(c_true, preds: dict, k: int, n_boot: int, level: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    c_true = np.asarray(c_true)
    if c_true.ndim != 1:
        raise ValueError(f"c_true must be 1-D, got shape {c_true.shape}")
    n = len(c_true)
    if n == 0:
        raise ValueError("c_true is empty: need at least one test row")
    if k < 1:
        raise ValueError(f"k (number of classes) must be >= 1, got {k}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not preds:
        raise ValueError("preds is empty: need at least one row")

    def labels(name: str, a) -> np.ndarray:
        a = np.asarray(a)
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: labels must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= k):
            raise ValueError(f"{name}: labels must lie in [0, {k}), got range [{a.min()}, {a.max()}]")
        return a.astype(np.int64)

    c_true = labels("c_true", c_true)
    checked = {}
    for row, p in preds.items():
        p = np.asarray(p)
        if p.ndim == 1:
            p = p[None]
        if p.ndim != 2 or p.shape[0] == 0:
            raise ValueError(f"row {row!r}: predictions must have shape (n,) or (S, n) with S >= 1, got {p.shape}")
        if p.shape[1] != n:
            raise ValueError(f"row {row!r}: {p.shape[1]} predictions per seed but c_true has {n} test rows")
        checked[row] = labels(f"row {row!r}", p)
    return c_true, checked


def bootstrap(c_true: np.ndarray, preds: dict[str, np.ndarray], k: int,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Bootstrap:
    """Paired percentile bootstrap of test macro-F1 and accuracy for every row of `preds`.

    `preds[row]` is one prediction vector (n,) or one per training seed (S, n); a row's point metric is the
    mean over its seeds, and in each resample it is scored by one seed drawn at random (seed variance included).
    All rows share one seeded `resample_counts(n, n_boot, seed)`, so `Bootstrap.difference` is paired.
    Raises ValueError on inconsistent input.
    """
    c_true, preds = _check(c_true, preds, k, n_boot, level)
    ones = np.ones((1, len(c_true)), dtype=np.float32 if len(c_true) <= _EXACT_F32 else np.float64)
    estimates = {row: {m: float(np.mean([score(confusion(ones, c_true, pred, k))[0] for pred in p]))
                       for m, score in _SCORERS.items()} for row, p in preds.items()}
    # one block of resamples at a time, scored for every row and seed: the same resamples for all rows (paired)
    pairs = {row: [_pairs(c_true, pred, k) for pred in p] for row, p in preds.items()}  # sorted once, not per block
    boot: dict[str, dict[str, list[np.ndarray]]] = {row: {m: [] for m in METRICS} for row in preds}
    pick = np.random.default_rng([seed, 1])  # which seed scores a row in each resample (shared by all rows)
    for counts in count_blocks(len(c_true), n_boot, seed):
        chosen = {s: pick.integers(0, s, size=len(counts)) for s in sorted({len(p) for p in preds.values()})}
        for row in preds:
            cms = [_confusion(counts, each, k) for each in pairs[row]]
            for m, score in _SCORERS.items():
                per_seed = np.stack([score(cm) for cm in cms])  # (S, b)
                boot[row][m].append(per_seed[chosen[len(per_seed)], np.arange(len(counts))])
    samples = {row: {m: np.concatenate(parts) for m, parts in by_metric.items()} for row, by_metric in boot.items()}
    return Bootstrap(estimates, samples, level)
