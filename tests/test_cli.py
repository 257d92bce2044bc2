"""The option table (config.OPTIONS) against what it generates: click options, config overrides, MLproject."""
from __future__ import annotations

import gc
import re
import shlex

import click
import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, invoke, runs_of, tiny_args

from pipeline import cli as cli_module
from pipeline import config
from pipeline.cli import cli, mlproject_param, mlproject_text, resolve, stage_options

KEYS = set(config.Config().flat())
ENTRY_POINTS = {c.replace("-", "_"): c for c in config.COMMANDS}

# the parameters `mlflow run -e ENTRY -P NAME=...` took before the table; they must keep working
PARAMETERS = {
    "convert": {"config", "data", "target", "classes", "features", "strategies", "epochs", "seed", "device", "model",
                "model_kwargs", "checkpoint", "model_uri", "retrain", "head", "scaling", "target_scaling"},
    "baseline": {"config", "data", "target", "classes", "features", "epochs", "seed", "device", "model", "model_kwargs",
                 "checkpoint", "model_uri", "retrain", "head", "scaling", "target_scaling"},
    "head_swap": {"config", "baseline_run", "data", "target", "classes", "features", "strategies", "epochs", "seed",
                  "device", "head", "scaling", "target_scaling"},
    "slim": {"config", "from_run", "keep_ratios", "distill", "data", "target", "classes", "features", "epochs", "seed",
             "device", "scaling", "target_scaling"},
    "tune": {"config", "from_run", "n_trials", "timeout", "metric", "pruner", "storage", "study_name", "workers",
             "data", "target", "classes", "features", "seed", "device", "scaling", "target_scaling"},
    "compare": {"run_id", "experiment", "metric", "register", "reference"},
}


def flag(opt: config.Option) -> str:
    return "--" + opt.name.replace("_", "-")


def row_id(opt: config.Option) -> str:
    return opt.name if opt.commands == config.COMMANDS else f"{opt.name}@{'+'.join(opt.commands)}"


def parse(command: str, *args: str) -> dict:
    """`command`'s options as click parses them, without running it."""
    return cli.commands[command].make_context(command, list(args)).params


def value(cfg: config.Config, key: str):
    head, _, tail = key.partition(".")
    return getattr(getattr(cfg, head), tail) if tail else getattr(cfg, head)


def entry_points() -> dict:
    return yaml.safe_load(mlproject_text())["entry_points"]


def entry_argv(entry: str, values: dict[str, str]) -> tuple[str, list[str]]:
    """What `mlflow run -e ENTRY` executes, given `values` for some parameters (the rest left at ""): mlflow
    shell-quotes each value into the command. Returns (command, its arguments)."""
    spec = entry_points()[entry]
    filled = {p: shlex.quote(values.get(p, spec["parameters"][p]["default"])) for p in spec["parameters"]}
    argv = shlex.split(spec["command"].format(**filled))
    assert argv[:3] == ["python", "-m", "pipeline"]
    return argv[3], argv[4:]


# -- MLproject ------------------------------------------------------------------------------------------------------


def test_committed_mlproject_is_the_one_rendered_from_the_table():
    assert (REPO / "MLproject").read_text() == mlproject_text(), "regenerate: python -m pipeline mlproject > MLproject"


def test_mlproject_is_also_printed_by_the_hidden_command():
    result = CliRunner().invoke(cli, ["mlproject"])
    assert result.exit_code == 0 and result.output == mlproject_text()
    assert "mlproject" not in CliRunner().invoke(cli, ["--help"]).output


@pytest.mark.parametrize("entry", [*PARAMETERS, "main"])
def test_mlproject_keeps_its_entry_points_and_parameter_names(entry):
    spec = entry_points()[entry]
    assert PARAMETERS["convert" if entry == "main" else entry] <= set(spec["parameters"])  # new ones may join
    assert all(p == {"type": "string", "default": ""} for p in spec["parameters"].values())


