"""The run configuration: frozen dataclasses with every default in one place.

An experiment file (experiments/*.yaml) holds only overrides; CLI options override it in turn. The
stage commands' options, and the MLproject parameters that feed them, are declared once: OPTIONS.
Unknown keys are rejected, so a typo never silently falls back to a default. This module imports
neither torch nor mlflow: `reg2cls --help` and argument errors must stay fast.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .strategies import STRATEGIES

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
EMBEDDINGS = ("none", "periodic", "piecewise")
DEVICES = ("auto", "cpu", "cuda")
SCALINGS = ("standard", "none")
FEATURE_SCALINGS = ("standard", "robust", "quantile", "none")  # data.scaling (data.Preprocessor)
LR_SCHEDULES = ("constant", "cosine", "flat_cosine")  # train.lr_schedule (train.lr_factor)
TRANSFORMS = ("none", "log1p")
TUNE_METRICS = {"val/f1_macro": "maximize", "val/log_loss": "minimize"}  # objective -> direction
PRUNERS = ("median", "hyperband", "none")
# the champion and the leaderboard's order are chosen on validation; test metrics are only reported
COMPARE_METRICS = {"val/f1_macro": "maximize", "val/accuracy": "maximize", "val/balanced_accuracy": "maximize",
                   "val/roc_auc": "maximize", "val/log_loss": "minimize", "val/ece": "minimize"}


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits non-zero."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a one-line
    error quotes from a library or the user's code."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def raised_at(e: BaseException) -> str | None:
    """Where `e` was raised, as `file, line N, in function`: its innermost frame, or for an exception sent back
    by a worker process (concurrent.futures), the last frame of the traceback text it carries; None if unknown."""
    import re
    import traceback

    frames = traceback.extract_tb(e.__traceback__) if e.__traceback__ else []
    remote = getattr(e.__cause__, "tb", None)
    if isinstance(remote, str):
        found = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', remote)
        if found:
            return "{}, line {}, in {}".format(*found[-1])
    return f"{frames[-1].filename}, line {frames[-1].lineno}, in {frames[-1].name}" if frames else None


@dataclass(frozen=True)
class Data:
    source: str = "builtin:diabetes"  # csv/parquet path, builtin:NAME or synthetic:NAME?rows=N
    target: str = "target"            # the continuous target column
    classes: str = "quantile:3"       # quantile:K | thresholds:a,b,... | label:COL
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    features: tuple[str, ...] = ()   # feature columns in the model's order; () = every other column
    scaling: str = "standard"        # standard | robust | quantile | none: whether the model sees standardised
                                     # features; robust: (x - median) / (IQR / 1.349), smoothly clipped to (-3, 3);
                                     # quantile: normal scores of the training quantiles
    target_scaling: str = "standard" # standard | none: whether the model's output is the standardised target
    target_transform: str = "none"   # none | log1p: the regressor learns log(1 + target); classes stay in target units
    folds: str = "auto"               # K outer folds for cross-fitting, 1 = one split; auto: 5 below 10,000 rows
    split: str = "random"             # random (stratified) | ordered (file order) | time:COL: earliest rows train


@dataclass(frozen=True)
class Model:
    depth: int = 2          # hidden layers of the pipeline's own MLP
    width: int = 0          # units per hidden layer; 0 = auto: 256 from 500 to 100,000 training rows, else 64
    activation: str = "relu"
    dropout: float = 0.0
    embedding: str = "none"  # none | periodic | piecewise: numerical feature embeddings before the hidden layers
    embedding_dim: int = 16  # each feature's embedding size
    n_bins: int = 48         # piecewise: quantile bins per feature (fewer where the training split has fewer rows)
    ensemble: int = 1        # k > 1: a BatchEnsemble of k members sharing their weights (TabM); 1 = one network


@dataclass(frozen=True)
class UserModel:
    """A regression model the user brings instead of the pipeline's MLP (empty spec and uri: the MLP)."""
    spec: str = ""        # path/to/file.py:ClassName or package.module:ClassName
    kwargs: str = "{}"    # JSON keyword arguments for the class
    checkpoint: str = ""  # a state_dict file, loaded with torch.load(weights_only=True)
    uri: str = ""         # or a PyTorch model already in MLflow: runs:/<id>/model, models:/<name>/<version>
    retrain: bool = False # train the brought model on the data first
    head: str = ""        # dotted name of the regression head; "" = found by a forward pass


