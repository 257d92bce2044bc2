"""compare: the stage that answers "which conversion wins" for a convert run: the leaderboard (leaderboard.py)
over every strategy and variant, the reference rows and the floor; the verdict and the report (verdict.py);
the champion registered (champion.py); the answer on the convert run, where people look first.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from .. import jobs, metrics, registry, report, tracking
from ..config import Config, UserError, registered_name
from ..data import Prepared
from .champion import register
from .common import log_predictions
from .leaderboard import PRIOR, RUN_COLUMNS, leaderboard, pooled_predictions, strategy_runs
from .reference import fit_reference, reference_runs
from .verdict import EXPERIMENT_NOTE, display, parent_note, tuning, verdict


@dataclass
class Comparison:
    """The answer to "which conversion wins" for one convert run."""
    parent: str               # the convert run compared
    run_id: str               # the compare stage run
    board: pd.DataFrame       # the leaderboard, best on validation first
    summary: list[str]        # the verdict, one line each
    champion: nn.Module
    champion_run: str         # the run that logged the champion
    registered: str           # registered model name
    version: str              # its version carrying the alias `champion`


def compare(cfg: Config, splits: list[Prepared], parent: str, reference: Future | None = None) -> Comparison:
    """The answer to "which conversion wins": every strategy and variant of the convert run `parent` read back
    from the store, a scikit-learn reference and the class-prior floor on the same splits, the verdict, the report,
    and the champion (`choose`: the simplest row the validation rows cannot tell from the best) registered as a
    pyfunc that takes the raw columns; nothing is registered when the champion is the floor. Artifacts go on the
    parent run: leaderboard.csv, leaderboard.md, report.html. Always runs: it only reads what the stages logged,
    and registers nothing twice. `reference`: the reference's fit (`fit_reference`) when convert started it
    earlier (jobs.submit), else it is fitted here."""
    data = splits[0]  # the champion's own split: slim and tune refine on it, its model was trained on it
    tags = tracking.get_run(parent).data.tags
    runs, tune_run = _stage_runs(tags)
    c = cfg.compare
    registered = registered_name(cfg, tracking.experiment_name(parent))
    with tracking.start("compare", "compare", parent=parent, tags={"split_key": data.split_key}) as run_id:
        if c.reference:
            fitted = jobs.result(reference) if reference is not None else fit_reference(cfg, splits)
            runs += reference_runs(cfg, splits, fitted)
        jobs.close()  # the last worker task is done: the workers' memory goes back before the champion's check
        # before it says done, the champion loads and predicts in a fresh process elsewhere: it starts now, its
        # imports overlap the choice and the registration, its load the report
        with registry.checking_loads() if c.check_load else contextlib.nullcontext(None) as check:
            runs.append(_prior_run(cfg, splits))
            board = leaderboard(runs, c.metric, seed=cfg.seed)
            top, summary, model, registered, version = _ship(cfg, splits, board, tags, parent, registered)
            champion_run = top["best_run"]
            if version and check:
                check(f"models:/{registered}/{version}")
            tracking.describe_experiment(EXPERIMENT_NOTE)
            tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run,
                               "registered_model": registered, "registered_version": version})
            table = _log_report(cfg, board, top, summary, data.class_names, tags, tune_run, parent,
                                {r.info.run_id: r for r in runs})
    tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run,
                       **({"model_run": champion_run} if version else {}),
                       "registered_model": registered, "registered_version": version,
                       "mlflow.note.content": parent_note(summary, top, parent, registered, version, table)},
                      run_id=parent)
    tracking.log_metrics(_champion_metrics(top, c.metric), run_id=parent)
    return Comparison(parent, run_id, board, summary, model, champion_run, registered, version)


def _ship(cfg: Config, splits: list[Prepared], board: pd.DataFrame, tags: dict[str, str], parent: str,
          registered: str) -> tuple[pd.Series, list[str], nn.Module | None, str, str]:
    """The champion's row (`choose` marked it), the verdict's sentences, and the champion registered as
    `registered` (`register`): (row, sentences, model, registered name, version). When the floor is the champion
    nothing is registered: no model, and "" for the name and the version."""
    if not board["champion"].any():
        raise UserError("no trained classifier among the runs to compare; run convert first")
    top = board[board["champion"]].iloc[0]
    checks = [value for key, value in sorted(tags.items()) if key.startswith("check.")]
    summary = verdict(board, cfg.compare.metric, checks)
    summary.append(f"Data: {cfg.data.source}, target {cfg.data.target}, classes {', '.join(splits[0].class_names)}")
    if top["strategy"] == PRIOR:  # no model beats chance: the recommendation is to ship none
        summary.append(f"Parent run {parent}; nothing registered")
        return top, summary, None, "", ""
    summary.append(f"Parent run {parent}; registered model {registered}, alias champion")
    model, version = register(cfg, splits, top, summary, parent, registered)
    summary[-1] += f" (version {version})"
    return top, summary, model, registered, version


def _stage_runs(tags: dict[str, str]) -> tuple[list, object]:
    """The runs of the convert run (its `tags`) to compare: every head-swap strategy and slim variant, and the
    tuned model's run (cross-fitted, each fold's); and the tune stage run (None when it did not run)."""
    runs = [r for k in ("head_swap_run", "slim_run") if k in tags for r in strategy_runs(tags[k])]
    tune_run = tracking.get_run(tags["tune_run"]) if "tune_run" in tags else None
    # the best trial's model on the tune run; cross-fitted, each fold's tune run (the model its study kept: the
    # tuning procedure). None when no trial beat the untuned model (tag tuned=no_better) on any fold: that model
    # already has its row, a tuned row would be a copy
    if tune_run is not None and tune_run.data.tags.get("tuned") != "no_better":
        fold_runs = tune_run.data.tags.get("fold_runs")
        runs += [tracking.get_run(r) for r in fold_runs.split(",")] if fold_runs else [tune_run]
    return runs, tune_run


def _log_report(cfg: Config, board: pd.DataFrame, top: pd.Series, summary: list[str], class_names: list[str],
                tags: dict[str, str], tune_run, parent: str, runs: dict) -> str:
    """The figures, each run's description and the artifacts on the convert run: leaderboard.csv,
    leaderboard.md and report.html (the `summary` with why there is no tuned row, when there is none). Returns
    the leaderboard's markdown. `runs`: the compared runs by id, as read for the leaderboard."""
    metric = cfg.compare.metric
    pooled = pooled_predictions([runs[run] for run in str(top["runs"]).split(",")])
    images, notes = report.figures(board, pooled, metric, class_names, tags)
    report.describe_runs(board, metric, tags, runs)
    summary += tuning(tune_run)
    shown = display(board, metric)
    table = report.markdown(shown)
    tracking.log_files_to(parent, {
        "leaderboard.csv": board.to_csv(index=False), "leaderboard.md": table,
        "report.html": report.html(f"reg2cls: {cfg.experiment}", summary, shown, images, notes)})
    return table


