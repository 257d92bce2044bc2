"""The decision rule (decision.py): fitted on validation, it never decides worse there, moves an imbalanced
binary threshold toward the minority, calibrates with a temperature, travels with the model; and class
weighting in the loss (train.class_weight)."""
from __future__ import annotations

from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from pipeline import config, decision, metrics, tracking
from pipeline.data import Split
from pipeline.model import MLP, fitted_rule, load_state, save_state, set_rule, track
from pipeline.surgery import build
from pipeline.train import class_weights, fit, loss_of, predict


def binary_imbalanced(rng: np.random.Generator, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1) calibrated logits of a 20%-positive binary problem (the true log-odds of two overlapping
    Gaussians) and the classes."""
    c = (rng.random(n) < 0.2).astype(np.int64)
    x = rng.normal(size=n) + 1.5 * c
    logit = 1.5 * x - 1.125 + np.log(0.2 / 0.8)  # log p(x|1)/p(x|0) + log prior odds
    return logit[:, None], c


def three_class(rng: np.random.Generator, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) logits with a skewed class mix (60/30/10), informative but noisy."""
    c = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    logits = rng.normal(size=(n, 3)) * 1.5
    logits[np.arange(n), c] += 1.5
    return logits, c


def ordinal_three_class(rng: np.random.Generator, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) log-probabilities of a cumulative-link model (cut points off on purpose) and its classes."""
    r = rng.normal(size=n)
    c = np.digitize(r + 0.7 * rng.normal(size=n), [-0.3, 1.0])
    above = 1 / (1 + np.exp(-(r[:, None] - np.array([0.2, 0.6]))))  # P(y > k), k = 0, 1
    proba = np.stack([1 - above[:, 0], above[:, 0] - above[:, 1], above[:, 1]], axis=1)
    return np.log(np.clip(proba, 1e-12, 1)), c


def random_logits(rng: np.random.Generator, n: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) logits unrelated to the classes: nothing to learn, a rule must still not do worse."""
    return rng.normal(size=(n, 4)) * 3, rng.integers(0, 4, size=n)


@pytest.mark.parametrize("make, ordinal", [(binary_imbalanced, False), (three_class, False),
                                           (ordinal_three_class, True), (random_logits, False)],
                         ids=["binary_imbalanced", "three_class", "ordinal_three_class", "random_logits"])
def test_the_rule_never_lowers_validation_macro_f1(make, ordinal):
    out, c = make(np.random.default_rng(0))
    k = 2 if out.shape[1] == 1 else out.shape[1]
    scores = decision.scores_of(out, k)
    proba = np.exp(decision.tempered(scores, 1.0))
    rule = decision.fit_scores(scores, c, ordinal=ordinal)
    ruled = metrics.f1_macro(c, decision.apply(rule, scores)[1], k)
    assert ruled >= metrics.f1_macro(c, proba.argmax(axis=1), k)
    if ordinal:  # nor below the head's own decision, the median class
        assert ruled >= metrics.f1_macro(c, decision.median_classes(proba), k)


def test_imbalanced_binary_threshold_moves_toward_the_minority_and_raises_macro_f1():
    out, c = binary_imbalanced(np.random.default_rng(1))
    scores = decision.scores_of(out, 2)
    rule = decision.fit_scores(scores, c)
    threshold = float(decision.as_params(rule)["rule.threshold"])
    assert threshold < 0.45  # the positive (minority) class is chosen below P = 0.5
    argmax_f1 = metrics.f1_macro(c, scores.argmax(axis=1), 2)
    assert metrics.f1_macro(c, decision.apply(rule, scores)[1], 2) > argmax_f1 + 0.01


def test_no_offsets_are_fitted_on_a_class_with_too_few_validation_rows():
    out, c = binary_imbalanced(np.random.default_rng(1))
    keep = np.r_[np.flatnonzero(c == 0), np.flatnonzero(c == 1)[:decision.MIN_CLASS_ROWS - 1]]
    rule = decision.fit_scores(decision.scores_of(out[keep], 2), c[keep])
    assert rule["offsets"] == [0.0, 0.0]  # the temperature alone: it cannot change the decisions


