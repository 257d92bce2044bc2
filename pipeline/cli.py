"""The `reg2cls` command line: one thin command per stage, plus `convert` which runs them all.

Only click and the config module are imported at start-up; torch, pandas and mlflow load inside the
commands, so `--help` and argument errors return at once. The stage commands' options come from the
option table (`config.OPTIONS`), and so does the MLproject file (`mlproject_text`). A `UserError`
becomes one line on stderr and exit code 1; Ctrl+C and SIGTERM end the open MLflow runs as KILLED and
exit 130 / 143.
"""
from __future__ import annotations

import functools
import gc
import os
import signal
import sys

import click

from . import config, stop
from .config import UserError, registered_name

_OWN_PROCESS = False  # the console script's process (main), not a caller's that invokes the CLI in its own


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so open runs unwind and end KILLED like on Ctrl+C."""


def _on_sigterm(signum, frame):
    stop.request(Terminated)  # honoured at the next epoch should this raise be swallowed (stop.py)
    raise Terminated()


def _on_sigint(signum, frame):
    stop.request(KeyboardInterrupt)
    raise KeyboardInterrupt


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
            decls = (f"--{opt.name.replace('_', '-')}", *([opt.short] if opt.short else []), opt.dest or opt.name)
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
    """Turn UserError, and the known kinds of failure at a boundary (`boundary_error`: the user's model code,
    the store, a missing run, the disk, memory), into a one-line error with exit code 1, and signals into
    KILLED runs. The runs open at the time have already ended FAILED or KILLED (tracking.start). Any other
    exception is a bug and keeps its traceback; REG2CLS_TRACEBACK=1 keeps it for the known kinds too."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _on_sigterm), signal.signal(signal.SIGINT, _on_sigint)
        process_exit = os._exit
        os._exit = _exit_guard(process_exit)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except SystemExit as e:  # the user's code ended the process: its runs have ended FAILED on the way out
            if os.environ.get("REG2CLS_TRACEBACK"):
                raise
            raise click.ClickException(exit_error(e)) from None
        except Terminated:
            click.echo("terminated: open runs were ended as KILLED", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted: open runs were ended as KILLED", err=True)
            sys.exit(130)
        except Exception as e:
            message = boundary_error(e)
            if message is None or os.environ.get("REG2CLS_TRACEBACK"):
                raise
            raise click.ClickException(message) from None
        finally:
            os._exit = process_exit
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
            stop.clear()  # handled: code run in this process after the command trains again
    return wrapper


def _user_files() -> set[str]:
    """The model files the user brought (--model file.py:Class), as imported (model.import_class)."""
    return {getattr(m, "__file__", None) for name, m in list(sys.modules.items()) if name.startswith("reg2cls_user_")}


def _exit_guard(process_exit):
    """os._exit for the duration of a command: called from the user's model file, it raises SystemExit instead,
    so the command's runs end FAILED and it says where (`exit_error`); anyone else's call ends the process."""
    def guarded(code):
        caller = sys._getframe(1)
        if caller.f_code.co_filename in _user_files():
            e = SystemExit(code)
            e.reg2cls_where = f"os._exit({code}) at {caller.f_code.co_filename}, line {caller.f_lineno}, in " \
                              f"{caller.f_code.co_name}"
            raise e
        process_exit(code)
    return guarded


def exit_error(e: SystemExit) -> str:
    """One line for a SystemExit that reached a command: code it ran (the user's model, in this process or a
    worker) asked the process to end."""
    where = getattr(e, "reg2cls_where", None) or f"sys.exit({e.code!r}) at {config.raised_at(e) or 'an unknown line'}"
    return (f"the model code ended the process with {where}; every open run was ended FAILED; raise an exception "
            "instead of exiting, or fix the model")


def boundary_error(e: Exception) -> str | None:
    """One line for an exception that a boundary raised for a reason outside reg2cls's code, saying what
    failed and what to do; None for anything else (a bug: it keeps its traceback)."""
    import errno
    import traceback

    user_files = _user_files()
    user = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in user_files]
    if user:  # raised inside the model file the user brought (--model file.py:Class)
        f = user[-1]
        return (f"your model code raised {type(e).__name__}: {config.first_line(e)} ({f.filename}, line {f.lineno}, "
                f"in {f.name}); fix the model or its --model-kwargs")
    text = str(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
            isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())):
        return (f"out of memory ({type(e).__name__}: {config.first_line(e)[:200]}); use a smaller model.width, "
                "train.batch_size or data, or --device cpu")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                                              errno.EIO):
        where = f" ({e.filename})" if e.filename else ""
        return f"the file system refused: {e.strerror}{where}; free some space or check the permissions"
    uri = sys.modules["mlflow"].get_tracking_uri() if "mlflow" in sys.modules else "?"
    if type(e).__name__ == "MlflowException":
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return f"{config.first_line(e)} in the tracking store {uri}; check the run id or model name"
        if any(s in text for s in ("database is locked", "disk I/O error", "malformed", "database or disk is full",
                                   "out-of-date database schema", "API request to", "Max retries exceeded")):
            return f"the tracking store {uri} failed: {config.first_line(e)[:300]}"
    if type(e).__module__.startswith(("sqlalchemy", "sqlite3")) and type(e).__name__ in ("OperationalError",
                                                                                         "DatabaseError"):
        return (f"a database failed ({config.first_line(e)[:300]}); check that its file or server is reachable "
                "and intact")
    return None


