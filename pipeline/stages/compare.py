"""compare: the leaderboard read back from the store, the reference model, the report and the
registered champion."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from torch import nn

from .. import metrics, registry, report, tracking
from ..config import Config, UserError
from ..data import Prepared
from ..train import predict, resolve_device
from .common import classifier_metrics, stands_for


@dataclass
class Comparison:
    """The answer to "which conversion wins" for one convert run."""
    parent: str               # the convert run compared
    run_id: str               # the compare stage run
    board: pd.DataFrame       # the leaderboard, best first
    summary: list[str]        # the verdict, one line each
    champion: nn.Module
    champion_run: str         # the run that logged the champion
    registered: str           # registered model name
    version: str              # its version carrying the alias `champion`


LEADERBOARD_COLUMNS = {  # metric key -> leaderboard column
    "test/accuracy": "accuracy", "test/balanced_accuracy": "balanced_acc", "test/f1_macro": "f1_macro",
    "test/roc_auc": "roc_auc", "test/log_loss": "log_loss", "test/ece": "ece",
    "cost/params": "params", "cost/latency_ms_per_1k": "latency_ms", "cost/train_seconds": "train_s",
}
LOWER_IS_BETTER = {"test/log_loss", "test/ece", "cost/params", "cost/latency_ms_per_1k", "cost/train_seconds"}


def leaderboard(stage_runs: list[str], single_runs: list[str] = (), metric: str = "test/f1_macro",
                extra_runs: list = ()) -> pd.DataFrame:
    """One row per strategy or variant under `stage_runs`, plus one per run in `single_runs` (the tune
    stage: its best model) and per run object in `extra_runs`, read back from the store.

    Runs of one strategy with several seeds share a row: each column is their mean, `<col>_std` their
    standard deviation, `n` their count, `best_run` the one with the best validation macro-F1. Sorted
    by `metric`, best first; `pareto` marks rows no other row beats on both `metric` and params.
    """
    runs = [run for stage_run in stage_runs for run in tracking.children(stage_run)]
    runs += [tracking.get_run(r) for r in single_runs] + list(extra_runs)
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        strategy = run.data.tags.get("strategy") or ("tuned" if run.data.tags.get("stage") == "tune" else run.info.run_name)
        groups.setdefault((run.data.tags.get("stage", ""), strategy), []).append(run)
    rows = []
    for (stage, strategy), group in groups.items():
        row: dict[str, object] = {"stage": stage, "strategy": strategy, "n": len(group)}
        for key, col in LEADERBOARD_COLUMNS.items():
            values = [r.data.metrics[key] for r in group if key in r.data.metrics]
            row[col] = float(np.mean(values)) if values else float("nan")
            row[f"{col}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        best = max(group, key=lambda r: r.data.metrics.get("val/f1_macro", float("-inf")))
        row["best_run"] = best.info.run_id
        row["runs"] = ",".join(r.info.run_id for r in group)
        rows.append(row)
    columns = ["stage", "strategy", "n"] + [c for col in LEADERBOARD_COLUMNS.values() for c in (col, f"{col}_std")]
    frame = pd.DataFrame(rows, columns=columns + ["best_run", "runs"])
    col = LEADERBOARD_COLUMNS.get(metric, metric.split("/", 1)[-1])
    frame = frame.sort_values(col, ascending=metric in LOWER_IS_BETTER, kind="stable", na_position="last")
    frame = frame.reset_index(drop=True)
    sign = 1 if metric in LOWER_IS_BETTER else -1  # pareto_front wants (cost, score): lower cost, higher score
    points = [(p if p == p else float("inf"), -sign * v) for p, v in zip(frame["params"], frame[col])]
    front = set(report.pareto_front(points))
    frame["pareto"] = [i in front and frame["params"].iloc[i] == frame["params"].iloc[i] for i in range(len(frame))]
    return frame


def display(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard for people: `mean ± std` where a row has several seeds, no run ids."""
    out = board[["stage", "strategy", "n"]].copy()
    for col in LEADERBOARD_COLUMNS.values():
        out[col] = [("" if m != m else f"{m:.4g}" if not s > 0 else f"{m:.3g} ± {s:.2g}")
                    for m, s in zip(board[col], board[f"{col}_std"])]
    out["pareto"] = ["*" if p else "" for p in board["pareto"]]
    return out