@dataclass(frozen=True)
class Train:
    epochs: int = 300
    batch_size: str = "auto"  # a whole number, or auto: 64, doubled while an epoch would take > max_steps_per_epoch
    lr: float = 3e-3          # at batch 64; auto batches scale it by lr_scaling (the resolved values are logged)
    max_steps_per_epoch: int = 100  # auto batch: optimizer steps an epoch may take (0: always batch 64)
    lr_scaling: str = "sqrt"  # sqrt | linear | none: how an auto batch larger than 64 scales lr
    weight_decay: float = 1e-4
    patience: int = 25      # epochs without a better validation loss before stopping
    device: str = "auto"
    threads: int = 1        # torch threads of each process: cores go to processes (jobs), not threads
    jobs: int = 0           # worker processes for independent trainings (strategies, variants); 0 = every usable core
    class_weight: str = "none"  # none | balanced: classes weighted N / (K * n_k) in every classifier's loss
    lr_schedule: str = "constant"  # constant | cosine | flat_cosine: lr per epoch over train.epochs (train.lr_factor)
    label_smoothing: float = 0.1   # in [0, 1): a classifier's training targets (1 - s) * one-hot + s / K; 0.1 won
                                   # on validation (docs/benchmarks.md)


@dataclass(frozen=True)
class HeadSwap:
    strategies: tuple[str, ...] = STRATEGIES
    lp_ft_lr_factor: float = 0.1  # lp_ft fine-tunes at lr * this after the linear probe


@dataclass(frozen=True)
class Slim:
    keep_ratios: tuple[str, ...] = ("0.75", "0.5", "0.25")  # share of hidden units kept, per variant;
                                                            # none: no width variants
    depth: bool = True         # also drop hidden blocks (the pipeline's own MLP only)
    epochs: int = 100          # fine-tune budget per variant (early stopping on validation loss)
    distill: bool = False      # also train each variant on the unslimmed classifier's soft labels
    temperature: float = 2.0
    alpha: float = 0.5         # weight of the soft-label term
    tolerance: float = 0.01    # recommend the smallest variant within this macro-F1 of the best


@dataclass(frozen=True)
class Tune:
    n_trials: int = 8             # new trials this run adds to the study (shared by its workers)
    timeout: float = 0.0          # seconds; 0 = no limit
    epochs: int = 0               # per trial (the pruner watches every epoch); 0 = as the untuned model trained:
                                  # train.epochs, or slim.epochs for a slim variant (study.recipe)
    metric: str = "val/f1_macro"  # or val/log_loss (minimised)
    pruner: str = "median"        # median | hyperband | none
    storage: str = ""             # Optuna storage URL; "" = sqlite optuna.db next to the MLflow store
    study_name: str = ""          # "" = <data name>-<model tuned>-<hash>
    workers: int = 0              # local worker processes, one torch thread each; 0 = as many as train.jobs
    max_dropout: float = 0.5      # upper bound of the head and hidden dropout searched
    lr_min: float = 1e-4          # learning rate searched, log scale
    lr_max: float = 3e-2
    weight_decay_min: float = 1e-6  # weight decay searched, log scale
    weight_decay_max: float = 1e-2


@dataclass(frozen=True)
class Compare:
    metric: str = "val/f1_macro"   # sorts the leaderboard and picks the champion (its mean over seeds and folds)
    reference: bool = True         # a HistGradientBoostingClassifier row on the same splits
    register: str = ""             # registered model name; "" = <MLflow experiment of the parent run>-<data name>
    check_load: bool = True        # load the registered champion and predict in a clean process elsewhere first


