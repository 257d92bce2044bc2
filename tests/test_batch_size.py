"""The auto batch size and learning-rate rule (train.batch_and_lr), and the CLI resolving it before runs open."""
from __future__ import annotations

import math

import pytest
from conftest import tiny_config

from pipeline import cli as cli_module
from pipeline import config
from pipeline.train import batch_and_lr


@pytest.mark.parametrize("rows", [240, 310, 3428, 6400])
def test_auto_keeps_batch_64_and_the_lr_on_small_data(rows):
    assert batch_and_lr("auto", 3e-3, rows) == (64, 3e-3)


@pytest.mark.parametrize("rows, batch", [(6401, 128), (26_430, 512), (70_000, 1024), (700_000, 4096)])
def test_auto_bounds_the_steps_an_epoch_takes(rows, batch):
    got, lr = batch_and_lr("auto", 3e-3, rows, max_steps_per_epoch=100)
    assert got == batch
    assert math.ceil(rows / got) <= 100 or got == 4096  # the ceiling: 1M rows take more steps
    assert lr == pytest.approx(3e-3 * math.sqrt(batch / 64))


def test_lr_scaling_rules_and_switching_auto_off():
    assert batch_and_lr("auto", 1e-3, 26_430, 100, "linear") == (512, pytest.approx(8e-3))
    assert batch_and_lr("auto", 1e-3, 26_430, 100, "none") == (512, 1e-3)
    assert batch_and_lr("auto", 1e-3, 26_430, 0) == (64, 1e-3)


@pytest.mark.parametrize("given", ["32", 32, "1024"])
def test_a_whole_number_is_used_as_given_with_its_lr(given):
    assert batch_and_lr(given, 3e-3, 1_000_000) == (int(given), 3e-3)


def test_batch_size_defaults_to_auto_and_bad_values_are_refused():
    assert config.Config().train.batch_size == "auto"
    assert config.load(None, {"train.batch_size": 256}).train.batch_size == "256"
    for bad in ("1", "0", "big", "-64"):
        with pytest.raises(config.UserError, match="train.batch_size"):
            config.load(None, {"train.batch_size": bad})
    with pytest.raises(config.UserError, match="lr_scaling"):
        config.load(None, {"train.lr_scaling": "cubic"})


def test_the_cli_resolves_auto_before_runs_open_so_params_show_what_trained():
    cfg = config.load(None, {})
    resolved = cli_module._resolve_batch(cfg, 26_430)
    assert resolved.train.batch_size == "512"
    assert resolved.train.lr == pytest.approx(cfg.train.lr * math.sqrt(8))
    flat = resolved.flat()
    assert flat["train.batch_size"] == "512" and flat["train.lr"] == resolved.train.lr
    # resolving again (compare replays a run's params) changes nothing
    assert cli_module._resolve_batch(resolved, 26_430) == resolved
    small = cli_module._resolve_batch(cfg, 310)
    assert (small.train.batch_size, small.train.lr) == ("64", cfg.train.lr)


def test_tiny_config_keeps_its_explicit_batch():
    assert tiny_config().train.batch_size == "32"