def _prepare(opts: dict):
    """Config, data and the brought model, each validated before anything is written to MLflow: bad
    input leaves no run and no experiment behind. Returns (config, splits, brought model): one split, or
    one per outer fold when cross-fitting (`--folds`); commands other than convert and compare use the first.

    In the console script's own process the garbage collector is off meanwhile, and what the imports (some
    900,000 objects of torch, MLflow and scikit-learn), the store and the data made is then frozen: they live as
    long as the command, so no collection walks them again, neither during the stages nor at the end
    (_exit_quickly). Collections during the imports walked ever more of those objects: most of a second of this
    start-up (bench/bench_startup.py). The garbage in reference cycles they left (about 10 MiB) stays with them;
    reading the data leaves none (0 objects for diamonds, and for 300,000 synthetic rows). A caller that invokes
    the CLI in its own process (the tests) keeps its collector as it is."""
    if not _OWN_PROCESS:
        return _read_inputs(opts)
    gc.disable()
    try:
        return _read_inputs(opts)
    finally:
        gc.freeze()
        gc.enable()


def _read_inputs(opts: dict):
    """`_prepare`'s work."""
    command = click.get_current_context().command.name
    cfg = resolve(command, opts)
    if command in POOLED:  # its workers' fork server imports from now on, beside this process's imports
        from . import jobs

        jobs.start_forkserver(jobs.count(cfg.train.jobs), WORKER_IMPORTS)
    from . import backend, data, liveness, progress, tracking

    progress.set_quiet(opts.get("quiet"))
    progress.set_verbose(opts.get("verbose"))
    from .train import resolve_device

    problem = liveness.check_env()
    if problem:
        raise UserError(problem)
    resolve_device(cfg.train.device)  # --device cuda without a GPU: refused before any run opens
    from .train import use_threads

    use_threads(cfg.train.threads)

    splits = data.prepare_splits(cfg.data, cfg.seed)
    s = splits[0].summary
    layout = (f"train/val/test {s['train_rows']}/{s['val_rows']}/{s['test_rows']}" if len(splits) == 1 else
              f"{len(splits)} folds of {s['train_rows']}/{s['val_rows']}/{s['test_rows']}")
    text = f" ({s['strings_as_missing']} of them text)" if s.get("strings_as_missing") else ""
    done = [f"{s['rows_dropped_missing_target']} rows dropped (no target)" if s["rows_dropped_missing_target"] else "",
            f"{s['features_imputed']} values imputed{text}" if s["features_imputed"] else ""]
    progress.write(f"data: {cfg.data.source}, {s['rows']} rows x {s['n_features']} features"
                   + "".join(f"; {d}" for d in done if d)
                   + f"; classes {', '.join(splits[0].class_names)}; {layout}")
    rows = len(splits[0].train.x)
    cfg = _resolve_width(_resolve_batch(cfg, rows), rows)
    backend.setup(opts.get("tracking_uri"))  # opens the store: a bad URI or store path stops here
    from . import stages

    brought = stages.bring(cfg, splits[0])  # may read a model from the store, but writes nothing
    backend.use_experiment(cfg.experiment)
    ended = tracking.end_orphans()
    if ended:
        click.echo(f"store: ended {ended} run(s) left RUNNING by a process that died "
                   "(status KILLED, tag killed_reason)")
    if command in ("convert", "compare"):  # refuse now what compare would refuse after every stage ran
        from . import registry

        name = registered_name(cfg, tracking.current_experiment_name())
        conflict = registry.champion_conflict(name, registry.signature_for(splits[0].preprocessor,
                                                                           splits[0].class_names))
        if conflict:
            raise UserError(conflict)
    return cfg, splits, brought