@dataclass(frozen=True)
class Config:
    experiment: str = "reg2cls"
    seed: int = 0  # one seed for the split and every training run
    seeds: int = 1  # each trained strategy runs with seeds seed, seed+1, ...; the leaderboard shows mean ± std
    budget: str = "default"  # fast | default | best: the settings of BUDGETS under the file's and the options'
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    user_model: UserModel = field(default_factory=UserModel)
    train: Train = field(default_factory=Train)
    head_swap: HeadSwap = field(default_factory=HeadSwap)
    slim: Slim = field(default_factory=Slim)
    tune: Tune = field(default_factory=Tune)
    compare: Compare = field(default_factory=Compare)

    def flat(self) -> dict[str, object]:
        """The resolved config as `section.key -> value`, the form logged as MLflow params."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for g in dataclasses.fields(value):
                    v = getattr(value, g.name)
                    out[f"{f.name}.{g.name}"] = ",".join(v) if isinstance(v, tuple) else v
            else:
                out[f.name] = value
        return out


# budget -> the settings it stands for, beneath the experiment file and the options (a value given there wins).
# `default` is the defaults above, unchanged; `fast` trains fewer and shorter runs; `best` repeats every trained
# strategy with 2 seeds, tunes 2x the trials (the reference's search too: stages/reference.py) and trains a
# BatchEnsemble of 8 members, each on its own loss (train.batch_loss), where the default trains one network:
# 8 members cost 3-8x a network's training time here (bench/bench_regressor.py), more on large tables.
BUDGETS: dict[str, dict[str, object]] = {
    "fast": {"tune.n_trials": 4, "train.epochs": 150, "train.patience": 15, "slim.keep_ratios": ("0.5",),
             "slim.depth": False, "slim.epochs": 50},
    "default": {},
    "best": {"seeds": 2, "tune.n_trials": 16, "model.ensemble": 8},
}


def budget_settings(budget: object) -> dict[str, object]:
    """The config settings `budget` stands for (BUDGETS); a one-line UserError for an unknown one."""
    name = str(budget).strip().lower()
    if name not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    return BUDGETS[name]


COMMANDS = ("convert", "baseline", "head-swap", "slim", "tune", "compare")  # the stage commands, in MLproject order
_RUNS = COMMANDS[:5]                                    # the entry points that take the data and run parameters
_BRING = ("convert", "baseline")                        # ... and the brought model's


@dataclass(frozen=True)
class Option:
    """One command-line option of the stage commands, and the MLproject parameter that may feed it.

    cli.py owns turning these into click options (`stage_options`), into config overrides (`_overrides`) and
    into the MLproject file (`mlproject_text`). A flag's MLproject parameter is named after its config field
    and takes true/false (--no-reference: `reference=false`); every other parameter is named like the option.
    """
    name: str                     # Python spelling: model_kwargs is --model-kwargs and the parameter model_kwargs
    key: str | None               # the dotted config key it overrides; None: the command reads it itself
    help: str = ""
    type: type | str = str        # str, int, float or "path" (a file)
    choices: tuple[str, ...] = ()
    min: float | None = None      # a range's lower bound, itself allowed unless min_open
    min_open: bool = False
    flag: bool | None = None      # a flag, taking no value: giving it sets `key` to this
    commands: tuple[str, ...] = COMMANDS  # the commands that show it
    mlproject: tuple[str, ...] = ()       # the MLproject entry points (by command name) that take it as a parameter
    note: str = ""                # the comment beside that parameter in MLproject (at its first entry point)
    dest: str = ""                # the name the command reads it under, when not `name`
    short: str = ""               # a one-letter spelling too, e.g. -v


# Every option of the stage commands, in --help order; --set (any config key) comes after them.
# Adding an option is one entry here (and its config field above, if it is a new key).
OPTIONS = (
    Option("config", None, "Experiment YAML file (overrides only).", type="path", dest="config_path", mlproject=_RUNS),
    Option("data", "data.source", "CSV/Parquet path, builtin:diabetes (default) or synthetic:friedman1?rows=N.",
           mlproject=_RUNS, note="builtin:diabetes, a .csv/.parquet path, synthetic:friedman1?rows=N"),
    Option("target", "data.target", "The continuous target column (default: target).", mlproject=_RUNS),
    Option("classes", "data.classes", "quantile:K (default quantile:3), thresholds:a,b,... or label:COL.",
           mlproject=_RUNS, note="quantile:K | thresholds:a,b | label:COL"),
    Option("features", "data.features",
           "Feature columns in the model's order, comma-separated (default: all but the target).", mlproject=_RUNS),
    Option("model", "user_model.spec", "Bring your regressor: path/to/file.py:Name or package.module:Name, Name an "
                                       "nn.Module class or a function returning one.",
           mlproject=_BRING, note="bring a regressor: path/file.py:Class"),
    Option("model_kwargs", "user_model.kwargs",
           "JSON keyword arguments for --model's class, e.g. '{\"hidden_dim\": 50}'.", mlproject=_BRING),
    Option("checkpoint", "user_model.checkpoint", "state_dict file for --model (loaded with weights_only=True).",
           mlproject=_BRING),
    Option("model_uri", "user_model.uri", "Or a PyTorch model in MLflow: runs:/<id>/model or models:/<name>/<version>.",
           mlproject=_BRING, note="or runs:/<id>/model, models:/<name>/<version>"),
    Option("retrain", "user_model.retrain", "Train the brought model on the data first.", flag=True, mlproject=_BRING,
           note="true: train the brought model first"),
    Option("head", "user_model.head", "Dotted module name of the regression head (default: found by a forward pass).",
           mlproject=(*_BRING, "head-swap")),
    Option("scaling", "data.scaling", "Whether the model expects standardised features (default standard); robust: "
                                      "median and IQR, outliers smoothly clipped; quantile: normal scores.",
           choices=FEATURE_SCALINGS, mlproject=_RUNS, note="standard | robust | quantile | none"),
    Option("target_scaling", "data.target_scaling",
           "Whether the model outputs the standardised target (default standard).", choices=SCALINGS, mlproject=_RUNS),
    Option("target_transform", "data.target_transform", "none (default) or log1p: the regressor learns log(1 + "
           "target); classes, edges and class names stay in the target's units.", choices=TRANSFORMS, mlproject=_RUNS),
    Option("split", "data.split", "random (default, stratified), ordered (the file's row order) or time:COL: "
                                  "the earliest rows train, the next validate, the latest test.", mlproject=_RUNS,
           note="random | ordered | time:COL"),
    Option("folds", "data.folds", "Outer folds for cross-fitting: K, 1 (one split) or auto (default: 5 below "
                                  "10,000 rows, else 1). Stage commands other than convert work on the first fold.",
           mlproject=_RUNS, note="auto | 1 | K"),
    Option("epochs", "train.epochs", "Maximum epochs per training run.", type=int, min=1, mlproject=_RUNS[:4]),
    Option("batch_size", "train.batch_size", "Rows per batch, or auto (default): 64, doubled while an epoch would "
                                             "take more than train.max_steps_per_epoch (100) steps, lr scaled by "
                                             "sqrt(batch / 64)."),
    Option("lr", "train.lr", "Learning rate.", type=float, min=0, min_open=True),
    Option("threads", "train.threads", "Torch threads of each process (default 1: the cores go to worker processes, "
                                       "--jobs; two threads beside a busy process wait on each other).",
           type=int, min=1),
    Option("jobs", "train.jobs", "Worker processes training strategies and variants side by side, one thread "
                                 "each (default 0: every usable core; 1: all in this process).", type=int, min=0,
           commands=("convert", "head-swap", "slim"), mlproject=("convert", "head-swap", "slim")),
    Option("seed", "seed", "Seed for the split and every training run.", type=int, min=0, mlproject=_RUNS),
    Option("seeds", "seeds", "Repeat every trained strategy with this many seeds (mean ± std).", type=int, min=1),
    Option("budget", "budget", "fast, default or best: fewer and shorter runs, or more seeds, tune trials and an "
                               "ensemble (config.BUDGETS); a setting given explicitly wins over its budget's.",
           commands=("convert",), mlproject=("convert",), note="fast | default | best"),
    Option("device", "train.device", "auto (default): CUDA when available.", choices=DEVICES, mlproject=_RUNS,
           note="auto | cpu | cuda"),
    Option("experiment", "experiment", "MLflow experiment name (default: reg2cls).", mlproject=("compare",)),
    Option("quiet", None, "No progress bars and no stage lines; only the results.", flag=True),
    Option("verbose", None, "Also a line per finished run (its validation scores).", flag=True, short="-v"),
    Option("tracking_uri", None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    # tune always adds trials and compare always runs: --force would change nothing there
    Option("force", None, "Re-run stages even when a finished run with the same inputs exists.", flag=True,
           commands=("convert", "baseline", "head-swap", "slim")),
    # convert and head-swap
    Option("strategies", "head_swap.strategies", "Comma-separated subset of: " + ",".join(STRATEGIES),
           commands=("convert", "head-swap"), mlproject=("convert", "head-swap")),
    Option("baseline_run", None, "Run id of a finished baseline run (default: the newest one on the same data).",
           commands=("head-swap",), mlproject=("head-swap",),
           note="default: the newest finished baseline on the same split"),
    # slim
    Option("from_run", None, "A head_swap stage run (its best strategy) or any run with a reg2cls model "
                             "(default: the newest head_swap stage run on the same split).",
           commands=("slim",), mlproject=("slim",), note="default: the newest head_swap stage run on the same split"),
    Option("keep_ratios", "slim.keep_ratios", "Share of hidden units each width variant keeps, e.g. 0.75,0.5,0.25.",
           commands=("slim",), mlproject=("slim",), note="e.g. 0.75,0.5,0.25"),
    Option("distill", "slim.distill", "Also train every variant on the unslimmed model's soft labels.", flag=True,
           commands=("slim",), mlproject=("slim",), note="true: also train each variant on soft labels"),
    # tune
    Option("from_run", None, "A run with a reg2cls classifier, or a slim/head_swap stage run (its chosen model); "
                             "default: the newest slim, else head_swap, stage run on the same split.",
           commands=("tune",), mlproject=("tune",), note="default: the newest slim, else head_swap, stage run"),
    Option("n_trials", "tune.n_trials", "New trials to add to the study (default 8).", type=int, min=0,
           commands=("tune",), mlproject=("tune",)),
    Option("timeout", "tune.timeout", "Stop starting trials after this many seconds.", type=float, min=0,
           commands=("tune",), mlproject=("tune",)),
    Option("metric", "tune.metric", "Objective (default val/f1_macro).", choices=tuple(sorted(TUNE_METRICS)),
           commands=("tune",), mlproject=("tune",), note="val/f1_macro | val/log_loss"),
    Option("pruner", "tune.pruner", "Pruner (default median).", choices=PRUNERS,
           commands=("tune",), mlproject=("tune",), note="median | hyperband | none"),
    Option("storage", "tune.storage", "Optuna storage URL (default: sqlite optuna.db next to the MLflow store).",
           commands=("tune",), mlproject=("tune",), note="Optuna RDB URL, e.g. postgresql://user:pw@host/db"),
    Option("study_name", "tune.study_name", "Default: <data name>-<model tuned>-<hash of the settings>.",
           commands=("tune",), mlproject=("tune",)),
    Option("workers", "tune.workers", "Local worker processes, one torch thread each (default 0: as many as "
                                      "--jobs, every usable core).", type=int, min=0,
           commands=("tune",), mlproject=("tune",)),
    # compare
    Option("run_id", None, "The convert (parent) run to compare (default: the newest finished one).",
           commands=("compare",), mlproject=("compare",), note="the convert (parent) run; default: the newest one"),
    Option("metric", "compare.metric", "Validation metric that sorts the board and picks the champion "
                                       f"(default val/f1_macro; one of {', '.join(COMPARE_METRICS)}).",
           commands=("compare",), mlproject=("compare",), note="val/f1_macro (default), val/log_loss, ..."),
    Option("no_reference", "compare.reference", "Leave out the HistGradientBoosting reference row.", flag=False,
           commands=("compare",), mlproject=("compare",), note="false: leave out the HistGradientBoosting row"),
    Option("register", "compare.register", "Registered model name for the champion (default <experiment>-<data name>).",
           commands=("convert", "compare"), mlproject=("convert", "compare"), note="default: <experiment>-<data name>"),
)


def _coerce(key: str, default: object, value: object) -> object:
    """Convert a YAML or command-line value to the type of the field's default."""
    try:
        if isinstance(default, tuple):
            if isinstance(value, str) and value.strip().lower() == "none":  # an empty list, spelled on a command line
                return ()
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):  # nan, inf: never a setting
                raise UserError(f"config key '{key}': {value!r} is not a finite number")
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config key '{key}': cannot read {value!r} as {type(default).__name__}") from None


