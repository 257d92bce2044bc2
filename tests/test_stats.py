"""pipeline.stats: paired, seeded percentile-bootstrap intervals of macro-F1 and accuracy."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import metrics, stats

K = 3
PRIORS = np.array([0.5, 0.3, 0.2])
P_CORRECT = 0.8


def simulate(n: int, seed: int, p_correct: float = P_CORRECT) -> tuple[np.ndarray, np.ndarray]:
    """Test rows from a population: classes drawn by PRIORS; right with prob p_correct, else one of
    the other classes uniformly (so the population accuracy is exactly p_correct)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=n, p=PRIORS)
    wrong = (y + rng.integers(1, K, n)) % K
    return y, np.where(rng.random(n) < p_correct, y, wrong)


def population_f1() -> float:
    """Macro-F1 of the simulated classifier on the whole population, from its joint (true, pred) law."""
    joint = PRIORS[:, None] * np.where(np.eye(K, dtype=bool), P_CORRECT, (1 - P_CORRECT) / (K - 1))
    return float(np.mean(2 * np.diag(joint) / (joint.sum(0) + joint.sum(1))))


def random_rows(n: int, seed: int, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.integers(0, k, n)


# --- point estimates -------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,seed", [(50, 2, 0), (200, 3, 1), (37, 5, 2), (8, 6, 3)])  # (8, 6): classes absent
def test_point_estimates_equal_metrics(n, k, seed):
    y, p = random_rows(n, seed, k)
    bs = stats.bootstrap(y, {"a": p}, k, n_boot=20)
    assert bs.estimates["a"]["f1_macro"] == metrics.f1_macro(y, p, k)
    assert bs.estimates["a"]["accuracy"] == np.mean(y == p)
    assert bs.interval("a", "f1_macro").estimate == metrics.f1_macro(y, p, k)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_resample_matches_metrics_on_the_expanded_rows(seed):
    y, p = random_rows(60, seed, 4)
    counts = stats.resample_counts(60, n_boot=5, seed=seed)
    cm = stats.confusion(counts, y, p, 4)
    for b in range(5):  # the resample spelled out as repeated rows
        idx = np.repeat(np.arange(60), counts[b].astype(int))
        assert stats.f1_macro(cm)[b] == pytest.approx(metrics.f1_macro(y[idx], p[idx], 4), abs=1e-12)
        assert stats.accuracy(cm)[b] == pytest.approx(np.mean(y[idx] == p[idx]), abs=1e-12)


def test_bootstrap_block_by_block_equals_the_whole_count_matrix():
    """bootstrap draws the resamples in blocks (memory of one block); its samples are those of the whole matrix."""
    n, n_boot = 100_000, 25  # 10 resamples a block: three blocks, the last one short
    assert len(list(stats.count_blocks(n, n_boot, seed=4))) == 3
    y, a = random_rows(n, 5)
    _, b = random_rows(n, 6)
    counts = stats.resample_counts(n, n_boot, seed=4)
    bs = stats.bootstrap(y, {"a": a, "b": np.stack([a, b])}, K, n_boot=n_boot, seed=4)
    whole_a = stats.confusion(counts, y, a, K)
    whole_b = stats.confusion(counts, y, b, K)
    assert np.array_equal(bs.samples["a"]["f1_macro"], stats.f1_macro(whole_a))
    # a row with two seeds is scored by one of them in each resample, drawn at random: both appear
    from_a = np.isclose(bs.samples["b"]["accuracy"], stats.accuracy(whole_a))
    from_b = np.isclose(bs.samples["b"]["accuracy"], stats.accuracy(whole_b))
    assert (from_a | from_b).all() and from_a.any() and from_b.any()


def test_seeds_widen_the_interval_by_their_own_spread():
    """Two seeds that disagree widen a row's interval beyond either seed's own: the shipped model is one seed's."""
    y, a = simulate(400, seed=1)
    b = np.where(np.arange(400) < 80, (a + 1) % K, a)  # the second seed gets 80 more rows wrong
    one = stats.bootstrap(y, {"r": a}, K, n_boot=400, seed=0).interval("r")
    both = stats.bootstrap(y, {"r": np.stack([a, b])}, K, n_boot=400, seed=0).interval("r")
    assert both.width > 1.5 * one.width


def test_simultaneous_intervals_are_wider_than_one_at_a_time_and_cover_the_family():
    """max-t intervals for 12 rows against one reference: each wider than its own percentile interval, and on rows
    with no true difference all 12 cover zero together in about 95% of data sets (one at a time: far fewer)."""
    k, n, rows, together, alone = 3, 300, 12, 0, 0
    for sim in range(40):
        rng = np.random.default_rng(sim)
        y = rng.integers(0, k, n)
        preds = {str(r): np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n)) for r in range(rows + 1)}
        boot = stats.bootstrap(y, preds, k, n_boot=300, seed=sim)
        family = boot.simultaneous(list(preds), "0")
        assert all(family[r].width >= boot.difference(r, "0").width - 1e-12 for r in family)
        together += all(not family[r].excludes_zero for r in family)
        alone += all(not boot.difference(r, "0").excludes_zero for r in family)
    assert together >= 34 and alone < together


