"""The budget knob (config.BUDGETS): what each budget resolves to, and that explicit settings win over it."""
from __future__ import annotations

from click.testing import CliRunner

from pipeline import config
from pipeline.cli import cli, resolve
from test_cli import parse


def test_the_default_budget_is_the_defaults_unchanged():
    assert config.load() == config.Config()
    assert config.load(None, {"budget": "default"}) == config.Config()


def test_fast_trains_fewer_and_shorter_runs():
    fast, default = config.load(None, {"budget": "fast"}), config.Config()
    assert fast.tune.n_trials < default.tune.n_trials and fast.train.epochs < default.train.epochs
    assert len(fast.slim.keep_ratios) < len(default.slim.keep_ratios) and fast.seeds == default.seeds


def test_best_adds_seeds_trials_and_an_ensemble():
    best, default = config.load(None, {"budget": "best"}), config.Config()
    assert best.seeds > default.seeds and best.tune.n_trials > default.tune.n_trials
    assert best.model.ensemble > default.model.ensemble and best.budget == "best"


def test_every_budget_setting_is_a_config_key():
    known = set(config.Config().flat())
    assert all(key in known for settings in config.BUDGETS.values() for key in settings)


def test_an_explicit_option_wins_over_the_budget():
    cfg = resolve("convert", parse("convert", "--budget", "best", "--set", "seeds=2", "--set", "model.ensemble=1"))
    assert (cfg.seeds, cfg.model.ensemble, cfg.tune.n_trials) == (2, 1, config.BUDGETS["best"]["tune.n_trials"])


def test_the_experiment_file_wins_over_the_budget_and_may_name_it(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("budget: fast\ntune:\n  n_trials: 6\n")
    cfg = config.load(experiment)
    assert cfg.tune.n_trials == 6 and cfg.train.epochs == config.BUDGETS["fast"]["train.epochs"]
    overridden = config.load(experiment, {"budget": "default"})  # the option's budget over the file's
    assert overridden.tune.n_trials == 6 and overridden.train.epochs == config.Config().train.epochs


def test_an_unknown_budget_is_a_one_line_error():
    result = CliRunner().invoke(cli, ["convert", "--budget", "huge"])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert "unknown budget 'huge'; choose from fast, default, best" in result.output