POOLED = ("convert", "head-swap", "slim")  # the commands that train side by side in worker processes (`_workers`)
# what the workers' fork server imports once for all of them: where the functions they run live, and MLflow's
# database store, which every worker logs its runs to (0.6 s each on its first run). Not scikit-learn: runs are
# scored without it (metrics.py); the one worker that fits the reference imports it then
WORKER_IMPORTS = (f"{__package__}.stages", "mlflow.store.tracking.sqlalchemy_store")


def _workers(cfg):
    """The worker processes (`--jobs`) that train strategies and variants side by side for this command."""
    from . import jobs

    return jobs.workers(jobs.count(cfg.train.jobs), WORKER_IMPORTS)


def _resolve_width(cfg: config.Config, train_rows: int) -> config.Config:
    """`model.width` auto (0) resolved once for the pipeline's own MLP (model.mlp_width), before any run opens:
    every fold gets the same architecture (their training rows differ by one, and the rule has a cut at 500), and
    the runs log the width they trained with as their param `model.width`. A brought model keeps 0: not used."""
    import dataclasses

    from .model import mlp_width

    if cfg.model.width or cfg.user_model.spec or cfg.user_model.uri:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=mlp_width(0, train_rows)))


def _resolve_batch(cfg: config.Config, train_rows: int) -> config.Config:
    """`train.batch_size` auto and `train.lr` resolved for `train_rows` (train.batch_and_lr) before any run
    opens, so every run logs the batch size and learning rate it trained with as its params."""
    import dataclasses

    from . import progress
    from .train import batch_and_lr

    t = cfg.train
    batch, lr = batch_and_lr(t.batch_size, t.lr, train_rows, t.max_steps_per_epoch, t.lr_scaling)
    if str(t.batch_size).strip().lower() == "auto" and batch != 64:
        progress.write(f"train: batch {batch} for {train_rows} training rows (at most {t.max_steps_per_epoch} steps "
                       f"an epoch), lr {t.lr:g} -> {lr:.3g} ({t.lr_scaling} rule); --batch-size N sets it")
    return dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=str(batch), lr=lr))


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
    cfg, splits, brought = _prepare(opts)
    from . import backend, stages, tracking

    with _workers(cfg):
        result = stages.convert(cfg, splits, brought, force=opts["force"])
    _print_comparison(cfg, result)
    click.echo(tracking.run_link(backend.setup(None), result.parent))


HEADLINES = ("Warning:", "Verdict:", "Champion:")  # the verdict's sentences a default run prints


