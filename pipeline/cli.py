"""The `reg2cls` command line: one thin command per stage, plus `convert` which runs them all.

Only click and the config module are imported at start-up; torch, pandas and mlflow load inside the
commands, so `--help` and argument errors return at once. The stage commands' options come from the
option table (`config.OPTIONS`), and so does the MLproject file (`mlproject_text`). A `UserError`
becomes one line on stderr and exit code 1; Ctrl+C and SIGTERM end the open MLflow runs as KILLED and
exit 130 / 143.
"""
from __future__ import annotations

import functools
import signal
import sys

import click

from . import config
from .config import UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so open runs unwind and end KILLED like on Ctrl+C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _options(command: str) -> tuple[config.Option, ...]:
    """`command`'s rows of the option table, in table order."""
    return tuple(o for o in config.OPTIONS if command in o.commands)


def _set_items(items) -> dict[str, str]:
    """`KEY=VALUE` strings -> {key: value}. An empty value (`--set key=`, an MLproject parameter left at "")
    is left out, so the experiment file's or default value stays."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.01")
        if value.strip():
            out[key.strip()] = value.strip()
    return out


def _overrides(opts: dict, command: str) -> dict[str, object]:
    """Parsed options -> dotted config keys, in layers that override the experiment file and each other:
    `opts["recovered"]` (a run's params, which compare replays), then --set, then `command`'s table options
    that were given (the named option is the more specific spelling, so it has the last word). Options left
    unset, or given as "" (an MLproject parameter left empty), override nothing."""
    out: dict[str, object] = _set_items(f"{k}={v}" for k, v in (opts.get("recovered") or {}).items())
    out.update(_set_items(opts.get("set") or ()))
    for opt in _options(command):
        value = opts.get(opt.dest or opt.name)
        if opt.key and value not in (None, ""):
            out[opt.key] = value if opt.flag is None else opt.flag
    return out


def resolve(command: str, opts: dict) -> config.Config:
    """The validated config `command` runs with, from its parsed options (click's params by name): defaults,
    the experiment file (--config), then _overrides. Reads no data and writes nothing."""
    return config.load(opts.get("config_path") or None, _overrides(opts, command))


def _click_type(opt: config.Option):
    """A table option's click type: its choices, its range, a file path, or the plain type."""
    if opt.choices:
        return click.Choice(opt.choices)
    if opt.type == "path":
        return click.Path(dir_okay=False)
    if opt.min is not None:
        return (click.IntRange if opt.type is int else click.FloatRange)(min=opt.min, min_open=opt.min_open)
    return opt.type


def stage_options(command: str):
    """Decorator: `command`'s click options, generated from config.OPTIONS, then --set for any config key."""
    def decorate(fn):
        fn = click.option("--set", "set", multiple=True, metavar="KEY=VALUE",
                          help="Any config key, e.g. --set train.lr=0.01.")(fn)
        for opt in reversed(_options(command)):
            decls = (f"--{opt.name.replace('_', '-')}", opt.dest or opt.name)
            if opt.flag is None:
                fn = click.option(*decls, type=_click_type(opt), help=opt.help or None)(fn)
            else:  # a config flag is None when not given, so it leaves the experiment file's value
                fn = click.option(*decls, is_flag=True, default=None if opt.key else False, help=opt.help or None)(fn)
        return fn
    return decorate


MLPROJECT_HEADER = """\
name: reg2cls
# `mlflow run . -e convert` (conda) or `mlflow run . -e convert --env-manager local` (project installed).
# Each entry point is a thin call of the CLI. Every parameter defaults to "", which means "not given":
# the value then comes from the experiment file (-P config=experiments/diabetes.yaml) or the defaults
# in pipeline/config.py, so a parameter never silently overrides the file. Numbers, choices and flags go
# in as `--set key={param}` (click refuses an empty option value), the other parameters as the option itself.
# Generated from the option table (OPTIONS in pipeline/config.py): edit that, then regenerate with
# `python -m pipeline mlproject > MLproject`; tests/test_cli.py checks that the two agree.
conda_env: conda.yaml
"""


def mlproject_param(opt: config.Option) -> str:
    """The MLproject parameter feeding `opt`: named like the option, a flag's after its config field."""
    return opt.key.rpartition(".")[2] if opt.flag is not None and opt.key else opt.name


def mlproject_text() -> str:
    """The MLproject file, rendered from config.OPTIONS: one entry point per stage command (convert also as
    `main`), one string parameter for every option that names the entry point in `mlproject`. A plain string
    option is passed as itself (`--data ''` overrides nothing); a number, choice or flag, which click would
    refuse as "", as `--set key={param}` (an empty `--set key=` overrides nothing either)."""
    lines = [MLPROJECT_HEADER, "entry_points:"]
    noted: set[int] = set()
    for command in config.COMMANDS:
        entry = command.replace("-", "_")
        lines += [f"  {entry}:" + (" &convert" if entry == "convert" else ""), "    parameters:"]
        call = [f"python -m pipeline {command}"]
        for i, opt in enumerate(config.OPTIONS):
            if command not in opt.mlproject:
                continue
            param = mlproject_param(opt)
            line = f'      {param}: {{type: string, default: ""}}'
            if opt.note and i not in noted:
                noted.add(i)
                line = f"{line:<50} # {opt.note}"
            lines.append(line)
            typed = opt.flag is not None or opt.choices or opt.type not in (str, "path")
            call.append(f"--set {opt.key}={{{param}}}" if typed else f"--{opt.name.replace('_', '-')} {{{param}}}")
        lines += ["    command: >-", *_wrap(call, indent=6, width=112), ""]
        if entry == "convert":
            lines += ["  main: *convert", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _wrap(words: list[str], indent: int, width: int) -> list[str]:
    """Words packed into indented lines of at most `width` characters (a YAML folded block joins them)."""
    lines = [" " * indent + words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > width:
            lines.append(" " * indent + word)
        else:
            lines[-1] += " " + word
    return lines


def user_errors(fn):
    """Turn UserError into a one-line error and signals into KILLED runs, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except Terminated:
            click.echo("terminated: open runs were ended as KILLED", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted: open runs were ended as KILLED", err=True)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return wrapper


def _prepare(opts: dict):
    """Config, data and the brought model, each validated before anything is written to MLflow: bad
    input leaves no run and no experiment behind. Returns (config, data, brought model, tracking URI)."""
    cfg = resolve(click.get_current_context().command.name, opts)
    from . import data, tracking

    prepared = data.prepare(cfg.data, cfg.seed)
    s = prepared.summary
    click.echo(f"data: {cfg.data.source}: {s['rows']} rows ({s['rows_dropped_missing_target']} dropped for a missing "
               f"target, {s['features_imputed']} feature values imputed), {s['n_features']} features; "
               f"classes {', '.join(prepared.class_names)}; split {s['train_rows']}/{s['val_rows']}/{s['test_rows']}")
    tracking.setup(opts.get("tracking_uri"))
    from . import stages

    brought = stages.bring(cfg, prepared)  # may read a model from the store, but writes nothing
    tracking.use_experiment(cfg.experiment)
    return cfg, prepared, brought


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reg2cls")
def cli():
    """reg2cls: convert a PyTorch regression model into a classifier and prove which way wins.

    Every run, parameter, metric and model goes to MLflow; browse them with the command `convert` prints.
    """


@cli.command()
@stage_options("convert")
@user_errors
def convert(**opts):
    """Run every stage under one parent run and print the leaderboard."""
    cfg, prepared, brought = _prepare(opts)
    from . import stages, tracking

    result = stages.convert(cfg, prepared, brought, force=opts["force"])
    _print_comparison(cfg, result)
    click.echo(f"Parent run: {result.parent}\nBrowse the runs: {tracking.ui_command(tracking.setup(None))}")


def _print_comparison(cfg, compared) -> None:
    click.echo(f"\nLeaderboard (test split, sorted by {cfg.compare.metric}; * = Pareto front of it vs params):")
    _print_board(compared.board)
    click.echo("\n" + "\n".join(compared.summary))
    click.echo(f"Predict: reg2cls predict --model-uri models:/{compared.registered}@champion --input new.csv "
               "--output predictions.csv")


@cli.command()
@stage_options("baseline")
@user_errors
def baseline(**opts):
    """Train the baseline regressor and log its regression and thresholded metrics."""
    cfg, prepared, brought = _prepare(opts)
    from . import stages

    result = stages.baseline(cfg, prepared, brought, force=opts["force"])
    click.echo(f"baseline run: {result.run_id}")


@cli.command("head-swap")
@stage_options("head-swap")
@user_errors
def head_swap(**opts):
    """Convert a baseline regressor with every head-swap strategy, one nested run each."""
    cfg, prepared, _ = _prepare(opts)
    from . import stages

    source = _input_model(opts["baseline_run"], prepared.split_key, "baseline", option="--baseline-run", exact=True)
    result = stages.head_swap(cfg, prepared, source, force=opts["force"])
    _print_board(stages.leaderboard([result.run_id]))
    click.echo(f"head_swap run: {result.run_id}")


@cli.command()
@stage_options("slim")
@user_errors
def slim(**opts):
    """Make physically smaller classifiers from a converted model, with costs and a Pareto plot."""
    cfg, prepared, _ = _prepare(opts)
    from . import stages

    result = stages.slim(cfg, prepared, _input_model(opts["from_run"], prepared.split_key, "head_swap"), force=opts["force"])
    _print_board(stages.leaderboard([result.run_id]))
    click.echo(f"slim run: {result.run_id}")


@cli.command()
@stage_options("tune")
@user_errors
def tune(**opts):
    """Tune dropout, learning rate and weight decay with Optuna; every trial a run in MLflow."""
    cfg, prepared, _ = _prepare(opts)
    from . import stages, tracking

    source = _input_model(opts["from_run"], prepared.split_key, "slim", "head_swap")
    result = stages.tune(cfg, prepared, source, force=True)  # each call adds trials to the study
    _print_board(stages.leaderboard([], [result.run_id]))
    storage = tracking.get_run(result.run_id).data.tags["optuna_storage"]
    click.echo(f"tune run: {result.run_id}\nBrowse the study: optuna-dashboard {storage}")


@cli.command()
@stage_options("compare")
@user_errors
def compare(**opts):
    """Leaderboard, report.html and the registered champion, from the runs already in the store."""
    from . import tracking

    if opts["tracking_uri"]:
        tracking.setup(opts["tracking_uri"])
    run_id = opts["run_id"] or tracking.latest_parent(opts["experiment"] or "reg2cls")
    if not run_id:
        raise UserError(f"no finished convert run in experiment '{opts['experiment'] or 'reg2cls'}'; pass --run-id or --experiment")
    # the parent's own config: the same data, split and classes
    params = config.recovered(tracking.get_run(run_id).data.params)
    opts["recovered"] = params  # beneath the options given here (see _overrides)
    opts["experiment"] = params.get("experiment")
    cfg, prepared, _ = _prepare(opts)
    from . import stages

    _print_comparison(cfg, stages.compare(cfg, prepared, run_id))


@cli.command()
@click.option("--model-uri", required=True, help="e.g. models:/reg2cls-reg2cls@champion or runs:/<id>/champion")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help="CSV or Parquet with the raw columns.")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@user_errors
def predict(model_uri, input_path, output_path, tracking_uri):
    """Classify a table with a champion: adds `label` and one `proba_<class>` column per class."""
    from . import data, registry, tracking

    tracking.setup(tracking_uri)
    frame = data.load(input_path)
    model, columns = registry.load_champion(model_uri)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{input_path} is missing column(s) {', '.join(missing)} that the model needs")
    extra = [c for c in frame.columns if c not in columns]
    if extra:
        click.echo(f"warning: ignoring column(s) the model does not use: {', '.join(map(str, extra))}", err=True)
    predictions = model.predict(frame[columns])
    predictions.to_csv(output_path, index=False)
    counts = predictions["label"].value_counts()
    click.echo(f"wrote {len(predictions)} predictions to {output_path}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _input_model(from_run: str | None, split_key: str, *stages_in_order: str, option: str = "--from-run",
                 exact: bool = False):
    """The model a stage builds on: `from_run`, else the newest finished run of the first of
    `stages_in_order` that has one on this split. A stage run stands for the model it chose (its
    `model_run` tag); with `exact` the run must itself be of the (one) stage given."""
    from . import stages, tracking

    run_id = from_run or next((r for s in stages_in_order if (r := tracking.latest_run(s, split_key))), None)
    if not run_id:
        raise UserError(f"no finished {' or '.join(stages_in_order)} run on this data, split and classes in this "
                        f"experiment; run `reg2cls convert` (or that stage) with the same options first, or pass {option}")
    if exact:
        return stages.StageResult(run_id, tracking.load_run_model(run_id, stages_in_order[0], split_key), run_id)
    return stages.stage_output(run_id, split_key)


def _print_board(board) -> None:
    from .stages import display

    click.echo(display(board).to_string(index=False))


@cli.command(hidden=True)
def mlproject():
    """Print the MLproject file rendered from the option table: python -m pipeline mlproject > MLproject"""
    click.echo(mlproject_text(), nl=False)


def main() -> None:
    import os

    # the console script owns its process: MLflow's artifact progress bars would interleave with our lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cli(prog_name="reg2cls")