def test_resample_counts_are_bootstrap_multiplicities():
    counts = stats.resample_counts(100, n_boot=300, seed=3)
    assert counts.shape == (300, 100)
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    assert np.all(counts.sum(axis=1) == 100)
    assert counts.mean() == pytest.approx(1.0)  # every row equally likely
    assert counts.var() == pytest.approx(1 - 1 / 100, rel=0.05)  # Binomial(n, 1/n)


# --- coverage --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coverage() -> dict[str, float]:
    """Share of 200 simulated test sets (n=300) whose 95% interval covers the population value."""
    truth = {"accuracy": P_CORRECT, "f1_macro": population_f1()}
    hits = {m: 0 for m in truth}
    for sim in range(200):
        y, p = simulate(300, seed=1000 + sim)
        bs = stats.bootstrap(y, {"a": p}, K, n_boot=500, seed=sim)
        for m, value in truth.items():
            iv = bs.interval("a", m)
            hits[m] += iv.low <= value <= iv.high
    return {m: h / 200 for m, h in hits.items()}


def test_population_f1_matches_a_large_sample():
    y, p = simulate(1_000_000, seed=7)
    assert metrics.f1_macro(y, p, K) == pytest.approx(population_f1(), abs=0.002)


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_95_percent_interval_covers_the_population_value(coverage, metric):
    assert 0.90 <= coverage[metric] <= 0.98


# --- paired differences ----------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_paired_difference_is_narrower_than_unpaired(metric):
    y, a = simulate(1000, seed=0)
    rng = np.random.default_rng(1)
    b = np.where(rng.random(1000) < 0.03, rng.integers(0, K, 1000), a)  # agrees with a on ~98% of rows
    paired = stats.bootstrap(y, {"a": a, "b": b}, K, n_boot=1000, seed=2).difference("b", "a", metric)
    # unpaired: each row resampled independently
    sa = stats.bootstrap(y, {"a": a}, K, n_boot=1000, seed=3).samples["a"][metric]
    sb = stats.bootstrap(y, {"b": b}, K, n_boot=1000, seed=4).samples["b"][metric]
    unpaired = np.subtract(*np.quantile(sb - sa, [0.975, 0.025]))
    assert paired.width < 0.5 * unpaired


def test_difference_estimate_and_samples_are_paired():
    y, a = simulate(500, seed=5)
    _, b = simulate(500, seed=6)
    bs = stats.bootstrap(y, {"a": a, "b": b}, K, n_boot=400, seed=0)
    d = bs.difference("b", "a", "accuracy")
    assert d.estimate == pytest.approx(np.mean(b == y) - np.mean(a == y))
    s = bs.samples["b"]["accuracy"] - bs.samples["a"]["accuracy"]
    assert (d.low, d.high) == pytest.approx(tuple(np.quantile(s, [0.025, 0.975])))


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_difference_to_itself_is_exactly_zero(metric):
    y, p = simulate(300, seed=1)
    d = stats.bootstrap(y, {"a": p}, K, n_boot=200).difference("a", "a", metric)
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.excludes_zero
    assert str(d) == "+0.000 [+0.000, +0.000]"


def test_clear_difference_excludes_zero():
    y, a = simulate(2000, seed=2, p_correct=0.6)
    _, b = simulate(2000, seed=2, p_correct=0.9)  # same draws: b is right wherever a is, and more
    d = stats.bootstrap(y, {"a": a, "b": b}, K, n_boot=500).difference("b", "a", "accuracy")
    assert d.low > 0 and d.excludes_zero


# --- formatting ------------------------------------------------------------------------------------

@pytest.mark.parametrize("iv,text,excludes", [
    (stats.Interval(0.8123, 0.7901, 0.8334), "0.812 [0.790, 0.833]", True),
    (stats.Interval(0.014, 0.006, 0.022, signed=True), "+0.014 [+0.006, +0.022]", True),
    (stats.Interval(-0.002, -0.011, 0.007, signed=True), "-0.002 [-0.011, +0.007]", False),
    (stats.Interval(-0.02, -0.03, -0.01, signed=True), "-0.020 [-0.030, -0.010]", True),
])
def test_interval_str_and_excludes_zero(iv, text, excludes):
    assert str(iv) == text
    assert iv.excludes_zero is excludes


