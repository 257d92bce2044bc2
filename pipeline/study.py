"""Optuna for the tune stage: storage, study, the trial objective and the workers that run it.

- Storage: any Optuna RDB URL (SQLite by default, PostgreSQL for workers on several machines), with
  the heartbeat on: a trial whose worker died is failed by the next worker to start a trial, its
  MLflow run ended FAILED, and the trial retried (`RetryHeartbeatStaleTrialCallback`).
- A study remembers its objective (`metric` user attribute); reopening it with another is refused.
- Every trial retrains the source model from its start (the weights its own training started from), never
  from its converged weights, by the source's own recipe (`recipe`: its phases, epochs, distillation) and
  with the source's own seed: trials differ in their configuration only, not in seed noise. A new study's
  trial 0 is the untuned configuration (`untuned_params`, inside the search space widened to hold it:
  `holding`), so trial 0 trains the untuned model again, exactly, and the search starts from it.
- Trials are judged by the model's own decision (`own_outputs`: no rule fitted on the selection rows), the
  pruner each epoch and the objective at the end alike; a tuned model is kept only when its gain over the
  untuned one exceeds the paired bootstrap standard error of that gain on the selection rows (`improvement`,
  `keeps`): the best of n trials beats its start by noise alone.
- Each trial is an MLflow run nested under the tune stage run (strategy=trial_<n>) holding its params,
  per-epoch validation curves and model; PRUNED ends it KILLED, FAIL ends it FAILED; the trial keeps
  the run id as user attribute `mlflow_run_id`, so optuna-dashboard and MLflow point at each other.
- Workers share one count: they stop once the study holds `target` trials (done, running, or waiting
  to be retried) and the trials that were running at that moment have ended (one may yet go stale
  and need a retry). Local workers take a lock from the count check until their trial exists, so N
  trials are exactly N; workers on several machines can overshoot by at most (workers - 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from . import backend, checkpoint, decision, jobs, metrics, registry, stats, stop, tracking
from .config import TUNE_METRICS, Config, UserError, data_name, first_line
from .data import Prepared
from .model import architecture, mark_start
from .strategies import STRATEGY
from .surgery import find_head, freeze_backbone, recorded_head, set_dropout, unfreeze
from .train import Distill, batch_and_lr, classification_task, fit, predict, resolve_device, use_threads

HEARTBEAT_S, GRACE_S = 2, 8  # a trial without a heartbeat for 8 s belongs to a dead worker


def storage_url(configured: str, tracking_uri: str) -> str:
    """The configured URL, else a SQLite file `optuna.db` beside a SQLite MLflow store (or in the cwd)."""
    if configured:
        return configured
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


class _Stopping(logging.Filter):
    """Drops Optuna's report of a trial that Ctrl+C or SIGTERM stopped (a traceback, then "failed with value
    None"), and every report after it in the block: the process is stopping, and the command says so in one line."""

    stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.stopping = True
        return not self.stopping


@contextlib.contextmanager
def quiet_optuna():
    """Optuna without its per-trial INFO lines, its "experimental feature" warnings (the heartbeat and retry
    callback are marked experimental) and its traceback for a stopped trial (_Stopping), for the block only:
    the caller's settings come back after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handlers, stopping = logging.getLogger("optuna").handlers, _Stopping()
    for handler in handlers:
        handler.addFilter(stopping)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(stopping)
        optuna.logging.set_verbosity(verbosity)


def _fail_and_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A stale trial (its worker died): end its MLflow run FAILED, then queue a retry of it."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        tracking.end_if_running(run_id, "FAILED")
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(study, trial)


def fail_abandoned_trials(study: optuna.Study) -> int:
    """Fail now, and queue for a retry as a stale trial would be, every trial still RUNNING whose MLflow run has
    ended: its worker died and the command ended the run (jobs.result, tracking.end_orphans). Otherwise the trial
    stays RUNNING until a later worker opens the study and finds its heartbeat stale. A trial whose run still
    runs (a worker on another machine) is left alone. Returns how many."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and tracking.get_run(run_id).info.status != "RUNNING":
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            _fail_and_retry(study, study.get_trials(deepcopy=False)[t.number])
            n += 1
    return n


