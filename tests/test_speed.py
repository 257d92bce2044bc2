"""Speed and scale (issue 14): the auto batch size and learning-rate rule, and the progress output."""
from __future__ import annotations

import io
import math
import sys

import pytest
from click.testing import CliRunner
from conftest import tiny_args, tiny_config

from pipeline import cli as cli_module
from pipeline import config, progress
from pipeline.cli import cli
from pipeline.train import batch_and_lr

# -- batch size and learning rate --------------------------------------------------------------------------------


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


# -- progress -----------------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """A stderr that is a terminal; call it in the test body (pytest's capture resets sys.stderr after setup)."""
    err = Terminal()
    monkeypatch.setattr(progress, "MININTERVAL", 0)

    def attach() -> Terminal:
        monkeypatch.setattr(sys, "stderr", err)
        return err
    yield attach
    progress.set_quiet(False)


def test_a_terminal_shows_epoch_best_metric_and_eta(terminal):
    terminal = terminal()
    with progress.Bar("head_swap/finetune", 300, "val/f1_macro") as bar:
        for epoch, f1 in enumerate([0.5, 0.7, 0.6], start=1):
            bar.update(epoch, f1)
    shown = terminal.getvalue()
    assert "head_swap/finetune" in shown and "epoch 3/300, best val/f1_macro 0.7 [" in shown
    assert "<" in shown  # elapsed<remaining


def test_quiet_silences_the_bar_and_the_lines(terminal, capsys):
    terminal = terminal()
    progress.set_quiet(True)
    with progress.Bar("baseline", 10, "val/rmse", higher=False) as bar:
        bar.update(1, 3.0)
    progress.write("baseline: test RMSE 1")
    assert terminal.getvalue() == "" and capsys.readouterr().out == ""


def test_no_terminal_no_bar():
    bar = progress.Bar("baseline", 10, "val/rmse")  # pytest captures stderr: not a tty
    bar.update(1, 1.0)
    assert bar._bar is None
    bar.close()


def test_baseline_prints_its_line_without_a_bar_and_nothing_under_quiet(store, experiment):
    args = ["baseline", *tiny_args(experiment), "--force"]
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    assert "baseline: test RMSE" in plain.output and "data:" in plain.output
    assert "\r" not in plain.output and "epoch 1/" not in plain.output and "█" not in plain.output
    try:
        quiet = CliRunner().invoke(cli, [*args, "--quiet"])
    finally:
        progress.set_quiet(False)
    assert quiet.exit_code == 0, quiet.output
    assert "baseline: test RMSE" not in quiet.output and "data:" not in quiet.output
    assert "epoch" not in quiet.output and "baseline run:" in quiet.output  # the result is still printed


def test_quiet_reaches_worker_processes_started_after_it():
    import os
    import subprocess

    try:
        progress.set_quiet(True)
        code = "from pipeline import progress; print(progress.quiet())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "True"
    finally:
        progress.set_quiet(False)
    assert "REG2CLS_QUIET" not in os.environ and not progress.quiet()


def test_tiny_config_keeps_its_explicit_batch():
    assert tiny_config().train.batch_size == "32"