def _apply(cfg: Config, overrides: dict[str, object]) -> Config:
    """Apply `section.key -> value` (or top-level `key -> value`) overrides; unknown keys are errors."""
    sections: dict[str, dict[str, object]] = {}
    top: dict[str, object] = {}
    for key, value in overrides.items():
        head, _, tail = key.partition(".")
        if not hasattr(cfg, head):
            known = ", ".join(f.name for f in dataclasses.fields(cfg))
            raise UserError(f"unknown config key '{key}' (known sections and keys: {known})")
        current = getattr(cfg, head)
        if dataclasses.is_dataclass(current):
            if not tail or not hasattr(current, tail):
                known = ", ".join(f"{head}.{f.name}" for f in dataclasses.fields(current))
                raise UserError(f"unknown config key '{key}' (known: {known})")
            sections.setdefault(head, {})[tail] = _coerce(key, getattr(current, tail), value)
        elif tail:
            raise UserError(f"unknown config key '{key}': '{head}' has no sub-keys")
        else:
            top[head] = _coerce(key, current, value)
    changes = {name: dataclasses.replace(getattr(cfg, name), **kv) for name, kv in sections.items()}
    return dataclasses.replace(cfg, **changes, **top)


def _flatten_yaml(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_yaml(value, name + "."))
        else:
            out[name] = value
    return out