def make_storage(url: str) -> optuna.storages.RDBStorage:
    # SQLite: wait for the lock instead of failing with "database is locked" when workers write at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    # two commands creating a new SQLite file's tables at once collide ('table ... already exists')
    lock = backend.lock(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else contextlib.nullcontext()
    try:
        with lock:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S, heartbeat_stale_trial_callback=_fail_and_retry)
    except UserError:
        raise
    except Exception as e:  # bad URL, server down, missing driver: one line, not a traceback
        raise UserError(f"cannot open the Optuna storage {url}: {first_line(e)}") from None
    if url.startswith("sqlite"):
        # every epoch's trial.report is a commit: in the default rollback-journal mode each one fsyncs
        # and locks out the other workers, which made two workers no faster than one (bench_tune.py).
        # WAL lets readers and one writer proceed together; synchronous=NORMAL is WAL's safe setting.
        import sqlalchemy

        @sqlalchemy.event.listens_for(storage.engine, "connect")
        def _pragmas(connection, record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        storage.engine.dispose()  # connections opened before the listener reconnect with the pragmas
    return storage


def open_study(url: str, name: str, metric: str) -> optuna.Study:
    """Create the study, or reopen it when its objective and direction match; refuse otherwise."""
    with quiet_optuna():
        storage = make_storage(url)
    direction = TUNE_METRICS[metric]
    # load_if_exists: a command started beside this one may create the same study between a load and a create
    with quiet_optuna():  # no "A new study created" INFO line among the stage's own
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    if "metric" not in study.user_attrs and not study.trials:
        study.set_user_attr("metric", metric)
        with warnings.catch_warnings():  # "set_metric_names is experimental"
            warnings.simplefilter("ignore")
            study.set_metric_names([metric])  # optuna-dashboard's axis then reads the metric, not "Objective 0"
    held = study.user_attrs.get("metric")
    if held != metric or study.direction.name.lower() != direction:
        raise UserError(f"study '{name}' optimises {held or 'another objective'} ({study.direction.name.lower()}), "
                        f"not {metric} ({direction}); pass another --study-name or the same --metric")
    return study


def study_name(cfg: Config, architecture: dict, split_key: str, model: str = "model") -> str:
    """`tune.study_name`, else `<data name>-<model>-<hash>` (`model`: the strategy or variant tuned), so
    optuna-dashboard says what each study tuned. The hash covers the experiment, the split (data, classes,
    seed, fold) and all that makes trials comparable: the architecture, the objective (one metric, one
    direction), the search space and how a trial trains (loss weighting, epochs, batch, the untuned lr and
    weight decay of trial 0); a call with other settings starts its own study instead of ranking its trials
    beside trials trained otherwise."""
    t = cfg.train
    trains = {"class_weight": t.class_weight, "epochs": [t.epochs, cfg.slim.epochs, cfg.tune.epochs],
              "patience": t.patience, "batch": [t.batch_size, t.max_steps_per_epoch, t.lr_scaling],
              "lr": t.lr, "weight_decay": t.weight_decay}
    identity = [architecture, cfg.tune.metric, search_space(cfg), trains, cfg.experiment, split_key]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return cfg.tune.study_name or f"{data_name(cfg.data.source)}-{model}-{digest}"


def label(study: optuna.Study, cfg: Config, model: str, convert_run: str | None) -> None:
    """User attributes that say, in optuna-dashboard, what the study tunes and where its runs are: the data,
    the model tuned, the MLflow experiment and the convert run (the latest that added trials)."""
    attrs = {"data": cfg.data.source, "target": cfg.data.target, "model": model, "mlflow_experiment": cfg.experiment,
             **({"mlflow_convert_run": convert_run} if convert_run else {})}
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def counted(study: optuna.Study) -> tuple[int, bool]:
    """(trials toward the target, whether a retry is waiting). A failed trial that was retried counts
    through its retry; one that ran out of retries counts itself."""
    trials = study.get_trials(deepcopy=False)
    with quiet_optuna():
        retried = {optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials} - {None}
    n = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
            or (t.state == TrialState.FAIL and t.number not in retried) for t in trials)
    return n, any(t.state == TrialState.WAITING for t in trials)


