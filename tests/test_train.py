"""The loop: losses fall, the best weights come back, runs are reproducible."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.model import MLP
from pipeline.surgery import new_head, swap_head
from pipeline.train import batch_loss, fit, loss_of, lr_factor, predict, target_of


def test_regression_and_classification_losses_fall(tiny_data):
    for task, out in (("regression", 1), ("multiclass", 3)):
        torch.manual_seed(0)
        model = MLP(tiny_data.n_features, 16, 2, out)
        hist = fit(model, tiny_data.train, tiny_data.val, task, epochs=30, batch_size=32, lr=3e-3)
        assert hist.train_loss[-1] < 0.6 * hist.train_loss[0]
        assert min(hist.val_loss) < hist.val_loss[0]


def test_binary_head_trains_with_one_logit(tiny_data):
    torch.manual_seed(0)
    model = swap_head(MLP(tiny_data.n_features, 16, 2), "head", new_head(16, 2))
    split = tiny_data.train
    binary = type(split)(split.x, split.y, (split.y > 0).long())
    val = type(split)(tiny_data.val.x, tiny_data.val.y, (tiny_data.val.y > 0).long())
    hist = fit(model, binary, val, "binary", epochs=20, batch_size=32, lr=3e-3)
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert predict(model, val.x).shape == (len(val), 1)


def test_best_weights_are_restored_and_early_stopping_stops(tiny_data):
    torch.manual_seed(0)
    model = MLP(tiny_data.n_features, 64, 2)
    # a learning rate this high overfits/diverges: validation loss turns, patience stops the run
    hist = fit(model, tiny_data.train, tiny_data.val, "regression", epochs=300, batch_size=16, lr=0.05, patience=5)
    assert hist.epochs < 300
    final = loss_of(predict(model, tiny_data.val.x), target_of(tiny_data.val, "regression"), "regression").item()
    assert abs(final - min(hist.val_loss)) < 1e-5
    assert hist.val_loss[hist.best_epoch - 1] == min(hist.val_loss)


def test_seeded_runs_are_identical(tiny_data):
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = MLP(tiny_data.n_features, 16, 2)
        fit(model, tiny_data.train, tiny_data.val, "regression", epochs=3, batch_size=32, lr=1e-3, seed=3)
        weights.append(model.head.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_a_stop_request_ends_training_at_the_next_epoch(tiny_data):
    """A signal's stop request (stop.request) is raised by the training loop at its next epoch through its
    `stop` check: the stop holds even where the signal handler's own raise was swallowed (inside a
    garbage-collection callback)."""
    from pipeline import stop

    epochs = []

    def stop_after_3(epoch, logs, out):
        epochs.append(epoch)
        if epoch == 3:  # as a SIGTERM's handler in a worker does (jobs.interrupt)
            stop.request(KeyboardInterrupt)

    try:
        with pytest.raises(KeyboardInterrupt):
            fit(MLP(tiny_data.n_features, 8, 1), tiny_data.train, tiny_data.val, "regression", epochs=50,
                batch_size=32, lr=1e-3, on_epoch=stop_after_3, stop=stop.check)
    finally:
        stop.clear()
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("task, out", [("regression", 1), ("multiclass", 3)])
def test_an_ensemble_trains_on_the_mean_of_its_members_losses(task, out):
    torch.manual_seed(0)
    model = MLP(4, 8, 2, out_dim=out, ensemble=3)
    x = torch.randn(6, 4)
    target = torch.randn(6) if task == "regression" else torch.tensor([0, 1, 2, 0, 1, 2])
    members = model.member_outputs(x)
    assert members.shape == (6, 3, out)
    torch.testing.assert_close(members.mean(1), model(x))  # a linear head: the output is the members' mean
    each = torch.stack([loss_of(members[:, j], target, task) for j in range(3)]).mean()
    torch.testing.assert_close(batch_loss(model, x, target, task), each)
    assert not torch.isclose(batch_loss(model, x, target, task), loss_of(model(x), target, task))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_is_torchs_on_multiclass(smoothing):
    torch.manual_seed(0)
    out, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    expected = torch.nn.functional.cross_entropy(out, target, label_smoothing=smoothing)
    assert torch.allclose(loss_of(out, target, "multiclass", smoothing=smoothing), expected)


def test_binary_label_smoothing_equals_two_logits_with_torchs_smoothing():
    torch.manual_seed(0)
    z, target = torch.randn(8, 1), torch.randint(0, 2, (8,))
    two_logits = torch.cat([torch.zeros_like(z), z], dim=1)  # softmax of (0, z) is (1 - sigmoid(z), sigmoid(z))
    expected = torch.nn.functional.cross_entropy(two_logits, target, label_smoothing=0.2)
    assert torch.allclose(loss_of(z, target, "binary", smoothing=0.2), expected, atol=1e-6)


def test_label_smoothing_changes_the_training_loss_not_the_validation_loss(tiny_data):
    def run(smoothing):
        torch.manual_seed(0)
        model = MLP(tiny_data.n_features, 16, 2, 3)
        return fit(model, tiny_data.train, tiny_data.val, "multiclass", epochs=1, batch_size=32, lr=0.0,
                   label_smoothing=smoothing)
    plain, smoothed = run(0.0), run(0.2)
    assert smoothed.train_loss[0] != pytest.approx(plain.train_loss[0])
    assert smoothed.val_loss[0] == pytest.approx(plain.val_loss[0])  # lr 0: same weights, plain validation loss


@pytest.mark.parametrize("schedule, epoch, expected", [
    ("constant", 7, 1.0), ("cosine", 1, 1.0), ("cosine", 51, 0.5),
    ("cosine", 100, 0.5 * (1 + math.cos(0.99 * math.pi))),
    ("flat_cosine", 50, 1.0), ("flat_cosine", 51, 1.0), ("flat_cosine", 76, 0.5),
    ("flat_cosine", 100, 0.5 * (1 + math.cos(0.98 * math.pi)))])
def test_lr_factor_at_chosen_epochs(schedule, epoch, expected):
    assert lr_factor(schedule, epoch, 100) == pytest.approx(expected)


def test_fit_trains_each_epoch_at_the_schedules_learning_rate(tiny_data, monkeypatch):
    seen, original = [], torch.optim.AdamW.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    torch.manual_seed(0)
    model = MLP(tiny_data.n_features, 16, 2)  # one batch an epoch: one step at each epoch's rate
    fit(model, tiny_data.train, tiny_data.val, "regression", epochs=4, batch_size=10_000, lr=0.01, lr_schedule="cosine")
    assert seen == pytest.approx([0.01 * lr_factor("cosine", e, 4) for e in range(1, 5)])
