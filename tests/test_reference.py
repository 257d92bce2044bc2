"""The gradient-boosting reference rows: a classifier searched like the networks, and a regressor cut at the
class edges, each logged as a run of the compare stage."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import runs_of, tiny_config

from pipeline import backend, data, tracking
from pipeline.train import use_threads
from pipeline.stages import reference
from pipeline.stages.reference import DEFAULTS, MAX_ITER, fit_reference, reference_runs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread, as the reference has in a worker or under the CLI (train.threads): scikit-learn's OpenMP pool
    on every core beside torch's waits on it, many times slower."""
    use_threads(1)


def test_trial_0_of_the_search_is_scikit_learns_defaults(tiny_data):
    fitted = fit_reference(tiny_config(**{"tune.n_trials": 1}), [tiny_data])
    assert [r.params for r in fitted] == [[DEFAULTS], [DEFAULTS]] and [r.trials for r in fitted] == [1, 1]


def test_the_reference_is_searched_with_tune_n_trials_and_stops_early(tiny_data):
    classifier, regressor = fit_reference(tiny_config(**{"tune.n_trials": 3}), [tiny_data])
    assert (classifier.strategy, regressor.strategy) == ("reference_hgb", "reference_hgb_regressor")
    assert classifier.trials == regressor.trials == 3
    assert all(0 < r < MAX_ITER for r in classifier.rounds + regressor.rounds)
    assert classifier.rules[0]["temperature"] > 0 and regressor.rules == [None]
    proba, pred = regressor.test[0]  # the regressor cut at the edges: one-hot rows, its class the hot one
    assert set(np.unique(proba)) <= {0.0, 1.0} and np.array_equal(proba.argmax(1), pred)


def test_both_rows_are_runs_of_the_compare_stage_with_test_predictions(experiment, tiny_data):
    backend.use_experiment(experiment)
    runs = reference_runs(tiny_config(), [tiny_data], fit_reference(tiny_config(), [tiny_data]))
    assert [r.data.tags["strategy"] for r in runs] == ["reference_hgb", "reference_hgb_regressor"]
    stored = {r.info.run_id: r for r in runs_of(experiment)}
    for run in runs:
        assert stored[run.info.run_id].info.status == "FINISHED" and run.data.tags["stage"] == "compare"
        assert {"val/f1_macro", "test/f1_macro", "cost/train_seconds"} <= set(run.data.metrics)
        assert run.data.params["trials"] == "3" and "best.learning_rate" in run.data.params
        logged = tracking.read_predictions(run.info.run_id)
        assert np.array_equal(logged["rows"], tiny_data.test_rows) and len(logged["pred"]) == len(tiny_data.test)
    assert runs[1].data.params["rule.decision"] == "cut at the class edges"


def test_each_fold_searches_on_its_own_validation_rows_only(monkeypatch):
    """Cross-fitted, a fold's configuration is chosen on its own validation rows: never on another fold's, which
    are some fold's test rows."""
    cfg = tiny_config(**{"tune.n_trials": 3})
    splits = data.prepare_folds(cfg.data, cfg.seed, 3)
    scored, objective = [], reference._objective

    def recorded(model, split, metric, regressor):
        scored.append(split)
        return objective(model, split, metric, regressor)

    monkeypatch.setattr(reference, "_objective", recorded)
    classifier, regressor = fit_reference(cfg, splits)
    # three trials on each fold, for each row, each scored on the validation rows of the split it was fitted on
    assert sorted(split.fold for split in scored) == [0] * 6 + [1] * 6 + [2] * 6
    assert all(split is splits[split.fold] for split in scored)
    assert len(classifier.params) == len(regressor.params) == 3 and classifier.trials == 3
