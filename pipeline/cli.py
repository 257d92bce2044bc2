"""The `reg2cls` command line: one thin command per stage, plus `convert` which runs them all.

Only click and the config module are imported at start-up; torch, pandas and mlflow load inside the
commands, so `--help` and argument errors return at once. A `UserError` becomes one line on stderr
and exit code 1; Ctrl+C and SIGTERM end the open MLflow runs as KILLED and exit 130 / 143.
"""
from __future__ import annotations

import functools
import signal
import sys

import click

from . import config
from .config import DEVICES, UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so open runs unwind and end KILLED like on Ctrl+C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _overrides(opts: dict) -> dict[str, object]:
    """CLI options -> dotted config keys; options left unset do not override the experiment file."""
    mapping = {"data": "data.source", "target": "data.target", "classes": "data.classes",
               "strategies": "head_swap.strategies", "epochs": "train.epochs", "batch_size": "train.batch_size",
               "lr": "train.lr", "device": "train.device", "seed": "seed", "seeds": "seeds", "experiment": "experiment",
               "model": "user_model.spec", "model_kwargs": "user_model.kwargs", "checkpoint": "user_model.checkpoint",
               "model_uri": "user_model.uri", "head": "user_model.head", "features": "data.features",
               "scaling": "data.scaling", "target_scaling": "data.target_scaling"}
    # an empty string (an MLproject parameter left at "") means "not given"
    out = {mapping[k]: v for k, v in opts.items() if k in mapping and v not in (None, "")}
    if opts.get("retrain"):
        out["user_model.retrain"] = True
    for item in opts.get("set") or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.01")
        if value.strip():  # `--set key=` (an MLproject parameter left empty) keeps the file's or default value
            out[key.strip()] = value.strip()
    return out