def test_temperature_lowers_the_log_loss_of_overconfident_logits():
    logits, c = three_class(np.random.default_rng(2))
    scores = decision.scores_of(5 * logits, 3)  # calibrated-ish logits made five times too sure
    rule = decision.fit_scores(scores, c)
    assert rule["temperature"] > 2
    before = metrics.log_loss(c, np.exp(decision.tempered(scores, 1.0)))
    assert metrics.log_loss(c, decision.apply(rule, scores)[0]) < 0.8 * before


def test_identity_rule_is_argmax():
    scores = decision.scores_of(np.random.default_rng(3).normal(size=(200, 4)) * 4, 4)
    proba, pred = decision.apply(decision.identity(4), scores)
    np.testing.assert_array_equal(pred, scores.argmax(axis=1))
    np.testing.assert_allclose(proba, torch.softmax(torch.from_numpy(scores), dim=1).numpy(), atol=1e-12)


def test_ordinal_identity_rule_is_the_median_class():
    proba = np.random.default_rng(4).dirichlet(np.ones(5), size=300)
    median = (1 - np.cumsum(proba, axis=1)[:, :-1] > 0.5).sum(axis=1)
    scores = decision.scores_of_proba(proba)
    np.testing.assert_array_equal(decision.apply(decision.identity(5, ordinal=True), scores)[1], median)
    np.testing.assert_array_equal(decision.median_classes(proba), median)


def test_the_rule_survives_save_state_and_load_state(tmp_path):
    model = MLP(4, 8, 1, out_dim=3)
    set_rule(model, {"temperature": 1.7, "offsets": [0.0, -0.4, 1.25], "ordinal": False})
    save_state(model, tmp_path / "state")
    loaded = load_state(tmp_path / "state", build)
    assert fitted_rule(loaded) == fitted_rule(model)
    x = torch.randn(50, 4)
    np.testing.assert_array_equal(decision.outputs(loaded, x, "cpu", 3)[1], decision.outputs(model, x, "cpu", 3)[1])


def test_outputs_applies_the_models_rule():
    torch.manual_seed(0)
    model, x = MLP(4, 8, 1, out_dim=3), torch.randn(100, 4)
    logits = predict(model, x).double()
    proba, pred = decision.outputs(model, x, "cpu", 3)
    np.testing.assert_array_equal(pred, logits.argmax(dim=1).numpy())  # no rule: argmax
    set_rule(model, {"temperature": 2.0, "offsets": [0.0, 50.0, 0.0], "ordinal": False})
    proba, pred = decision.outputs(model, x, "cpu", 3)
    assert (pred == 1).all()  # an offset this large picks class 1 everywhere
    np.testing.assert_allclose(proba, torch.softmax(logits / 2.0, dim=1).numpy(), atol=1e-6)


class Ordinal3(nn.Module):
    """A stand-in for surgery's ordinal heads: marked `ordinal`, outputs (N, 3) log-probabilities."""
    ordinal = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x[:, :3], dim=1)


def test_a_model_with_an_ordinal_head_decides_by_the_median_without_a_rule():
    x = torch.randn(200, 3) * 3
    proba, pred = decision.outputs(Ordinal3(), x, "cpu", 3)
    np.testing.assert_array_equal(pred, decision.median_classes(proba))


def test_fit_rule_fits_on_validation_and_attaches_the_rule():
    out, c = binary_imbalanced(np.random.default_rng(5), n=600)
    model = track(nn.Identity(), {"kind": "test"})  # its output is the validation logits themselves
    val = Split(torch.tensor(out, dtype=torch.float32), torch.zeros(len(c)), torch.from_numpy(c))
    rule = decision.fit_rule(model, SimpleNamespace(val=val, n_classes=2), "cpu")
    assert fitted_rule(model) is rule and rule["offsets"][1] > 0  # argmax would under-predict the minority