def _print_comparison(cfg, compared) -> None:
    """The answer first (the verdict and the champion, wrapped to the terminal's usual width; under --verbose every
    sentence of the summary), then the leaderboard within 100 columns (under --verbose every row; else the rows
    the verdict names and the best few on validation), then how to use the champion."""
    import shlex
    import textwrap

    from . import progress
    from .stages import display

    click.echo("")
    for line in compared.summary:
        # the data line said where the data came from and the Predict line names the model; the nested procedure
        # and the references have rows in the leaderboard, tuning its stage line: their sentences wait for -v
        if line.startswith(HEADLINES) or progress.verbose() and not line.startswith(("Data:", "Parent run")):
            click.echo(textwrap.fill(line, width=progress.WIDTH, subsequent_indent="    "))
    board = display(compared.board, cfg.compare.metric)
    shown = board if progress.verbose() else board[~board["role"].isin(["", "≈ best"]) | (board.index < 3)]
    click.echo(f"\nLeaderboard (chosen on {cfg.compare.metric}; test F1: macro-F1, 95% interval; vs threshold: "
               "simultaneous):")
    click.echo(shown.to_string(index=False))
    if len(shown) < len(board):
        click.echo(f"... {len(board) - len(shown)} more rows: --verbose, or leaderboard.md on the convert run")
    if compared.registered:
        uri = shlex.quote(f"models:/{compared.registered}@champion")  # a name with a space stays one argument
        click.echo(f"Predict: reg2cls predict --model-uri {uri} --input new.csv --output predictions.csv")


@cli.command()
@stage_options("baseline")
@user_errors
def baseline(**opts):
    """Train the baseline regressor and log its regression and thresholded metrics."""
    cfg, (prepared, *_), brought = _prepare(opts)
    from . import stages

    result = stages.baseline(cfg, prepared, brought, force=opts["force"])
    click.echo(f"baseline run: {result.run_id}")


@cli.command("head-swap")
@stage_options("head-swap")
@user_errors
def head_swap(**opts):
    """Convert a baseline regressor with every head-swap strategy, one nested run each."""
    cfg, (prepared, *_), _ = _prepare(opts)
    from . import stages

    source = _input_model(opts["baseline_run"], prepared.split_key, "baseline", option="--baseline-run", exact=True)
    with _workers(cfg):
        result = stages.head_swap(cfg, prepared, source, force=opts["force"])
    _print_board(stages.leaderboard(stages.strategy_runs(result.run_id), seed=cfg.seed))
    click.echo(f"head_swap run: {result.run_id}")


@cli.command()
@stage_options("slim")
@user_errors
def slim(**opts):
    """Make physically smaller classifiers from a converted model, with costs and a Pareto plot."""
    cfg, (prepared, *_), _ = _prepare(opts)
    from . import stages

    source = _input_model(opts["from_run"], prepared.split_key, "head_swap")
    with _workers(cfg):
        result = stages.slim(cfg, prepared, source, force=opts["force"])
    _print_board(stages.leaderboard(stages.strategy_runs(result.run_id), seed=cfg.seed))
    click.echo(f"slim run: {result.run_id}")


@cli.command()
@stage_options("tune")
@user_errors
def tune(**opts):
    """Tune dropout, learning rate and weight decay with Optuna; every trial a run in MLflow."""
    cfg, (prepared, *_), _ = _prepare(opts)
    from . import stages, tracking

    source = _input_model(opts["from_run"], prepared.split_key, "slim", "head_swap")
    result = stages.tune(cfg, prepared, source, force=True)  # each call adds trials to the study
    # the tuned model's row; when no trial beat the untuned model, that model's own row (the stage said so)
    _print_board(stages.leaderboard([tracking.get_run(result.model_run)], seed=cfg.seed))
    storage = tracking.get_run(result.run_id).data.tags["optuna_storage"]
    click.echo(f"tune run: {result.run_id}\nBrowse the study: optuna-dashboard {storage}")


@cli.command()
@stage_options("compare")
@user_errors
def compare(**opts):
    """Leaderboard, report.html and the registered champion, from the runs already in the store."""
    from . import backend, tracking

    backend.setup(opts["tracking_uri"])  # opened first, under its lock: a convert may be creating it
    run_id = opts["run_id"] or tracking.latest_parent(opts["experiment"] or "reg2cls")
    if not run_id:
        raise UserError(f"no finished convert run in experiment '{opts['experiment'] or 'reg2cls'}'; "
                        "pass --run-id or --experiment")
    # the parent's own config: the same data, split and classes
    params = config.recovered(tracking.get_run(run_id).data.params)
    opts["recovered"] = params  # beneath the options given here (see _overrides)
    opts["experiment"] = params.get("experiment")
    cfg, splits, _ = _prepare(opts)
    from . import stages

    _print_comparison(cfg, stages.compare(cfg, splits, run_id))