def data_name(source: str) -> str:
    """A short name for a data source, for the names people read (the registered model, the convert run, the
    Optuna study): a file's stem, a built-in set's or a synthetic generator's name; letters, digits, _ and -."""
    import re

    if source.startswith(("builtin:", "synthetic:")):
        name = source.split(":", 1)[1].split("?", 1)[0]
    else:
        name = Path(source).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "data"


def registered_name(cfg: Config, experiment: str | None = None) -> str:
    """`compare.register`, else `<experiment>-<data name>` (`experiment`: the parent run's, default
    `cfg.experiment`): a second data set gets its own registered model, not a refusal to move the first's alias."""
    return cfg.compare.register or f"{experiment or cfg.experiment}-{data_name(cfg.data.source)}"


MAX_NAME = 200  # characters of an experiment, registered model or study name; a study's default name adds ~30


def name_problem(name: str) -> str | None:
    """Why `name` (an experiment, registered model or study) would not survive the trip through MLflow, Optuna,
    a models:/ URI and a shell command that prints it, or None: empty, too long, spaces at either end, or a
    control character (a newline vanishes from a models:/ URI, so the printed `predict` command fails)."""
    import unicodedata

    if not name.strip():
        return "it is empty"
    if len(name) > MAX_NAME:
        return f"it is {len(name)} characters long (at most {MAX_NAME})"
    if name != name.strip():
        return "it starts or ends with a space"
    control = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if control is not None:
        return f"it holds the control character {control!r}"
    return None


