"""selection: how a stage picks among its runs on validation."""
from types import SimpleNamespace

from pipeline import selection


def _row(strategy, f1, params=100, seed=0):
    return {"strategy": strategy, "run_id": f"{strategy}-{seed}", "val/f1_macro": f1, "cost/params": params}


def test_a_strategy_is_judged_by_its_mean_over_seeds_not_its_luckiest_seed():
    rows = [_row("lucky", 0.90, seed=0), _row("lucky", 0.50, seed=1), _row("steady", 0.75, seed=0),
            _row("steady", 0.74, seed=1)]
    means = selection.by_strategy(rows)
    assert [m["strategy"] for m in means] == ["lucky", "steady"] and means[0]["val/f1_macro"] == 0.70
    assert selection.best(means) == "steady"


def test_the_first_of_equal_strategies_wins():
    assert selection.best(selection.by_strategy([_row("threshold", 0.6), _row("finetune", 0.6)])) == "threshold"


def test_the_smallest_within_the_tolerance_of_the_best_is_recommended():
    means = [_row("unslimmed", 0.80, 1000), _row("width_0.5", 0.795, 300), _row("width_0.25", 0.78, 80)]
    assert selection.smallest_within(means, 0.01) == "width_0.5"
    assert selection.smallest_within(means, 0.0) == "unslimmed"


def test_the_best_seed_stands_for_its_strategy():
    runs = [SimpleNamespace(data=SimpleNamespace(metrics={"val/f1_macro": f1}), name=name)
            for name, f1 in (("a", 0.5), ("b", 0.7), ("c", 0.7))]
    assert selection.best_run(runs).name == "b"
    assert selection.best_run([_row("x", 0.2, seed=0), _row("x", 0.3, seed=1)],
                              score=lambda r: r["val/f1_macro"])["run_id"] == "x-1"