PRUNE_FROM = 5  # the first epoch either pruner may stop a trial at: the median's warm-up, hyperband's first rung


def make_pruner(cfg: Config, epochs: int) -> optuna.pruners.BasePruner:
    if cfg.tune.pruner == "median":  # prune a trial below the median of earlier trials at the same epoch
        return HeldMedianPruner(n_startup_trials=2, n_warmup_steps=PRUNE_FROM)
    if cfg.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=PRUNE_FROM, max_resource=epochs)
    return optuna.pruners.NopPruner()


class HeldMedianPruner(optuna.pruners.MedianPruner):
    """Optuna's MedianPruner, its rule unchanged, holding the study's completed trials it compares with: read once
    per trial, and again once HEARTBEAT_S have passed. Optuna reads them back at every question (every epoch from
    PRUNE_FROM), and with them every unfinished trial, this one and all the values it reported: 3 ms an epoch, for
    epochs that train in 4 (py-spy: 2.5 s of the default convert). With one worker on a study (a convert's folds)
    nothing else completes a trial meanwhile, so every answer is Optuna's own; with several, another worker's
    trial counts from at most HEARTBEAT_S after it completed, as if it had completed that much later, which is a
    race between workers either way."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._held: tuple[int | None, float, list] = (None, 0.0, [])  # (for trial number, read at, trials)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        number, read_at, completed = self._held
        if number != trial.number or time.monotonic() - read_at > HEARTBEAT_S:
            completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._held = (trial.number, time.monotonic(), completed)
        return super().prune(_Completed(completed, study.direction), trial)


@dataclass
class _Completed:
    """All of a study that MedianPruner.prune reads: its completed trials (held) and its direction."""
    trials: list
    direction: optuna.study.StudyDirection

    def get_trials(self, deepcopy: bool = False, states=None) -> list:
        assert states == (TrialState.COMPLETE,), "MedianPruner asked for other trials than the completed ones"
        return self.trials


@dataclass
class Recipe:
    """How the source model was trained, which every trial repeats with its own configuration: its `phases`,
    each (epochs, learning-rate factor, head only), and for a distilled slim variant its teacher's soft labels."""
    phases: tuple[tuple[int, float, bool], ...]
    distill: Distill | None = None


@dataclass
class Job:
    """All a worker needs, picklable for a spawned process."""
    cfg: Config
    data: Prepared
    architecture: dict
    state: dict        # the weights every trial starts from: the source model's start (model.mark_start)
    tracking_uri: str
    stage_run: str
    storage: str
    study_name: str
    target: int
    timeout: float | None  # seconds, counted from the worker's start (after its imports and set-up)
    seed: int          # the sampler's
    recipe: Recipe     # how each trial trains (`recipe`)
    train_seed: int    # every trial trains with it, the untuned run's own: trials differ in their configuration only
    space: dict | None = None  # what a trial searches (`holding`); None: search_space(cfg)

    @property
    def epochs(self) -> int:
        """A trial's epochs at most, over its phases: what the pruner counts in."""
        return sum(epochs for epochs, _, _ in self.recipe.phases)


def search_space(cfg: Config) -> dict[str, tuple[float, float, bool]]:
    """name -> (low, high, log): what a trial searches, the one place its bounds are read from the config."""
    t = cfg.tune
    return {"head_dropout": (0.0, t.max_dropout, False), "hidden_dropout": (0.0, t.max_dropout, False),
            "lr": (t.lr_min, t.lr_max, True), "weight_decay": (t.weight_decay_min, t.weight_decay_max, True)}