# --- seeding ---------------------------------------------------------------------------------------

def _intervals(seed: int) -> list[stats.Interval]:
    y, a = simulate(400, seed=0)
    _, b = simulate(400, seed=1)
    bs = stats.bootstrap(y, {"a": a, "b": b}, K, n_boot=300, seed=seed)
    return [bs.interval("a", "f1_macro"), bs.interval("b", "accuracy"), bs.difference("b", "a", "f1_macro")]


def test_same_seed_gives_identical_intervals():
    assert _intervals(11) == _intervals(11)


def test_different_seed_gives_different_intervals():
    first, second = _intervals(11), _intervals(12)
    assert all(x.estimate == y.estimate for x, y in zip(first, second))  # the point doesn't resample
    assert all((x.low, x.high) != (y.low, y.high) for x, y in zip(first, second))


# --- several seeds per row -------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_several_seeds_average_the_point_and_draw_one_seed_per_resample(metric):
    y, _ = simulate(300, seed=0)
    rng = np.random.default_rng(9)  # three training seeds: right on 60%, 70%, 90% of rows, else random
    per_seed = np.where(rng.random((3, 300)) < [[0.6], [0.7], [0.9]], y, rng.integers(0, K, (3, 300)))
    bs = stats.bootstrap(y, {"many": per_seed, **{f"s{s}": per_seed[s] for s in range(3)}}, K, n_boot=200)
    score = {"accuracy": lambda p: np.mean(p == y), "f1_macro": lambda p: metrics.f1_macro(y, p, K)}[metric]
    assert bs.estimates["many"][metric] == pytest.approx(np.mean([score(p) for p in per_seed]))
    # each resample scores the row by one of its seeds (the same resample as that seed's own row)
    drawn = np.array([bs.samples[f"s{s}"][metric] for s in range(3)])  # (3, B)
    matches = np.isclose(drawn, bs.samples["many"][metric])
    assert matches.any(axis=0).all() and matches.any(axis=1).all()


def test_one_seed_as_2d_equals_1d():
    y, p = simulate(200, seed=3)
    bs = stats.bootstrap(y, {"flat": p, "stacked": p[None]}, K, n_boot=100)
    assert bs.interval("flat") == bs.interval("stacked")


# --- bad inputs ------------------------------------------------------------------------------------

Y = np.array([0, 1, 2, 1, 0])
P = np.array([0, 1, 1, 1, 2])


@pytest.mark.parametrize("kwargs,match", [
    ({"preds": {"a": P[:4]}}, "4 predictions per seed but c_true has 5"),
    ({"preds": {"a": np.stack([P, P])[:, :4]}}, "c_true has 5"),
    ({"preds": {"a": np.array([0, 1, 3, 1, 0])}}, r"\[0, 3\)"),
    ({"preds": {"a": np.array([0, 1, -1, 1, 0])}}, r"\[0, 3\)"),
    ({"c_true": np.array([0, 1, 2, 3, 0])}, r"c_true: labels must lie in \[0, 3\)"),
    ({"c_true": np.array([], dtype=int), "preds": {"a": np.array([], dtype=int)}}, "empty"),
    ({"preds": {}}, "preds is empty"),
    ({"preds": {"a": P.astype(float)}}, "integers"),
    ({"preds": {"a": P[None, None]}}, r"shape \(n,\) or \(S, n\)"),
    ({"preds": {"a": np.zeros((0, 5), dtype=int)}}, "S >= 1"),
    ({"c_true": Y[None]}, "1-D"),
    ({"n_boot": 0}, "n_boot"),
    ({"level": 1.0}, "level"),
    ({"k": 0}, "k"),
], ids=["short", "short-2d", "label-too-big", "label-negative", "true-too-big", "n=0", "no-rows",
        "float-labels", "3d", "zero-seeds", "2d-true", "n_boot", "level", "k"])
def test_bad_inputs_raise_value_error(kwargs, match):
    args = {"c_true": Y, "preds": {"a": P}, "k": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        stats.bootstrap(**args)


def test_resample_counts_rejects_n_zero():
    with pytest.raises(ValueError, match="at least one test row"):
        stats.resample_counts(0)


def test_unknown_metric_and_row():
    bs = stats.bootstrap(Y, {"a": P}, 3, n_boot=10)
    with pytest.raises(ValueError, match="unknown metric"):
        bs.interval("a", "auc")
    with pytest.raises(KeyError, match="unknown row"):
        bs.difference("a", "threshold")
