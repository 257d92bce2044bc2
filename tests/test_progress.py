"""The progress output: a live bar on a terminal, one line per run without one, nothing under --quiet."""
from __future__ import annotations

import io
import sys

import pytest
from click.testing import CliRunner
from conftest import tiny_args

from pipeline import progress
from pipeline.cli import cli


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
    progress.write("baseline: validation RMSE 1")
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
    assert "baseline: validation RMSE" in plain.output and "data:" in plain.output
    assert "\r" not in plain.output and "epoch 1/" not in plain.output and "█" not in plain.output
    try:
        quiet = CliRunner().invoke(cli, [*args, "--quiet"])
    finally:
        progress.set_quiet(False)
    assert quiet.exit_code == 0, quiet.output
    assert "baseline: validation RMSE" not in quiet.output and "data:" not in quiet.output
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