def registered_name_problem(name: str) -> str | None:
    """Why `name` cannot be a registered model name that `models:/<name>@champion` finds again (MLflow's own
    rules: no '/' or ':', no path tricks; and no '@', '#', '?', '%' or '\\', which a models:/ URI reads as
    its own syntax), or None."""
    import posixpath

    problem = name_problem(name)
    if problem:
        return problem
    odd = [c for c in "/:@#?%\\" if c in name]
    if odd:
        return f"it contains {' and '.join(repr(c) for c in odd)}"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        return "it would resolve to another path name"
    return None


MAX_SEED = 2**31 - 1  # numpy and scikit-learn take seeds below 2**32; tune adds 1000 per worker and the trial count


def _memory_bytes() -> float:
    """Memory available to this process (MemAvailable on Linux), or infinity where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def validate(cfg: Config) -> Config:
    """Reject values that would only fail later, deep inside a stage: every number finite and in its range
    (`_coerce` already refused nan and inf), names MLflow would refuse, a model too big for this machine."""
    _check_data(cfg)
    _check_model(cfg)
    _check_user_model(cfg)
    _check_train(cfg)
    _check_stages(cfg)
    _check_names(cfg)
    _check_memory(cfg)
    return cfg


def _check_data(cfg: Config) -> None:
    """How the data is read and split: folds, split, transforms, features, fractions."""
    if cfg.data.folds != "auto" and not (cfg.data.folds.isdigit() and int(cfg.data.folds) >= 1):
        raise UserError(f"data.folds must be auto or a whole number >= 1 (1 = one split), got '{cfg.data.folds}'")
    if cfg.data.split not in ("random", "ordered") and not (cfg.data.split.startswith("time:") and cfg.data.split[5:]):
        raise UserError(f"data.split must be random, ordered or time:COL, got '{cfg.data.split}'")
    if cfg.data.target_transform not in TRANSFORMS:
        raise UserError(f"data.target_transform must be one of {', '.join(TRANSFORMS)}, got "
                        f"'{cfg.data.target_transform}'")
    for name, allowed in (("scaling", FEATURE_SCALINGS), ("target_scaling", SCALINGS)):
        if getattr(cfg.data, name) not in allowed:
            raise UserError(f"data.{name} must be one of {', '.join(allowed)}, got '{getattr(cfg.data, name)}'")
    repeated = sorted({c for c in cfg.data.features if cfg.data.features.count(c) > 1})
    if repeated:
        raise UserError(f"--features names {', '.join(repr(c) for c in repeated)} more than once; "
                        "name each column once")
    for name in ("val_fraction", "test_fraction"):
        if not 0 < getattr(cfg.data, name) < 0.5:
            raise UserError(f"data.{name} must be between 0 and 0.5, got {getattr(cfg.data, name)}")


def _check_model(cfg: Config) -> None:
    """The pipeline's own MLP: activation, depth, width, dropout, embedding."""
    if cfg.model.activation not in ACTIVATIONS:
        raise UserError(f"unknown activation '{cfg.model.activation}'; choose from {', '.join(ACTIVATIONS)}")
    if cfg.model.depth < 1 or cfg.model.width < 0:
        raise UserError("model.depth must be at least 1 and model.width at least 1 (0: auto)")
    if not 0 <= cfg.model.dropout < 1:
        raise UserError(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.model.embedding not in EMBEDDINGS:
        raise UserError(f"unknown model.embedding '{cfg.model.embedding}'; choose from {', '.join(EMBEDDINGS)}")
    for key, value, least in (("embedding_dim", cfg.model.embedding_dim, 1), ("ensemble", cfg.model.ensemble, 1),
                              ("n_bins", cfg.model.n_bins, 2)):
        if value < least:
            raise UserError(f"model.{key} must be at least {least}, got {value}")


def _check_user_model(cfg: Config) -> None:
    """A brought model: one way to bring it, a class named, and no option that shapes only the pipeline's MLP."""
    um = cfg.user_model
    if um.spec and um.uri:
        raise UserError("--model and --model-uri both given; bring the model one way")
    if (um.checkpoint or um.retrain or um.head or um.kwargs.strip() not in ("", "{}")) and not (um.spec or um.uri):
        raise UserError("--checkpoint, --model-kwargs, --retrain and --head need a model: "
                        "add --model FILE.py:Class or --model-uri URI")
    if um.spec and ":" not in um.spec:
        raise UserError(f"--model '{um.spec}' must name a class: path/to/file.py:ClassName or package.module:ClassName")
    if (um.spec or um.uri) and (cfg.model.embedding != "none" or cfg.model.ensemble != 1):
        raise UserError("model.embedding and model.ensemble shape the pipeline's own MLP, not a brought --model; "
                        "drop them or the --model")


def _check_train(cfg: Config) -> None:
    """The training loop: device, epochs, learning rate, batch, class weights, seeds, weight decay, patience."""
    if cfg.train.device not in DEVICES:
        raise UserError(f"unknown device '{cfg.train.device}'; choose from {', '.join(DEVICES)}")
    if cfg.train.epochs < 1 or cfg.train.lr <= 0:
        raise UserError("train.epochs must be at least 1 and train.lr positive")
    batch = str(cfg.train.batch_size).strip().lower()
    if batch != "auto" and not (batch.isdigit() and int(batch) >= 2):
        raise UserError("train.batch_size must be auto or a whole number of at least 2 (BatchNorm needs two rows a "
                        f"batch), got {cfg.train.batch_size!r}")
    if cfg.train.lr_scaling not in ("sqrt", "linear", "none") or cfg.train.max_steps_per_epoch < 0:
        raise UserError("train.lr_scaling must be sqrt, linear or none and train.max_steps_per_epoch 0 or more, got "
                        f"{cfg.train.lr_scaling!r}, {cfg.train.max_steps_per_epoch}")
    if cfg.train.class_weight not in ("none", "balanced"):
        raise UserError(f"train.class_weight must be none or balanced, got {cfg.train.class_weight!r}")
    if cfg.train.lr_schedule not in LR_SCHEDULES or not 0 <= cfg.train.label_smoothing < 1:
        raise UserError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)} and train.label_smoothing in "
                        f"[0, 1), got {cfg.train.lr_schedule!r}, {cfg.train.label_smoothing:g}")
    if cfg.seed < 0 or cfg.seeds < 1:
        raise UserError(f"seed must be 0 or more and seeds at least 1, got seed {cfg.seed}, seeds {cfg.seeds}")
    if cfg.seed + cfg.seeds > MAX_SEED // 2:
        raise UserError(f"seed + seeds must stay below {MAX_SEED // 2} (numpy's seed range), got seed {cfg.seed}")
    if cfg.seeds > 100:
        raise UserError(f"seeds must be at most 100 (each trained strategy runs once per seed), got {cfg.seeds}")
    t = cfg.train
    if t.weight_decay < 0:
        raise UserError(f"train.weight_decay must be 0 or more, got {t.weight_decay:g}")
    if t.patience < 0:
        raise UserError(f"train.patience must be 0 (no early stopping) or more, got {t.patience}")


