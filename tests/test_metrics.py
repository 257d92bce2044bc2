"""The metrics the runs carry (pipeline.metrics) against scikit-learn's own definitions, on random predictions:
computed without it, they must not drift from what its name promises."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline import metrics


def _predictions(seed: int, k: int, rows: int = 200, ties: bool = False):
    """True classes, probabilities (rounded to a few values when `ties`: equal scores across rows) and predicted
    classes that are often right."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, rows)
    logits = rng.normal(size=(rows, k)) + 1.5 * np.eye(k)[c]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:
        proba = np.round(proba, 1) + 1e-3
        proba /= proba.sum(axis=1, keepdims=True)
    pred = np.where(rng.random(rows) < 0.3, rng.integers(0, k, rows), proba.argmax(axis=1))
    return c, proba, pred


def _sklearn_auc(c, proba) -> float:
    k = proba.shape[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if k == 2:
                return skm.roc_auc_score(c, proba[:, 1])
            return skm.roc_auc_score(c, proba, multi_class="ovr", average="macro", labels=list(range(k)))
    except ValueError:  # a class absent: undefined
        return float("nan")


@pytest.mark.parametrize("k, ties", [(2, False), (2, True), (3, False), (4, True)])
def test_classification_metrics_equal_scikit_learns(k, ties):
    for seed in range(5):
        c, proba, pred = _predictions(seed, k, ties=ties)
        ours = metrics.classification(c, proba, pred)
        assert ours["accuracy"] == pytest.approx(skm.accuracy_score(c, pred), abs=1e-12)
        assert ours["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(c, pred), abs=1e-12)
        assert ours["f1_macro"] == pytest.approx(skm.f1_score(c, pred, average="macro", labels=list(range(k))),
                                                 abs=1e-12)
        assert ours["roc_auc"] == pytest.approx(_sklearn_auc(c, proba), abs=1e-12)


def test_roc_auc_is_undefined_when_a_class_is_absent():
    c, proba, pred = _predictions(0, 3)
    c[c == 2] = 1
    assert np.isnan(metrics.classification(c, proba, pred)["roc_auc"]) and np.isnan(_sklearn_auc(c, proba))


def test_roc_auc_is_undefined_for_a_diverged_models_probabilities():
    """scikit-learn refuses NaN scores (ValueError, which the runs logged as NaN): so does roc_auc."""
    c, proba, pred = _predictions(0, 3)
    proba[5] = np.nan
    with np.errstate(invalid="ignore"):  # the calibration error's binning casts the NaN
        ours = metrics.classification(c, proba, pred)
    assert np.isnan(ours["roc_auc"]) and np.isnan(_sklearn_auc(c, proba))


def test_balanced_accuracy_counts_only_the_classes_present():
    """A predicted class that no row has adds no recall (scikit-learn warns and leaves it out, too)."""
    c, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.balanced_accuracy_score(c, pred)
    assert metrics.balanced_accuracy(c, pred) == pytest.approx(expected) == 0.75


@pytest.mark.parametrize("y, y_hat", [
    (np.linspace(0, 3, 50), np.linspace(0, 3, 50) + np.sin(np.arange(50))),
    (np.linspace(0, 3, 50).astype(np.float32), np.full(50, 1.0, np.float32)),
    (np.full(20, 2.0), np.full(20, 2.0)),   # a constant target predicted exactly: 1
    (np.full(20, 2.0), np.full(20, 2.5)),   # a constant target missed: 0
])
def test_regression_metrics_equal_scikit_learns(y, y_hat):
    ours = metrics.regression(y, y_hat)
    assert ours["r2"] == pytest.approx(skm.r2_score(y, y_hat), abs=1e-6)
    assert ours["rmse"] == pytest.approx(skm.root_mean_squared_error(y, y_hat), abs=1e-6)
    assert ours["mae"] == pytest.approx(skm.mean_absolute_error(y, y_hat), abs=1e-6)