@pytest.mark.parametrize("entry", PARAMETERS)
def test_every_key_an_entry_point_sets_exists_and_every_parameter_is_passed(entry):
    command = entry_points()[entry]["command"]
    assert set(re.findall(r"--set ([\w.]+)=", command)) <= KEYS
    assert set(re.findall(r"\{(\w+)\}", command)) == set(entry_points()[entry]["parameters"])


@pytest.mark.parametrize("entry", PARAMETERS)
def test_each_entry_point_parameter_reaches_its_option(entry):
    """Every parameter, given a value, arrives at the config key (or the command's own option) of its table row."""
    rows = [o for o in config.OPTIONS if ENTRY_POINTS[entry] in o.mlproject]
    command, args = entry_argv(entry, {mlproject_param(o): f"value-of-{mlproject_param(o)}" for o in rows})
    assert command == ENTRY_POINTS[entry]
    opts = parse(command, *args)
    overrides = cli_module._overrides(opts, command)
    for opt in rows:
        if opt.key:
            assert overrides[opt.key] == f"value-of-{mlproject_param(opt)}"
        else:
            assert opts[opt.dest or opt.name] == f"value-of-{opt.name}"


@pytest.mark.parametrize("entry", PARAMETERS)
def test_entry_point_with_every_parameter_empty_keeps_the_experiment_file(entry, tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("seed: 3\ndata:\n  classes: quantile:2\ntrain:\n  epochs: 5\n  device: cpu\n"
                          "slim:\n  keep_ratios: [0.5]\n  distill: true\ntune:\n  n_trials: 2\n  metric: val/log_loss\n"
                          "compare:\n  reference: false\n  register: mine\n")
    has_file = "config" in PARAMETERS[entry]
    command, args = entry_argv(entry, {"config": str(experiment)} if has_file else {})
    cfg = resolve(command, parse(command, *args))
    assert cfg == config.load(experiment if has_file else None)


# -- the table and the click options it generates ---------------------------------------------------------------------


@pytest.mark.parametrize("opt", [o for o in config.OPTIONS if o.key], ids=row_id)
def test_every_option_sets_an_existing_config_key(opt):
    assert opt.key in KEYS


@pytest.mark.parametrize("opt", config.OPTIONS, ids=row_id)
def test_option_row_is_consistent(opt):
    assert set(opt.commands) <= set(config.COMMANDS) and set(opt.mlproject) <= set(opt.commands)
    assert opt.type in (str, int, float, "path") and (opt.min is None or opt.type in (int, float))
    if opt.mlproject:  # "" must mean "not given": through --set, or a string option _overrides drops when empty
        assert opt.key or (opt.flag is None and opt.type in (str, "path") and not opt.choices)


@pytest.mark.parametrize("command", config.COMMANDS)
def test_option_names_are_unique_per_command_and_parameter(command):
    names = [o.name for o in config.OPTIONS if command in o.commands]
    params = [mlproject_param(o) for o in config.OPTIONS if command in o.mlproject]
    assert len(names) == len(set(names)) and len(params) == len(set(params))


@pytest.mark.parametrize("command", config.COMMANDS)
def test_help_lists_the_commands_options(command):
    out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
    listed = set(re.findall(r"^  (?:-\w, )?(--[\w-]+)", out, flags=re.MULTILINE))
    assert listed == {flag(o) for o in config.OPTIONS if command in o.commands} | {"--set", "--help"}


@pytest.mark.parametrize("option, commands", [
    ("--strategies", {"convert", "head-swap"}), ("--baseline-run", {"head-swap"}), ("--from-run", {"slim", "tune"}),
    ("--keep-ratios", {"slim"}), ("--distill", {"slim"}), ("--n-trials", {"tune"}), ("--workers", {"tune"}),
    ("--metric", {"tune", "compare"}), ("--no-reference", {"compare"}), ("--run-id", {"compare", "export"}),
    ("--register", {"convert", "compare"}), ("--lr", set(config.COMMANDS)),
])
def test_command_specific_options_appear_only_on_their_commands(option, commands):
    shown = {c for c in cli.commands if any(option in p.opts for p in cli.commands[c].params)}
    assert shown == commands


@pytest.mark.parametrize("command, option, param_type", [
    ("convert", "lr", click.FloatRange(min=0, min_open=True)), ("tune", "epochs", click.IntRange(min=1)),
    ("baseline", "device", click.Choice(config.DEVICES)), ("tune", "metric", click.Choice(sorted(config.TUNE_METRICS))),
    ("slim", "config_path", click.Path(dir_okay=False)),
])
def test_option_types_and_ranges(command, option, param_type):
    [param] = [p for p in cli.commands[command].params if p.name == option]
    assert param.type.to_info_dict() == param_type.to_info_dict()


@pytest.mark.parametrize("command, args, message", [
    ("convert", ["--lr", "0"], "Invalid value for '--lr'"),
    ("baseline", ["--device", "tpu"], "Invalid value for '--device'"),
    ("tune", ["--metric", "test/f1_macro"], "Invalid value for '--metric'"),
    ("slim", ["--n-trials", "3"], "No such option"),
])
def test_bad_options_are_argument_errors(command, args, message):
    result = CliRunner().invoke(cli, [command, *args])
    assert result.exit_code == 2 and message in result.output


# -- options -> config ---------------------------------------------------------------------------------------------


ROUND_TRIPS = [
    ("baseline", ["--lr", "0.01"], "train.lr", 0.01),
    ("convert", ["--data", "prices.csv", "--target", "price"], "data.source", "prices.csv"),
    ("convert", ["--strategies", "threshold,finetune"], "head_swap.strategies", ("threshold", "finetune")),
    ("head-swap", ["--device", "cpu", "--seed", "5"], "seed", 5),
    ("convert", ["--model", "m.py:Net", "--retrain"], "user_model.retrain", True),
    ("slim", ["--keep-ratios", "0.5"], "slim.keep_ratios", ("0.5",)),
    ("slim", ["--distill"], "slim.distill", True),
    ("tune", ["--metric", "val/log_loss"], "tune.metric", "val/log_loss"),
    ("tune", ["--n-trials", "2", "--set", "tune.n_trials=5"], "tune.n_trials", 2),  # the named option wins
    ("compare", ["--metric", "val/log_loss"], "compare.metric", "val/log_loss"),
    ("convert", ["--folds", "3"], "data.folds", "3"),
    ("compare", ["--no-reference"], "compare.reference", False),
    ("compare", ["--register", "champ"], "compare.register", "champ"),
    ("convert", ["--register", "champ"], "compare.register", "champ"),
]


@pytest.mark.parametrize("command, args, key, expected", ROUND_TRIPS,
                         ids=[f"{c} {' '.join(a)}" for c, a, _, _ in ROUND_TRIPS])
def test_option_reaches_its_config_key(command, args, key, expected):
    assert value(resolve(command, parse(command, *args)), key) == expected


def test_options_left_out_or_empty_keep_the_experiment_file(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("data:\n  classes: quantile:2\ntrain:\n  epochs: 3\n"
                          "slim:\n  keep_ratios: [0.5]\n  distill: true\n")
    cfg = resolve("slim", parse("slim", "--config", str(experiment), "--classes", "", "--keep-ratios", "",
                                "--set", "train.epochs=", "--set", "slim.distill="))
    assert cfg == config.load(experiment)
    assert cfg.data.classes == "quantile:2" and cfg.train.epochs == 3
    assert cfg.slim.keep_ratios == ("0.5",) and cfg.slim.distill is True


def test_compare_replays_the_run_beneath_the_options_given():
    recovered = {"compare.metric": "val/accuracy", "compare.register": "old", "data.classes": "quantile:2",
                 "user_model.spec": "", "experiment": "theirs"}
    cfg = resolve("compare", {**parse("compare", "--metric", "val/log_loss", "--set", "compare.register=new"),
                              "recovered": recovered})
    assert (cfg.compare.metric, cfg.compare.register, cfg.data.classes, cfg.experiment) == \
           ("val/log_loss", "new", "quantile:2", "theirs")


@pytest.mark.parametrize("metric", ["test/f1_macro", "test/log_loss"])
def test_a_test_metric_is_refused_as_the_selection_metric(metric):
    with pytest.raises(config.UserError, match=f"would choose the champion on the test split.*val/{metric[5:]}"):
        resolve("compare", parse("compare", "--metric", metric))


@pytest.mark.parametrize("folds", ["0", "two", "-1"])
def test_folds_must_be_auto_or_a_whole_number(folds):
    with pytest.raises(config.UserError, match="data.folds must be auto or a whole number"):
        resolve("convert", parse("convert", "--folds", folds))


def test_set_needs_key_equals_value():
    with pytest.raises(config.UserError, match="expected KEY=VALUE"):
        resolve("convert", parse("convert", "--set", "train.lr"))


def test_a_new_option_is_one_table_entry(monkeypatch):
    """What adding e.g. --jobs takes: one row, which then shows on its commands, parses, reaches its key and
    becomes an MLproject parameter (an existing key stands in for the new config field here)."""
    row = config.Option("jobs", "tune.workers", "Worker processes.", type=int, min=1, commands=("convert", "tune"),
                        mlproject=("convert",))
    monkeypatch.setattr(config, "OPTIONS", (*config.OPTIONS, row))
    command = click.command()(stage_options("convert")(lambda **opts: None))
    opts = command.make_context("convert", ["--jobs", "3"]).params
    assert resolve("convert", opts).tune.workers == 3
    assert "--set tune.workers={jobs}" in entry_points()["convert"]["command"]
    assert entry_points()["convert"]["parameters"]["jobs"] == {"type": "string", "default": ""}


def test_the_auto_width_is_resolved_before_any_run_and_logged(experiment):
    """model.width 0 is resolved once from the first split (cli._resolve_width): every fold trains the same width,
    and the runs log it; on the tiny data (below model.SMALL_TABLE_ROWS training rows) 64."""
    assert invoke("baseline", *tiny_args(experiment, "--set", "model.width=0")).exit_code == 0
    [run] = [r for r in runs_of(experiment) if r.data.tags.get("stage") == "baseline"]
    assert run.data.params["model.width"] == "64"


@pytest.fixture
def own_process(monkeypatch):
    """The CLI as in the console script's own process (cli.main), with what it froze given back afterwards; and
    whether the collector was on while `_prepare` read the inputs (`seen`)."""
    seen = []
    read_inputs = cli_module._read_inputs

    def spy(opts):
        seen.append(gc.isenabled())
        return read_inputs(opts)

    monkeypatch.setattr(cli_module, "_OWN_PROCESS", True)
    monkeypatch.setattr(cli_module, "_read_inputs", spy)
    yield seen
    gc.unfreeze()
    gc.enable()


def test_the_console_script_reads_its_inputs_uncollected_then_freezes_them(experiment, own_process):
    """In its own process the command imports and reads with the collector off (collections would walk ever more of
    torch's and MLflow's objects, over a second), then freezes what that made and turns the collector back on."""
    frozen = gc.get_freeze_count()
    assert invoke("baseline", *tiny_args(experiment)).exit_code == 0
    assert own_process == [False]
    assert gc.isenabled() and gc.get_freeze_count() > frozen


def test_the_console_script_turns_its_collector_back_on_after_bad_input(experiment, own_process):
    result = invoke("baseline", *tiny_args(experiment, "--set", "data.target=nope"))
    assert result.exit_code == 1 and "nope" in result.output
    assert own_process == [False] and gc.isenabled()


def test_the_cli_in_a_callers_process_leaves_its_collector_unfrozen(experiment):
    """Only the console script's own process freezes what its imports made (cli._prepare): a caller that invokes
    the CLI in its process (these tests) keeps its garbage collector as it was."""
    frozen = gc.get_freeze_count()
    assert invoke("baseline", *tiny_args(experiment)).exit_code == 0
    assert gc.get_freeze_count() == frozen