def _check_stages(cfg: Config) -> None:
    """What each stage tries: head-swap strategies, slim variants, the tune study, the compare metric."""
    unknown = [s for s in cfg.head_swap.strategies if s not in STRATEGIES]
    if unknown or not cfg.head_swap.strategies:
        raise UserError(f"unknown strategy {', '.join(unknown) or '(none given)'}; choose from {', '.join(STRATEGIES)}")
    if cfg.head_swap.lp_ft_lr_factor <= 0:
        raise UserError(f"head_swap.lp_ft_lr_factor must be positive, got {cfg.head_swap.lp_ft_lr_factor:g}")
    try:
        ratios = [float(r) for r in cfg.slim.keep_ratios]
    except ValueError:
        raise UserError(f"slim.keep_ratios must be numbers, got {','.join(cfg.slim.keep_ratios)}") from None
    if any(not 0 < r <= 1 for r in ratios):
        raise UserError(f"slim.keep_ratios must lie in (0, 1], got {','.join(cfg.slim.keep_ratios)}")
    if not 0 <= cfg.slim.alpha <= 1 or cfg.slim.temperature <= 0:
        raise UserError("slim.alpha must lie in [0, 1] and slim.temperature be positive")
    if cfg.slim.epochs < 1 or not 0 <= cfg.slim.tolerance < 1:
        raise UserError(f"slim.epochs must be at least 1 and slim.tolerance in [0, 1), got {cfg.slim.epochs}, "
                        f"{cfg.slim.tolerance:g}")
    if cfg.tune.metric not in TUNE_METRICS:
        raise UserError(f"tune.metric must be one of {', '.join(TUNE_METRICS)}, got '{cfg.tune.metric}'")
    if cfg.tune.pruner not in PRUNERS:
        raise UserError(f"tune.pruner must be one of {', '.join(PRUNERS)}, got '{cfg.tune.pruner}'")
    if cfg.tune.n_trials < 0 or cfg.tune.workers < 0 or cfg.tune.epochs < 0 or cfg.tune.timeout < 0:
        raise UserError("tune.n_trials, tune.workers, tune.epochs and tune.timeout must be >= 0")
    if not 0 < cfg.tune.max_dropout < 1:
        raise UserError(f"tune.max_dropout must lie in (0, 1), got {cfg.tune.max_dropout}")
    for name in ("lr", "weight_decay"):
        low, high = getattr(cfg.tune, f"{name}_min"), getattr(cfg.tune, f"{name}_max")
        if not 0 < low < high:
            raise UserError(f"tune.{name}_min and tune.{name}_max must be positive with min < max (a log range), "
                            f"got {low:g} and {high:g}")
    metric = cfg.compare.metric
    if metric.startswith("test/"):
        raise UserError(f"compare.metric '{metric}' would choose the champion on the test split, whose scores are then "
                        f"biased upwards and no longer a test; choose on validation: val/{metric[5:]}")
    if metric not in COMPARE_METRICS:
        raise UserError(f"compare.metric must be one of {', '.join(COMPARE_METRICS)}, got '{metric}'")