def compare(cfg: Config, data: Prepared, parent: str) -> Comparison:
    """The answer to "which conversion wins": every strategy and variant of the convert run `parent`
    read back from the store (mean ± std over seeds), a scikit-learn reference, the report, and the
    champion — the best network by the mean of `compare.metric` — registered as a pyfunc that takes
    the raw columns. Artifacts go on the parent run: leaderboard.csv, leaderboard.md, report.html.
    Always runs: it only reads what the stages logged, and registers nothing twice."""
    tags = tracking.get_run(parent).data.tags
    stage_runs = [tags[k] for k in ("head_swap_run", "slim_run") if k in tags]
    singles = [tags["tune_run"]] if "tune_run" in tags else []
    c = cfg.compare
    registered = c.register or f"reg2cls-{tracking.experiment_name(parent)}"
    with tracking.start("compare", "compare", parent=parent, tags={"split_key": data.split_key}) as run_id:
        reference = [_reference_run(cfg, data)] if c.reference else []
        board = leaderboard(stage_runs, singles, c.metric, extra_runs=reference)
        networks = board[board["stage"].isin(["head_swap", "slim", "tune"]) & (board["strategy"] != "threshold")]
        if networks.empty:
            raise UserError("no trained network among the runs to compare; run convert with a trained strategy")
        top = networks.iloc[0]  # the board is sorted by the metric's mean, best first
        champion_run = top["best_run"]
        model = tracking.load_run_model(champion_run)
        device = resolve_device(cfg.train.device)
        model.to(device)
        proba = metrics.probabilities(predict(model, data.test.x, device), data.n_classes)
        col = LEADERBOARD_COLUMNS.get(c.metric, c.metric)
        summary = [f"Champion: {top['strategy']} ({top['stage']}), {c.metric} {top[col]:.4f}"
                   + (f" ± {top[col + '_std']:.3f} over {top['n']} seeds" if top["n"] > 1 else ""),
                   f"Test accuracy {top['accuracy']:.4f}, macro-F1 {top['f1_macro']:.4f}, log loss {top['log_loss']:.4f}, "
                   f"{top['params']:.0f} parameters",
                   f"Data: {cfg.data.source}, target {cfg.data.target}, classes {', '.join(data.class_names)}",
                   f"Parent run {parent}; registered model {registered}, alias champion"]
        first = board.iloc[0]
        if first["strategy"] != top["strategy"] or first["stage"] != top["stage"]:
            summary.insert(1, f"Note: {first['strategy']} ({first['stage']}) scores better on {c.metric} than every "
                              "converted network")
        version = registry.register_champion(
            model, {"preprocessor": asdict(data.preprocessor), "class_names": data.class_names},
            _raw_example(data), registered,
            description=" ".join(summary), tags={"champion_run": champion_run, "strategy": str(top["strategy"]),
                                                 "parent_run": parent})
        summary[-1] += f" (version {version})"
        tracking.set_tags({"champion": top["strategy"], "champion_run": champion_run,
                           "registered_model": registered, "registered_version": version})
        stands_for(champion_run)
        images = {"Per strategy": report.png(report.bars_figure(board, c.metric)),
                  "Confusion matrix": report.png(report.confusion_figure(data.test.c.numpy(), proba.argmax(1), data.class_names)),
                  "ROC": report.png(report.roc_figure(data.test.c.numpy(), proba, data.class_names)),
                  "Reliability": report.png(report.reliability_figure(data.test.c.numpy(), proba))}
        for title, run, path in (("Slimming: Pareto", tags.get("slim_run"), "pareto.png"),
                                 ("Optuna: optimisation history", tags.get("tune_run"), "optuna_history.png")):
            image = tracking.read_artifact(run, path) if run else None
            if image:
                images[title] = image
        shown = display(board)
        tracking.log_files_to(parent, {
            "leaderboard.csv": board.to_csv(index=False), "leaderboard.md": report.markdown(shown),
            "report.html": report.html(f"reg2cls: {cfg.experiment}", summary, shown, images)})
    tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run, "model_run": champion_run,
                       "registered_model": registered, "registered_version": version}, run_id=parent)
    return Comparison(parent, run_id, board, summary, model, champion_run, registered, version)


def _raw_example(data: Prepared) -> pd.DataFrame:
    """A few rows of the raw input columns (numbers as float64, so missing values stay valid)."""
    frame = data.frame[data.preprocessor.columns].head(5).copy()
    for col in data.preprocessor.numeric:
        frame[col] = frame[col].astype("float64")
    for col in data.preprocessor.categories:
        frame[col] = frame[col].astype(str)
    return frame


def _reference_run(cfg: Config, data: Prepared):
    """scikit-learn's HistGradientBoostingClassifier on the same splits: is the network competitive?"""
    import time

    from sklearn.ensemble import HistGradientBoostingClassifier

    with tracking.start("reference_hgb", "compare", strategy="reference_hgb",
                        tags={"split_key": data.split_key}) as run_id:
        t = time.perf_counter()
        clf = HistGradientBoostingClassifier(random_state=cfg.seed).fit(data.train.x.numpy(), data.train.c.numpy())
        seconds = time.perf_counter() - t
        values = classifier_metrics(data, lambda split: clf.predict_proba(split.x.numpy()))
        x = np.random.default_rng(0).normal(size=(1000, data.n_features)).astype(np.float32)
        tracking.log_params({"model": "sklearn.ensemble.HistGradientBoostingClassifier", "seed": cfg.seed})
        tracking.log_metrics({**values, "cost/train_seconds": seconds,
                              "cost/latency_ms_per_1k": metrics.median_ms(lambda: clf.predict_proba(x), repeats=5)})
    return tracking.get_run(run_id)