@cli.command()
@click.option("--model-uri", required=True, help="e.g. models:/reg2cls-diabetes@champion or runs:/<id>/champion")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="CSV or Parquet with the raw columns.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="CSV to write (default: standard output). Never the --input file.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@user_errors
def predict(model_uri, input_path, output_path, tracking_uri):
    """Classify a table with a champion: `label` (the class its decision rule picks) and one `proba_<class>`
    column per class, as CSV on standard output or in --output; what was done is said on standard error."""
    from pathlib import Path

    from . import backend, data, registry

    if output_path:
        _check_output(Path(input_path), Path(output_path))
    backend.setup(tracking_uri)
    frame = data.load(input_path)
    model, columns, numeric = registry.load_champion(model_uri)
    predictions = _predictions(model, frame, columns, numeric, input_path)
    if output_path:
        try:
            predictions.to_csv(output_path, index=False)
        except OSError as e:
            raise UserError(f"cannot write {output_path}: {e.strerror}") from None
    else:
        predictions.to_csv(sys.stdout, index=False)
    counts = predictions["label"].value_counts()
    click.echo(f"wrote {len(predictions)} predictions to {output_path or 'standard output'}"
               + (": " if len(counts) else "") + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)
    proba = predictions.filter(like="proba_").to_numpy()
    if len(proba):
        names = [c[len("proba_"):] for c in predictions.columns if c.startswith("proba_")]
        moved = int((predictions["label"].to_numpy() != [names[i] for i in proba.argmax(axis=1)]).sum())
        if moved:
            click.echo(f"note: for {moved} of {len(proba)} rows the label is not the most probable class: the "
                       "champion's decision rule (offsets fitted on validation to raise macro-F1) chose it", err=True)


def _check_output(input_path, output_path) -> None:
    """--output may not be the input (it would replace the table with its predictions) and needs its folder."""
    folder = output_path.resolve().parent
    if not folder.is_dir():
        raise UserError(f"the folder of --output {output_path} does not exist; create it or write elsewhere")
    same = output_path.resolve() == input_path.resolve() or (
        output_path.exists() and input_path.exists() and os.path.samefile(output_path, input_path))
    if same:
        raise UserError(f"--output {output_path} is the --input file, which writing would replace; "
                        "write the predictions to another file (or leave out --output for standard output)")


def _predictions(model, frame, columns: list[str], numeric: list[str], input_path: str):
    """The champion's answer for `frame`: its columns checked and cleaned as in training (serving.clean), any
    row it cannot score refused in one line."""
    import numpy as np
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from . import serving

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{input_path} is missing column(s) {', '.join(missing)} that the model needs")
    extra = [c for c in frame.columns if c not in columns]
    if extra:
        click.echo(f"warning: ignoring column(s) the model does not use: {', '.join(map(str, extra))}", err=True)
    try:
        frame, n_text, n_inf = serving.clean(frame[columns], numeric)
    except ValueError as e:
        raise UserError(f"{input_path}: {e}") from None
    if n_text or n_inf:
        click.echo(f"warning: {n_text} text value(s) in numeric columns and {n_inf} infinite value(s) treated as "
                   "missing (imputed with the training medians)", err=True)
    if len(frame) == 0:  # header only: an empty answer in the champion's output columns
        return pd.DataFrame(columns=model.metadata.get_output_schema().input_names())
    try:
        predictions = model.predict(frame)
    except MlflowException as e:  # the champion's one line (serving.Champion.predict), or MLflow's schema check
        raise UserError(f"{input_path}: {config.first_line(e)}") from None
    unscored = np.flatnonzero(predictions.filter(like="proba_").isna().any(axis=1).to_numpy())
    if len(unscored):  # a champion registered before serving.check_range: its NaN answers are refused here
        raise UserError(f"{input_path}: the champion could not score row(s) {', '.join(map(str, unscored[:5]))} "
                        "(values too large once scaled as in training); rescale or drop those rows")
    return predictions