def _check_names(cfg: Config) -> None:
    """Names MLflow would refuse: the experiment, the study, the registered model."""
    for option, name in (("--experiment", cfg.experiment), ("tune.study_name", cfg.tune.study_name)):
        problem = name_problem(name) if name or option == "--experiment" else None
        if problem:
            raise UserError(f"{option} {name[:80]!r} cannot be used as a name: {problem}; choose a plain name")
    registered = registered_name(cfg)
    problem = registered_name_problem(registered)
    if problem:
        source = "--register" if cfg.compare.register else f"the experiment name ({cfg.experiment!r}) gives"
        raise UserError(f"{source} registered model name {registered!r}, which MLflow refuses: {problem}; "
                        "choose another experiment name or pass --register NAME")


def _check_memory(cfg: Config) -> None:
    """A model too big to train on this machine."""
    # weights, gradients, AdamW's two moments and the best-weights copy: 5 float32 copies of every weight
    m = cfg.model
    width = m.width or 256  # auto: at most 256
    need = 5 * 4 * (width * width * (m.depth - 1) + 2 * width * 64)
    if need > 0.8 * _memory_bytes():
        raise UserError(f"model.width={width} with model.depth={m.depth} needs about {need / 2**30:.3g} GiB to "
                        f"train, more than the {_memory_bytes() / 2**30:.3g} GiB available; use a smaller width or "
                        "depth")


def recovered(params: dict[str, str]) -> dict[str, str]:
    """The config overrides a run was made with, from its logged params: the config keys, with
    `resolved.<key>` preferred where `mlflow run` logged both (its entry-point value as typed, and ours)."""
    known = set(Config().flat())
    out = {k: v for k, v in params.items() if k in known}
    out.update({k[len("resolved."):]: v for k, v in params.items() if k.startswith("resolved.") and k[9:] in known})
    return out


MAX_CONFIG_BYTES = 1_000_000  # an experiment file holds overrides: a few hundred bytes
MAX_CONFIG_NODES = 10_000     # values in the document with every alias expanded


def _read_yaml(path: Path):
    """The experiment file's YAML, bounded before it is built: its size, and the number of values it holds once
    every alias is expanded (a "billion laughs" file is a few lines that expand to billions), its nesting (a
    recursion error otherwise). One-line UserError for each."""
    import yaml  # only when a file is given: keeps --help fast

    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"experiment file {path} is {size:,} bytes; an experiment file holds a few overrides (at most "
                        f"{MAX_CONFIG_BYTES:,} bytes)")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # the node graph: an alias is a reference, not a copy
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise UserError(f"experiment file {path} expands to more than {MAX_CONFIG_NODES:,} values (aliases "
                            "repeating aliases); write the overrides out plainly")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"experiment file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UserError(f"experiment file {path} is not UTF-8 text") from None
    except RecursionError:
        raise UserError(f"experiment file {path} is nested too deeply to be a config") from None


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """How many values `node` holds with its aliases expanded; each shared node is counted once and reused."""
    if id(node) not in sizes:
        value = node.value if isinstance(node.value, list) else []
        children = [n for pair in value for n in (pair if isinstance(pair, tuple) else (pair,))]
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def load(path: str | Path | None = None, overrides: dict[str, object] | None = None) -> Config:
    """Defaults, then the settings of the budget (BUDGETS; the file's or the overrides' `budget`), then the
    experiment file at `path` (if any), then `overrides` (dotted keys): a value given explicitly wins."""
    given: dict[str, object] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"experiment file {path} not found")
        tree = _read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise UserError(f"experiment file {path} must be a mapping of config keys")
        given = _flatten_yaml(tree)
    budget = {**given, **(overrides or {})}.get("budget", Config.budget)
    cfg = _apply(_apply(Config(), budget_settings(budget)), given)
    return validate(_apply(cfg, overrides or {}))
