"""The loop: losses fall, the best weights come back, runs are reproducible."""
from __future__ import annotations

import pytest
import torch

from pipeline.model import MLP
from pipeline.surgery import new_head, swap_head
from pipeline.train import batch_loss, fit, loss_of, predict, target_of


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