def common_options(fn):
    """The options every stage command shares."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Experiment YAML file (overrides only)."),
        click.option("--data", help="CSV/Parquet path, builtin:diabetes (default) or synthetic:friedman1?rows=N."),
        click.option("--target", help="The continuous target column (default: target)."),
        click.option("--classes", help="quantile:K (default quantile:3), thresholds:a,b,... or label:COL."),
        click.option("--features", help="Feature columns in the model's order, comma-separated (default: all but the target)."),
        click.option("--model", help="Bring your regressor: path/to/file.py:ClassName or package.module:ClassName."),
        click.option("--model-kwargs", help="JSON keyword arguments for --model's class, e.g. '{\"hidden_dim\": 50}'."),
        click.option("--checkpoint", help="state_dict file for --model (loaded with weights_only=True)."),
        click.option("--model-uri", help="Or a PyTorch model in MLflow: runs:/<id>/model or models:/<name>/<version>."),
        click.option("--retrain", is_flag=True, default=None, help="Train the brought model on the data first."),
        click.option("--head", help="Dotted module name of the regression head (default: found by a forward pass)."),
        click.option("--scaling", type=click.Choice(config.SCALINGS), help="Whether the model expects standardised features (default standard)."),
        click.option("--target-scaling", type=click.Choice(config.SCALINGS), help="Whether the model outputs the standardised target (default standard)."),
        click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs per training run."),
        click.option("--batch-size", type=click.IntRange(min=2)),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate."),
        click.option("--seed", type=click.IntRange(min=0), help="Seed for the split and every training run."),
        click.option("--seeds", type=click.IntRange(min=1), help="Repeat every trained strategy with this many seeds (mean ± std)."),
        click.option("--device", type=click.Choice(DEVICES), help="auto (default): CUDA when available."),
        click.option("--experiment", help="MLflow experiment name (default: reg2cls)."),
        click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
        click.option("--set", "set", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. --set train.lr=0.01."),
        click.option("--force", is_flag=True, help="Re-run stages even when a finished run with the same inputs exists."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


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
    cfg = config.load(opts.get("config_path") or None, _overrides(opts))
    from . import data, tracking

    prepared = data.prepare(cfg.data, cfg.seed)
    s = prepared.summary
    click.echo(f"data: {cfg.data.source}: {s['rows']} rows ({s['rows_dropped_missing_target']} dropped for a missing "
               f"target, {s['features_imputed']} feature values imputed), {s['n_features']} features; "
               f"classes {', '.join(prepared.class_names)}; split {s['train_rows']}/{s['val_rows']}/{s['test_rows']}")
    uri = tracking.setup(opts.get("tracking_uri"))
    from . import stages

    brought = stages.bring(cfg, prepared)  # may read a model from the store, but writes nothing
    tracking.use_experiment(cfg.experiment)
    return cfg, prepared, brought, uri


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reg2cls")
def cli():
    """reg2cls: convert a PyTorch regression model into a classifier and prove which way wins.

    Every run, parameter, metric and model goes to MLflow; browse them with the command `convert` prints.
    """


@cli.command()
@common_options
@click.option("--strategies", help="Comma-separated subset of: " + ",".join(config.STRATEGIES))
@user_errors
def convert(**opts):
    """Run every stage under one parent run and print the leaderboard."""
    cfg, prepared, brought, uri = _prepare(opts)
    from . import stages, tracking

    result = stages.convert(cfg, prepared, force=opts["force"], brought=brought)
    _print_comparison(cfg, result.details["leaderboard"], result.details["compare"])
    click.echo(f"Parent run: {result.run_id}\nBrowse the runs: {tracking.ui_command(uri)}")


def _print_comparison(cfg, board, compared) -> None:
    click.echo(f"\nLeaderboard (test split, sorted by {cfg.compare.metric}; * = Pareto front of it vs params):")
    _print_board(board)
    if compared is not None:
        click.echo("\n" + "\n".join(compared.details["summary"]))
        name = compared.details["registered"]
        click.echo(f"Predict: reg2cls predict --model-uri models:/{name}@champion --input new.csv --output predictions.csv")


@cli.command()
@common_options
@user_errors
def baseline(**opts):
    """Train the baseline regressor and log its regression and thresholded metrics."""
    cfg, prepared, brought, uri = _prepare(opts)
    from . import stages

    result = stages.baseline(cfg, prepared, force=opts["force"], brought=brought)
    click.echo(f"baseline run: {result.run_id}")


@cli.command("head-swap")
@common_options
@click.option("--strategies", help="Comma-separated subset of: " + ",".join(config.STRATEGIES))
@click.option("--baseline-run", help="Run id of a finished baseline run (default: the newest one on the same data).")
@user_errors
def head_swap(**opts):
    """Convert a baseline regressor with every head-swap strategy, one nested run each."""
    cfg, prepared, _, uri = _prepare(opts)
    from . import stages

    prev = _input_model(opts["baseline_run"], prepared.split_key, "baseline", option="--baseline-run", exact=True)
    result = stages.head_swap(cfg, prepared, prev, force=opts["force"])
    _print_board(stages.leaderboard([result.run_id]))
    click.echo(f"head_swap run: {result.run_id}")


@cli.command()
@common_options
@click.option("--from-run", help="A head_swap stage run (its best strategy) or any run with a reg2cls model "
                                  "(default: the newest head_swap stage run on the same split).")
@click.option("--keep-ratios", help="Share of hidden units each width variant keeps, e.g. 0.75,0.5,0.25.")
@click.option("--distill", is_flag=True, default=None, help="Also train every variant on the unslimmed model's soft labels.")
@user_errors
def slim(**opts):
    """Make physically smaller classifiers from a converted model, with costs and a Pareto plot."""
    if opts["keep_ratios"]:
        opts["set"] = (*opts["set"], f"slim.keep_ratios={opts['keep_ratios']}")
    if opts["distill"]:
        opts["set"] = (*opts["set"], "slim.distill=true")
    cfg, prepared, _, uri = _prepare(opts)
    from . import stages

    result = stages.slim(cfg, prepared, _input_model(opts["from_run"], prepared.split_key, "head_swap"), force=opts["force"])
    _print_board(stages.leaderboard([result.run_id]))
    click.echo(f"slim run: {result.run_id}")


@cli.command()
@common_options
@click.option("--from-run", help="A run with a reg2cls classifier, or a slim/head_swap stage run (its chosen model); "
                                  "default: the newest slim, else head_swap, stage run on the same split.")
@click.option("--n-trials", type=click.IntRange(min=0), help="New trials to add to the study (default 8).")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop starting trials after this many seconds.")
@click.option("--metric", type=click.Choice(sorted(config.TUNE_METRICS)), help="Objective (default val/f1_macro).")
@click.option("--pruner", type=click.Choice(config.PRUNERS), help="Pruner (default median).")
@click.option("--storage", help="Optuna storage URL (default: sqlite optuna.db next to the MLflow store).")
@click.option("--study-name", help="Default: <experiment>-<architecture hash>-<split key>.")
@click.option("--workers", type=click.IntRange(min=1), help="Local worker processes, one torch thread each.")
@user_errors
def tune(**opts):
    """Tune dropout, learning rate and weight decay with Optuna; every trial a run in MLflow."""
    names = ("n_trials", "timeout", "metric", "pruner", "storage", "study_name", "workers")
    opts["set"] = (*opts["set"], *(f"tune.{key}={opts[key]}" for key in names if opts[key] not in (None, "")))
    cfg, prepared, _, uri = _prepare(opts)
    from . import stages

    prev = _input_model(opts["from_run"], prepared.split_key, "slim", "head_swap")
    result = stages.tune(cfg, prepared, prev, force=True)
    _print_board(stages.leaderboard([], [result.run_id]))
    click.echo(f"tune run: {result.run_id}\nBrowse the study: optuna-dashboard {result.details['storage']}")


@cli.command()
@common_options
@click.option("--run-id", help="The convert (parent) run to compare (default: the newest finished one).")
@click.option("--metric", type=click.Choice(config.COMPARE_METRICS), help="Sorts the board and picks the champion.")
@click.option("--no-reference", is_flag=True, default=None, help="Leave out the HistGradientBoosting reference row.")
@click.option("--register", help="Registered model name for the champion (default reg2cls-<experiment>).")
@user_errors
def compare(**opts):
    """Leaderboard, report.html and the registered champion, from the runs already in the store."""
    from . import tracking

    if opts["tracking_uri"]:
        tracking.setup(opts["tracking_uri"])
    run_id = opts["run_id"] or tracking.latest_parent(opts["experiment"] or "reg2cls")
    if not run_id:
        raise UserError(f"no finished convert run in experiment '{opts['experiment'] or 'reg2cls'}'; pass --run-id or --experiment")
    params = tracking.run_params(run_id)  # the parent's own config: the same data, split and classes
    opts["set"] = (*(f"{k}={v}" for k, v in params.items()), *opts["set"],
                   *(f"compare.{k}={opts[o]}" for o, k in (("metric", "metric"), ("register", "register")) if opts[o]))
    if opts["no_reference"]:
        opts["set"] = (*opts["set"], "compare.reference=false")
    opts["experiment"] = params.get("experiment")
    cfg, prepared, _, uri = _prepare(opts)
    from . import stages

    result = stages.compare(cfg, prepared, stages.StageResult(run_id))
    _print_comparison(cfg, result.details["leaderboard"], result)


@cli.command()
@click.option("--model-uri", required=True, help="e.g. models:/reg2cls-reg2cls@champion or runs:/<id>/champion")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help="CSV or Parquet with the raw columns.")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@user_errors
def predict(model_uri, input_path, output_path, tracking_uri):
    """Classify a table with a champion: adds `label` and one `proba_<class>` column per class."""
    from . import data, tracking

    tracking.setup(tracking_uri)
    frame = data.load(input_path)
    model, columns = tracking.load_pyfunc(model_uri)
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
    `stages_in_order` that has one on this split. A stage run stands for the model it chose; with
    `exact` the run must itself be of the (one) stage given."""
    from . import stages, tracking

    run_id = from_run or next((r for s in stages_in_order if (r := tracking.latest_run(s, split_key))), None)
    if not run_id:
        raise UserError(f"no finished {' or '.join(stages_in_order)} run on this data, split and classes in this "
                        f"experiment; run `reg2cls convert` (or that stage) with the same options first, or pass {option}")
    if exact:
        return stages.StageResult(run_id, tracking.load_run_model(run_id, stages_in_order[0], split_key))
    tags = tracking.get_run(run_id).data.tags
    source = tags.get("recommended_run") or tags.get("best_run") or run_id
    return stages.StageResult(run_id, tracking.load_run_model(source, split_key=split_key), details={"best_run": source})


def _print_board(board) -> None:
    from .stages import display

    click.echo(display(board).to_string(index=False))


def main() -> None:
    cli(prog_name="reg2cls")