def holding(space: dict[str, tuple[float, float, bool]],
            untuned: dict[str, float]) -> tuple[dict[str, tuple[float, float, bool]], list[str]]:
    """`space` widened to hold the untuned configuration, so that trial 0 is exactly the untuned model's training
    (a value moved to a bound would train another model), and each widening said as text. A log range cannot
    hold 0 (a weight decay of 0): that one becomes a linear range from 0."""
    out, said = dict(space), []
    for name, (low, high, log) in space.items():
        value = untuned[name]
        if low <= value <= high:
            continue
        if log and value <= 0:
            out[name] = (0.0, high, False)
            said.append(f"{name} from 0 (a linear range: a log range cannot hold 0)")
        else:
            out[name] = (min(low, value), max(high, value), log)
            said.append(f"{name} {'down' if value < low else 'up'} to {value:g}")
    return out, said


def recipe(cfg: Config, made_by: dict[str, str], data: Prepared, device) -> Recipe:
    """How the source model's own run trained it (`made_by`: that run's tags, stage and strategy, a head-swap
    strategy's phases read from its strategies.STRATEGY row as head_swap reads them), which every
    trial repeats from the same start with its own configuration; so trial 0, the untuned configuration, trains
    the same model again (same start, phases, batch, lr, weight decay, seed and epochs: checked by
    tests/test_tune.py). linear_probe trains the head only; lp_ft the head, then everything at lr *
    head_swap.lp_ft_lr_factor; a slim variant fine-tunes for slim.epochs, a distilled one on its teacher's soft
    labels too; threshold trains nothing (no phases: nothing to tune); the rest (finetune, warm_start, scratch,
    the ordinal heads, a tuned model) train everything. `tune.epochs`, when set, replaces each phase's epochs."""
    stage, strategy = made_by.get("stage"), made_by.get("strategy", "")
    t = cfg.train
    swapped = STRATEGY.get(strategy) if stage == "head_swap" else None  # its row says how head_swap trained it
    if swapped is not None and not swapped.trains:
        return Recipe(())
    if stage == "slim":
        phases = ((cfg.slim.epochs, 1.0, False),)
    elif swapped is not None and swapped.probe:  # the head alone, then (a fine-tune after it) everything, slower
        phases = ((t.epochs, 1.0, True),) + (
            ((t.epochs, cfg.head_swap.lp_ft_lr_factor, False),) if swapped.finetune else ())
    else:
        phases = ((t.epochs, 1.0, False),)
    if cfg.tune.epochs:
        phases = tuple((cfg.tune.epochs, factor, probe) for _, factor, probe in phases)
    distill = None
    if stage == "slim" and strategy.endswith("_distill"):  # the teacher: the model slim cut the variant from
        teacher = checkpoint.load_run_model(made_by["source_run"]).to(device).eval()
        distill = Distill(predict(teacher, data.train.x, device), cfg.slim.temperature, cfg.slim.alpha)
    return Recipe(phases, distill)


def untuned_params(model: torch.nn.Module, cfg: Config, data: Prepared) -> dict[str, float]:
    """The configuration `model` was trained with, as a trial's params.

    Dropout: what the model has now (the rates of its recorded dropout op when that wraps its head, which
    set_dropout would set again; else 0: the model's own layers, an MLP's model.dropout included, stay in
    every trial). Learning rate: train.lr as its fit used it (train.batch_and_lr: an auto batch scales it).
    Weight decay: train.weight_decay. The search space is widened to hold them (`holding`)."""
    done = [op for op in architecture(model)["ops"] if op["op"] == "dropout"]
    p_head, p_hidden = ((done[-1]["p_head"], done[-1]["p_hidden"])
                        if done and recorded_head(model) == f"{done[-1]['head']}.1" else (0.0, 0.0))
    t = cfg.train
    return {"head_dropout": p_head, "hidden_dropout": p_hidden,
            "lr": batch_and_lr(t.batch_size, t.lr, len(data.train.x), t.max_steps_per_epoch, t.lr_scaling)[1],
            "weight_decay": t.weight_decay}