@cli.command()
@click.option("--run-id", required=True, help="A strategy, variant, trial or tuned run (head_swap, slim, tune).")
@click.option("--name", help="The model's name in the run (default: its strategy, e.g. finetune, width_0_5).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@user_errors
def export(run_id, name, tracking_uri):
    """Make a full servable MLflow model of any run from the state it kept: the raw table in, `label` and
    `proba_<class>` out, as the champion; for `reg2cls predict`, `mlflow models serve` or the registry."""
    from . import backend, registry

    backend.setup(tracking_uri)
    uri = registry.export(run_id, name)
    click.echo(f"exported run {run_id} as {uri}\n"
               f"predict: reg2cls predict --model-uri {uri} --input new.csv --output predictions.csv\n"
               f"serve:   mlflow models serve -m {uri} --env-manager local --host 127.0.0.1 --port 5001")


def _input_model(from_run: str | None, split_key: str, *stages_in_order: str, option: str = "--from-run",
                 exact: bool = False):
    """The model a stage builds on: `from_run`, else the newest finished run of the first of
    `stages_in_order` that has one on this split. A stage run stands for the model it chose (its
    `model_run` tag); with `exact` the run must itself be of the (one) stage given."""
    from . import checkpoint, stages, tracking

    run_id = from_run or next((r for s in stages_in_order if (r := tracking.latest_run(s, split_key))), None)
    if not run_id:
        raise UserError(f"no finished {' or '.join(stages_in_order)} run on this data, split and classes in this "
                        "experiment; run `reg2cls convert` (or that stage) with the same options first, "
                        f"or pass {option}")
    if exact:
        return stages.StageResult(run_id, checkpoint.load_run_model(run_id, stages_in_order[0], split_key), run_id)
    return stages.stage_output(run_id, split_key)


def _print_board(board, metric: str = "val/f1_macro") -> None:
    from .stages import display

    click.echo(display(board, metric).to_string(index=False))


@cli.command(hidden=True)
def mlproject():
    """Print the MLproject file rendered from the option table: python -m pipeline mlproject > MLproject"""
    click.echo(mlproject_text(), nl=False)


def main() -> None:
    import atexit

    global _OWN_PROCESS
    _OWN_PROCESS = True

    # the console script owns its process: MLflow's artifact progress bars would interleave with our lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's INFO lines (creating tables, creating the experiment) are its business, not the user's answer
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    atexit.register(_exit_quickly)  # registered before the libraries' handlers: runs after all of them
    cli(prog_name="reg2cls")


def _exit_quickly() -> None:
    """The process's last act before the interpreter tears itself down: the garbage in reference cycles
    finalized, every database engine closed (the last connection to an SQLite store folds its write-ahead log
    back into the file and removes the -wal and -shm files beside it), and then every object left out of the
    interpreter's final garbage collections (`gc.freeze`): they walked some 900,000 objects of torch, MLflow
    and scikit-learn, which every command waited for, while the process's end frees them anyway. A command that
    went through `_prepare` froze its imports there already, so the collection here walks only what came after."""
    import contextlib

    gc.collect()
    if "sqlalchemy" in sys.modules:  # MLflow's stores and Optuna's storages, which keep theirs open
        from sqlalchemy.engine import Engine

        gc.unfreeze()  # the frozen objects back in view for the search (no collection walks them again)
        # type(), not isinstance: an object's __class__ may be a property (torch's deprecated reduce_op warns)
        for engine in [o for o in gc.get_objects() if issubclass(type(o), Engine)]:
            with contextlib.suppress(Exception):  # a store that failed already said so, in one line
                engine.dispose()
    gc.freeze()