@pytest.mark.parametrize("k", [2, 3], ids=["binary", "multiclass"])
def test_balanced_class_weights_change_the_loss(k):
    c = torch.tensor([0, 0, 0, 0, 0, 1] if k == 2 else [0, 0, 0, 0, 1, 2])
    out = torch.randn(6, 1 if k == 2 else k, generator=torch.Generator().manual_seed(0))
    task = "binary" if k == 2 else "multiclass"
    weight = class_weights(c, k, "balanced")
    np.testing.assert_allclose(weight.numpy(), [6 / (k * n) for n in torch.bincount(c).tolist()], rtol=1e-6)
    assert class_weights(c, k, "none") is None
    assert abs(loss_of(out, c, task, weight).item() - loss_of(out, c, task).item()) > 1e-3
    if k == 2:  # binary: pos_weight n_neg / n_pos on the positive term
        expected = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(5.0))(out.reshape(-1), c.float())
        assert abs(loss_of(out, c, task, weight).item() - expected.item()) < 1e-6


def test_fit_early_stops_on_the_weighted_validation_loss(tiny_data):
    cuts = torch.quantile(tiny_data.train.y, torch.tensor([0.6, 0.9]))  # 60 / 30 / 10: balanced weights are not 1

    def skewed(split: Split) -> Split:
        return Split(split.x, split.y, torch.bucketize(split.y, cuts))

    train, val = skewed(tiny_data.train), skewed(tiny_data.val)
    torch.manual_seed(0)
    model = MLP(tiny_data.n_features, 8, 1, out_dim=3)
    start = predict(model, val.x)
    # lr 0: the weights never move, so the epoch's validation loss is the starting model's
    hist = fit(model, train, val, "multiclass", epochs=1, batch_size=64, lr=0.0, class_weight="balanced")
    weighted = loss_of(start, val.c, "multiclass", class_weights(train.c, 3, "balanced")).item()
    assert hist.val_loss[0] == pytest.approx(weighted, rel=1e-5)
    assert hist.val_loss[0] != pytest.approx(loss_of(start, val.c, "multiclass").item(), rel=1e-3)


def test_a_misspelled_class_weight_is_refused():
    with pytest.raises(config.UserError, match="train.class_weight must be none or balanced, got 'balance'"):
        config.load(None, {"train.class_weight": "balance"})


def test_predictions_keep_the_classes_the_rule_picked(store, experiment):
    proba = np.random.default_rng(7).dirichlet(np.ones(3), size=20)
    pred = (proba.argmax(axis=1) + 1) % 3  # never the argmax
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        tracking.log_predictions(np.arange(20), np.zeros(20, np.int64), proba, pred)
    np.testing.assert_array_equal(tracking.read_predictions(run.info.run_id)["pred"], pred)


def test_an_ordinal_head_with_too_few_validation_rows_keeps_its_untempered_median():
    out, c = ordinal_three_class(np.random.default_rng(5), n=60)  # ~20 rows a class
    rule = decision.fit_scores(decision.scores_of(out, 3), c, ordinal=True)
    assert rule == decision.identity(3, ordinal=True)


def test_cross_fitted_decisions_remove_the_rule_fits_optimism_on_noise():
    """On calibrated scores a fitted rule can only fit noise: scored on its own rows it gains, while each row
    decided by a rule fitted on the other half gains nothing on average (bench/bench_selection.py measures it)."""
    gains_in, gains_cross = [], []
    for sim in range(12):
        rng = np.random.default_rng(sim)
        p = rng.dirichlet(np.ones(3) * 2, size=300)  # calibrated: the class is drawn from p
        c = np.array([rng.choice(3, p=row) for row in p])
        scores = decision.scores_of(np.log(p), 3)
        base = metrics.f1_macro(c, p.argmax(axis=1), 3)
        rule = decision.fit_scores(scores, c)
        gains_in.append(metrics.f1_macro(c, decision.apply(rule, scores)[1], 3) - base)
        gains_cross.append(metrics.f1_macro(c, decision.cross_fitted(scores, c, seed=sim), 3) - base)
    assert np.mean(gains_in) > 0.01
    assert np.mean(gains_cross) < np.mean(gains_in) / 2