def enqueue_untuned(study: optuna.Study, params: dict[str, float]) -> bool:
    """Queue the untuned configuration as the study's first trial, so the search starts from what the
    source model already does and its history shows that point; only into a new study (a resumed one has
    it already). Returns whether it was queued."""
    if study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={"untuned": True}, skip_if_exists=True)
    return True


def own_outputs(model: torch.nn.Module, x: torch.Tensor, device, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's probabilities and classes by its own decision (decision.identity: T = 1, argmax, an ordinal
    head's median), whatever rule it carries: what tuning selects on. A rule fitted on the selection rows
    raises their macro-F1 by an amount that varies from model to model (its offsets fit those rows' noise), and
    fitting one every epoch for the pruner would cost more than the epoch; so the pruner, the objective and
    the keep decision all judge the model's own decision, and the chosen model's rule is fitted once, after."""
    k = n_classes
    scores = decision.scores_of(predict(model, x, device), k)
    return decision.apply(decision.identity(k, decision.is_ordinal(model, k)), scores)


def val_values(model: torch.nn.Module, data: Prepared, device) -> dict[str, float]:
    """val/* classification metrics of `model` by its own decision (`own_outputs`): what a trial returns its
    objective from, and what the tune stage scores the untuned model with, like for like."""
    proba, pred = own_outputs(model, data.val.x, device, data.n_classes)
    return metrics.prefixed("val", metrics.classification(data.val.c.numpy(), proba, pred))


def metric_value(out: torch.Tensor, data: Prepared, metric: str, ordinal: bool) -> float:
    """The objective on the validation split from raw outputs (N, out), by the model's own decision, as
    `val_values` scores the trained model: what the pruner watches each epoch."""
    proba, pred = decision.apply(decision.identity(data.n_classes, ordinal), decision.scores_of(out, data.n_classes))
    c = data.val.c.numpy()
    return metrics.log_loss(c, proba) if metric == "val/log_loss" else metrics.f1_macro(c, pred, data.n_classes)


def improvement(c: np.ndarray, tuned: tuple[np.ndarray, np.ndarray], untuned: tuple[np.ndarray, np.ndarray],
                metric: str, seed: int = 0, n_boot: int = 1000) -> tuple[float, float]:
    """(gain, noise) of the tuned model over the untuned one on the selection rows: `gain` the objective's
    change (positive: better; log loss falls), `noise` its paired bootstrap standard error, both models scored on
    the same resamples of the rows (classes `c`; `tuned` and `untuned` each (probabilities, classes))."""
    k = tuned[0].shape[1]
    if metric == "val/log_loss":
        def row_loss(proba: np.ndarray) -> np.ndarray:
            return -np.log(np.clip(proba[np.arange(len(c)), c], 1e-15, 1.0))

        d = row_loss(untuned[0]) - row_loss(tuned[0])
        samples = np.concatenate([counts @ d / len(c) for counts in stats.count_blocks(len(c), n_boot, seed)])
        return float(d.mean()), float(samples.std(ddof=1))
    boot = stats.bootstrap(c, {"tuned": tuned[1], "untuned": untuned[1]}, k, n_boot=n_boot, seed=seed)
    gain = boot.estimates["tuned"]["f1_macro"] - boot.estimates["untuned"]["f1_macro"]
    return gain, float(np.std(boot.samples["tuned"]["f1_macro"] - boot.samples["untuned"]["f1_macro"], ddof=1))


def keeps(gain: float, noise: float) -> bool:
    """Whether a tuned model is kept over the untuned one: its gain on the selection rows must exceed the noise
    of those rows (`improvement`), else the search maximum is the winner's curse: the best of n draws."""
    return gain > noise


def train_config(model: torch.nn.Module, params: dict[str, float], data: Prepared, cfg: Config, seed: int,
                 recipe: Recipe, on_epoch=None) -> list:
    """Train `model` in place as a trial does: from the weights it holds (the caller loads the source model's
    start), its head and hidden dropout set to the configuration's, then each phase of `recipe` with the
    configuration's learning rate (times the phase's factor) and weight decay, and the untuned run's batch and
    early stopping. The one home of what a configuration trains, so the best one refitted on another fold
    (convert, cross-fitted) trains exactly the same way. Returns each phase's History."""
    k = data.n_classes
    head = find_head(model, data.n_features, recorded_head(model), n_out=1 if k == 2 else k)
    head_name, _ = set_dropout(model, head, params["head_dropout"], params["hidden_dropout"])
    mark_start(model)  # a tuned model tuned again retrains from here
    t = cfg.train
    batch = batch_and_lr(t.batch_size, t.lr, len(data.train.x), t.max_steps_per_epoch, t.lr_scaling)[0]
    hists, done = [], 0
    for epochs, factor, head_only in recipe.phases:
        def phase_epoch(epoch, logs, val_out, done=done):  # one epoch count over the phases, as the pruner needs
            on_epoch(done + epoch, logs, val_out)

        hists.append(fit(model, data.train, data.val, classification_task(k), epochs=epochs, batch_size=batch,
                         lr=params["lr"] * factor, weight_decay=params["weight_decay"], patience=t.patience,
                         seed=seed, device=resolve_device(t.device), on_epoch=on_epoch and phase_epoch,
                         params=freeze_backbone(model, head_name) if head_only else None,
                         distill=recipe.distill, class_weight=t.class_weight, stop=stop.check,
                         lr_schedule=t.lr_schedule, label_smoothing=t.label_smoothing))
        unfreeze(model)
        done += hists[-1].epochs
    return hists


def objective(trial: optuna.Trial, job: Job, gate: _Gate) -> float:
    cfg, data = job.cfg, job.data
    gate.release()  # the trial exists now: other local workers may count it
    params = {name: trial.suggest_float(name, low, high, log=log)
              for name, (low, high, log) in (job.space or search_space(cfg)).items()}
    name = f"trial_{trial.number}"
    untuned = {"untuned": "true"} if trial.user_attrs.get("untuned") else {}
    fold = {"fold": str(data.fold)} if data.fold is not None else {}  # cross-fitted: the fold whose study it is
    with tracking.start(name, "tune", strategy=name, parent=job.stage_run, killed_on=(optuna.TrialPruned,),
                        tags={"split_key": data.split_key, **fold, "optuna_study": job.study_name,
                              "optuna_trial": str(trial.number), "seed": str(job.train_seed), **untuned}) as run_id:
        trial.set_user_attr("mlflow_run_id", run_id)
        tracking.log_params({**{f"trial.{k}": v for k, v in params.items()}, "optuna.study": job.study_name,
                             "optuna.trial": trial.number, **job.cfg.flat()})
        model = checkpoint.rebuild(job.architecture, job.state)  # the source model's start, never its converged weights
        ordinal = decision.is_ordinal(model, data.n_classes)
        log = tracking.EpochLog()
        device = resolve_device(cfg.train.device)

        prunable = cfg.tune.pruner != "none"
        trained = [0]

        def on_epoch(epoch: int, logs: dict[str, float], val_out: torch.Tensor) -> None:
            trained[0] = epoch
            value = metric_value(val_out, data, cfg.tune.metric, ordinal)
            log.add(epoch, {**logs, cfg.tune.metric: value})
            # a report is a storage round trip (more across a network): made only for
            # a pruner to act on; the curve is in MLflow either way
            if prunable:
                trial.report(value, epoch)
                # asking reads the study's trials back from the storage (hyperband's pruner at every question,
                # the median's once a trial: HeldMedianPruner); before PRUNE_FROM the answer is no whatever they hold
                if epoch >= PRUNE_FROM and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            hists = train_config(model, params, data, cfg, job.train_seed, job.recipe, on_epoch)
        finally:
            log.flush()  # a pruned trial keeps its curve up to the epoch it was stopped
            trial.set_user_attr("epochs", trained[0])
        values = val_values(model, data, device)
        tracking.log_final_metrics({**values, "cost/train_seconds": sum(h.seconds for h in hists)})
        if could_be_best(trial.study, values[cfg.tune.metric]):
            checkpoint.log_state(model, registry.serving_meta(data))
        else:
            tracking.set_tags({"state": NOT_KEPT})
        return values[cfg.tune.metric]


# a trial run's tag `state` when it keeps no weights: why, and what to use instead
NOT_KEPT = ("not kept: behind the study's best trial when it finished; the tune run keeps the best trial's model, "
            "or rerun a study with these params")


def could_be_best(study: optuna.Study, value: float) -> bool:
    """Whether a trial that scored `value` may end as the study's best: at least as good as every trial complete
    so far. Only such a trial keeps its weights (state/): tune loads the best trial's model, and no trial that
    was behind when it finished can become the best later, so the others' weights would never be read."""
    done = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        return True
    return value >= max(done) if study.direction == optuna.study.StudyDirection.MAXIMIZE else value <= min(done)


class _Gate:
    """The local workers' lock, held from the count check until the trial exists; releases once."""

    def __init__(self, lock) -> None:
        self.lock, self.held = lock, False

    def acquire(self) -> None:
        # a worker killed while holding the lock must not stall the others: after 30 s go on without
        # it (the cost is at most one trial beyond the count)
        if self.lock is not None:
            self.held = self.lock.acquire(timeout=30)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()


def work(job: Job, lock=None) -> None:
    """One worker: run trials until the study holds `job.target` of them (or the deadline passes). `lock` is
    the gate shared with the other local workers; in the command's pool, the pool's own (jobs.pool_lock)."""
    gate = _Gate(lock if lock is not None else jobs.pool_lock())
    with quiet_optuna():
        backend.setup(job.tracking_uri)
        sampler = optuna.samplers.TPESampler(seed=job.seed, n_startup_trials=4)
        study = optuna.load_study(study_name=job.study_name, storage=make_storage(job.storage), sampler=sampler,
                                  pruner=make_pruner(job.cfg, job.epochs))
        deadline = time.time() + job.timeout if job.timeout else None
        awaited: set[int] | None = None  # trials running when the count was reached
        while deadline is None or time.time() < deadline:
            stop.check()  # told to stop between trials (jobs.interrupt): start none
            gate.acquire()
            try:
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, its run ended, retried
                n, waiting = counted(study)
                if n >= job.target and not waiting:
                    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                    awaited = running if awaited is None else awaited & running
                    if not awaited:
                        break
                    # wait for those trials only, in case one's worker died and it must be retried here
                    gate.release()
                    time.sleep(1.0)
                    continue
                # catch: a trial that raises ends FAIL (its run FAILED) and the worker goes on to the next
                study.optimize(lambda t: objective(t, job, gate), n_trials=1, catch=(Exception,))
            finally:
                gate.release()


def _spawned_worker(job: Job, lock) -> None:
    """A worker process of run_workers: one torch thread, deaf to Ctrl+C (the command stops it); a SIGTERM
    ends its trial FAIL and its run KILLED, and it exits without a traceback; so does the command's death."""
    jobs.become_worker()
    jobs.watch_owner(os.getppid())  # its parent is the command (spawned, not forked from a server)
    use_threads(1)  # torch's and scikit-learn's pools, as in the command's pool workers (train.use_threads)
    signal.signal(signal.SIGTERM, jobs.interrupt)
    try:
        work(job, lock)
    except KeyboardInterrupt:
        sys.exit(143)


def run_workers(job: Job, n_workers: int, say) -> None:
    """`n_workers` workers, one torch thread each, each sampling with its own seed. Inside a command whose
    pool has that many workers (convert --jobs), they are the pool's: no interpreter to start. Otherwise this
    process is one of them and the others are spawned: working here too saves one interpreter's start-up
    (torch, mlflow and optuna imports: seconds) and keeps this core busy while they start (bench_tune.py).
    """
    backend.enable_concurrent_writes()  # workers, and the heartbeat, write to the store at once
    try:
        _run_workers(job, n_workers, say)
    finally:
        fold_log(job.storage)


def fold_log(url: str) -> None:
    """Move what an SQLite storage's write-ahead log holds into the file itself (a checkpoint): the workers end
    without closing their connections, so no last connection does it, and a copy of `optuna.db` alone would
    lack the trials still in `optuna.db-wal`. Best effort: a busy file is folded by its next user."""
    if not url.startswith("sqlite:///"):
        return
    import sqlite3

    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(url[len("sqlite:///"):],
                                                                                timeout=1)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _run_workers(job: Job, n_workers: int, say) -> None:
    """run_workers' workers: here, the command's pool's, or spawned beside this process."""
    if n_workers == 1:
        work(job)
        return
    jobs_of = [dataclasses.replace(job, seed=job.seed + 1000 * i) for i in range(n_workers)]
    if jobs.pool_size() == n_workers:
        say(f"tune: {n_workers} workers in the command's worker processes")
        jobs.run(work, [(j,) for j in jobs_of])
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch or SQLite state
    lock = ctx.Lock()
    procs = []
    for i in range(1, n_workers):
        p = ctx.Process(target=_spawned_worker, args=(jobs_of[i], lock), name=f"reg2cls-tune-{i}")
        with jobs.spawning():
            p.start()
        say(f"tune: worker {i} started (pid {p.pid})")
        procs.append(p)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        say("tune: worker 0 runs in this process")
        work(job, lock)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()  # workers turn SIGTERM into KeyboardInterrupt: their runs end KILLED
        for p in procs:
            p.join(30)
        raise
    finally:
        torch.set_num_threads(threads)
    dead = [p for p in procs if p.exitcode != 0]
    if dead:  # their runs, unless the others' heartbeat check has ended them; the tune stage then fails their
        tracking.end_orphans(status="FAILED")  # trials the same way (fail_abandoned_trials)
    for p in dead:
        say(f"tune: warning: worker {p.name} (pid {p.pid}) exited with code {p.exitcode}; "
            "its trial was failed and queued for a retry")


def end_orphaned_runs(study: optuna.Study) -> int:
    """End the MLflow runs of failed trials that their dead worker left RUNNING; returns how many."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and tracking.end_if_running(run_id, "FAILED"):
            n += 1
    return n


def figures(study: optuna.Study) -> dict[str, object]:
    """Optimisation history, parameter importances and slice plot as matplotlib figures (those that
    the study has enough finished trials for)."""
    from optuna.visualization import matplotlib as vis

    out = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"optuna_history.png": vis.plot_optimization_history, "optuna_slice.png": vis.plot_slice}
    if len(complete) >= 2:
        plots["optuna_importances.png"] = vis.plot_param_importances
    for name, plot in plots.items():
        if not complete:
            break
        with contextlib.suppress(Exception), warnings.catch_warnings():  # too few values for a plot: skip it
            warnings.simplefilter("ignore")  # "experimental" and "importances will be equal" notes
            ax = plot(study, target_name=(study.metric_names or ["Objective Value"])[0])  # the metric, named
            ax = ax.flat[0] if isinstance(ax, np.ndarray) else ax
            out[name] = ax.figure
    return out