def _champion_metrics(top: pd.Series, metric: str) -> dict[str, float]:
    """The champion's figures as the convert run's metrics `champion/*`: columns of the MLflow runs table."""
    return {f"champion/{metric}": top[RUN_COLUMNS[metric]], "champion/test_f1_macro": top["f1_macro"],
            "champion/test_f1_macro_ci_low": top["f1_macro_ci_low"],
            "champion/test_f1_macro_ci_high": top["f1_macro_ci_high"],
            **{f"champion/{name}{end}": top[f"{name}{end}"] for name in ("vs_threshold", "vs_prior")
               for end in ("", "_low", "_high")}}


def _prior_run(cfg: Config, splits: list[Prepared]):
    """The floor's run (`prior`): a classifier that ignores the features. Its probabilities are the training
    rows' class frequencies and its classes are drawn at those frequencies (seeded), which scores macro-F1 1/K
    in expectation whatever the class balance: chance. Scored like every row, on validation and on test."""
    test, val, val_proba = [], [], []
    for data in splits:
        rng = np.random.default_rng([cfg.seed, data.fold or 0])
        freq = np.bincount(data.train.c.numpy(), minlength=data.n_classes) / len(data.train.c)
        test.append((data, np.tile(freq, (len(data.test.c), 1)), rng.choice(data.n_classes, len(data.test.c), p=freq)))
        val.append((data.val.c.numpy(), rng.choice(data.n_classes, len(data.val.c), p=freq)))
        val_proba.append(np.tile(freq, (len(data.val.c), 1)))
    with tracking.start(PRIOR, "compare", strategy=PRIOR, tags={"split_key": splits[0].split_key, "seed": str(cfg.seed),
                                                                 "folds": str(len(splits))}) as run_id:
        tracking.log_params({"model": "class prior: classes drawn at their training frequencies, features ignored",
                             "seed": cfg.seed, "folds": len(splits)})
        values = metrics.prefixed("val", metrics.classification(np.concatenate([v[0] for v in val]),
                                                                np.concatenate(val_proba),
                                                                np.concatenate([v[1] for v in val])))
        values |= log_predictions(test, cfg.seed, val)
        tracking.log_metrics({**values, "cost/params": 0, "cost/train_seconds": 0.0})
    return tracking.get_run(run_id)

