"""compare: the leaderboard read back from the store, the reference model, the verdict, the report and
the registered champion.

Selection and reporting are kept apart: rows are ordered and the champion chosen by a validation metric
(`compare.metric`, mean over the runs of a row: seeds and folds); test metrics are recomputed from the
test predictions each run logged (pooled over folds when cross-fitted) and only reported, each with a
seeded 95% bootstrap interval and the paired difference to `threshold` and to the champion.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from torch import nn

from .. import decision, jobs, metrics, registry, report, stats, tracking
from ..config import COMPARE_METRICS, Config, UserError
from ..data import Prepared
from .common import log_predictions, stands_for

RUN_COLUMNS = {  # metric key -> leaderboard column, averaged over a row's runs (seeds and folds)
    "val/f1_macro": "val_f1_macro", "val/accuracy": "val_accuracy", "val/balanced_accuracy": "val_balanced_acc",
    "val/roc_auc": "val_roc_auc", "val/log_loss": "val_log_loss", "val/ece": "val_ece",
    "cost/params": "params", "cost/latency_ms_per_1k": "latency_ms", "cost/train_seconds": "train_s",
}
TEST_COLUMNS = {  # metrics.classification key -> leaderboard column, from the row's pooled test predictions
    "accuracy": "accuracy", "balanced_accuracy": "balanced_acc", "f1_macro": "f1_macro", "roc_auc": "roc_auc",
    "log_loss": "log_loss", "ece": "ece",
    "f1_macro_argmax": "f1_macro_argmax",  # without the decision rule: what the rule adds, row by row
}
LOWER_IS_BETTER = {metric for metric, direction in COMPARE_METRICS.items() if direction == "minimize"}
CANDIDATES = ("head_swap", "slim", "tune")  # stages whose rows are our classifiers; the reference row is not one


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


@dataclass
class Predictions:
    """A row's test predictions, pooled over its folds: `proba[s]` holds seed s's probabilities for the test
    rows `rows` (positions in the data table), whose classes are `c`, and `pred[s]` the classes its decision
    rule picked (what every class metric, the bootstrap and the confusion matrix use)."""
    rows: np.ndarray   # (n,) sorted
    c: np.ndarray      # (n,)
    proba: np.ndarray  # (S, n, K)
    pred: np.ndarray   # (S, n)

    def restricted(self, rows: np.ndarray) -> Predictions:
        at = np.searchsorted(self.rows, rows)
        return Predictions(rows, self.c[at], self.proba[:, at], self.pred[:, at])


def strategy_runs(stage_run: str) -> list:
    """The strategy or variant runs under a stage run; under a cross-fitted stage, those of every fold run."""
    runs = []
    for run in tracking.children(stage_run):
        if "strategy" in run.data.tags:
            runs.append(run)
        elif "fold" in run.data.tags:  # convert -> head_swap -> fold_k -> strategy
            runs += tracking.children(run.info.run_id)
    return runs


def pooled_predictions(group: list) -> Predictions | None:
    """The test predictions of a row's runs, concatenated over folds for each seed; None when a run logged
    none (a run from before reg2cls logged them)."""
    by_seed: dict[str, list[dict]] = {}
    for run in group:
        logged = tracking.read_predictions(run.info.run_id)
        if logged is None:
            return None
        by_seed.setdefault(run.data.tags.get("seed", ""), []).append(logged)
    parts = []
    for logged in by_seed.values():
        rows = np.concatenate([p["rows"] for p in logged])
        order = np.argsort(rows, kind="stable")
        parts.append((rows[order], np.concatenate([p["c"] for p in logged])[order],
                      np.concatenate([p["proba"] for p in logged])[order],
                      np.concatenate([p["pred"] for p in logged])[order]))
    rows = parts[0][0]
    if any(not np.array_equal(p[0], rows) for p in parts):  # a seed that ran on other folds: not comparable
        return None
    return Predictions(rows, parts[0][1], np.stack([p[2] for p in parts]), np.stack([p[3] for p in parts]))


def leaderboard(runs: list, metric: str = "val/f1_macro", seed: int = 0, chosen: str | None = None,
                n_boot: int = 1000) -> pd.DataFrame:
    """One row per (stage, strategy) of the FINISHED `runs` (strategy and variant runs, the tune stage run
    for its best model, the reference run), best on `metric` (a validation metric) first.

    Validation and cost columns are means over the row's runs (`<col>_std` over them, `n` their count). Test
    columns come from the row's test predictions, pooled over folds, averaged over seeds;
    `f1_macro` and `accuracy` carry a 95% bootstrap interval (`_ci_low`, `_ci_high`, resampling test rows,
    `seed`), and `vs_threshold` / `vs_champion` the paired difference in test macro-F1 to those rows on the
    same resamples. `test_rows` is how many test rows a row was scored on, `scope` where they come from.
    `best_run` is the run standing for the row (best on validation among its runs on the first split);
    `champion` marks the row chosen (`champion_index`; `chosen` is the head-swap strategy it descends from);
    `pareto` marks rows no other row beats on both `metric` and params.
    """
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            tags = run.data.tags
            strategy = tags.get("strategy") or ("tuned" if tags.get("stage") == "tune" else run.info.run_name)
            groups.setdefault((tags.get("stage", ""), strategy), []).append(run)
    rows, predictions = [], {}
    for (stage, strategy), group in groups.items():
        row: dict[str, object] = {"stage": stage, "strategy": strategy, "n": len(group)}
        for key, col in RUN_COLUMNS.items():
            values = [r.data.metrics[key] for r in group if key in r.data.metrics]
            row[col] = float(np.mean(values)) if values else float("nan")
            row[f"{col}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        pooled = pooled_predictions(group)
        if pooled is not None:
            predictions[strategy, stage] = pooled
            per_seed = [metrics.classification(pooled.c, p, d) for p, d in zip(pooled.proba, pooled.pred)]
            for key, col in TEST_COLUMNS.items():
                row[col] = float(np.mean([m[key] for m in per_seed]))
                spread = np.std([m[key] for m in per_seed], ddof=1) if len(per_seed) > 1 else np.nan
                row[f"{col}_std"] = float(spread)
            row["test_rows"] = len(pooled.rows)
        folds = {r.data.tags.get("fold") for r in group} - {None}
        n_folds = max(len(folds), int(group[0].data.tags.get("folds", 1)))  # the reference: one run, every fold
        row["scope"] = (f"pooled over {n_folds} folds" if n_folds > 1 else f"fold {folds.pop()} only" if folds
                        else "test split")
        first_split = [r for r in group if r.data.tags.get("fold") in (None, "0")] or group
        row["best_run"] = max(first_split, key=lambda r: r.data.metrics.get("val/f1_macro", float("-inf"))).info.run_id
        row["runs"] = ",".join(r.info.run_id for r in group)
        row["excluded"] = next((r.data.tags["training"] for r in group if "training" in r.data.tags), "")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in (*TEST_COLUMNS.values(), "test_rows"):
        if col not in frame:
            frame[col] = float("nan")
    col = RUN_COLUMNS[metric]
    frame = frame.sort_values(col, ascending=metric in LOWER_IS_BETTER, kind="stable", na_position="last")
    frame = frame.reset_index(drop=True)
    frame["champion"] = False
    top = champion_index(frame, col, metric, chosen)
    if top is not None:
        frame.loc[top, "champion"] = True
    _intervals(frame, predictions, seed, n_boot)
    sign = 1 if metric in LOWER_IS_BETTER else -1  # pareto_front wants (cost, score): lower cost, higher score
    points = [(p if p == p else float("inf"), -sign * v) for p, v in zip(frame["params"], frame[col])]
    front = set(report.pareto_front(points))
    frame["pareto"] = [i in front and frame["params"].iloc[i] == frame["params"].iloc[i] for i in range(len(frame))]
    return frame


def champion_index(board: pd.DataFrame, col: str, metric: str, chosen: str | None = None) -> int | None:
    """The champion's row: of our own classifiers, the best on `metric` (its column `col`, the mean over the
    row's runs). When cross-fitted, the head-swap strategy was `chosen` on validation macro-F1 averaged over
    folds, and only it and what slim and tune made from it compete: the other strategies lost there already."""
    candidates = board[board["stage"].isin(CANDIDATES) & board[col].notna() & (board["excluded"] == "")]
    if chosen is not None:
        candidates = candidates[(candidates["stage"] != "head_swap") | (candidates["strategy"] == chosen)]
    if candidates.empty:
        return None
    scores = candidates[col]
    return int(scores.idxmin() if metric in LOWER_IS_BETTER else scores.idxmax())


def _intervals(board: pd.DataFrame, predictions: dict[tuple[str, str], Predictions], seed: int, n_boot: int) -> None:
    """Bootstrap intervals and paired differences into `board`, in place. Rows scored on the same test rows
    share one set of resamples; a row scored on fewer rows (slim and tune, refined on one fold) is compared
    with `threshold` and the champion on those rows only."""
    for col in ("f1_macro_ci_low", "f1_macro_ci_high", "accuracy_ci_low", "accuracy_ci_high",
                "vs_threshold", "vs_threshold_low", "vs_threshold_high",
                "vs_champion", "vs_champion_low", "vs_champion_high"):
        board[col] = float("nan")
    keys = [(s, st) for s, st in zip(board["strategy"], board["stage"])]
    threshold = ("threshold", "head_swap")
    champion = next((key for key, top in zip(keys, board["champion"]) if top), None)
    boots = {}  # one bootstrap per set of test rows, holding every row that was scored on all of them
    for key in keys:
        if key in predictions and predictions[key].rows.tobytes() not in boots:
            rows = predictions[key].rows
            covering = {k: p.restricted(rows) for k, p in predictions.items() if np.isin(rows, p.rows).all()}
            first = covering[key]
            boots[rows.tobytes()] = stats.bootstrap(first.c, {k: p.pred for k, p in covering.items()},
                                                    first.proba.shape[2], n_boot=n_boot, seed=seed)
    for i, key in enumerate(keys):
        if key not in predictions:
            continue
        own = boots[predictions[key].rows.tobytes()]
        for m in ("f1_macro", "accuracy"):
            ci = own.interval(key, m)
            board.loc[i, [f"{m}_ci_low", f"{m}_ci_high"]] = ci.low, ci.high
        for name, ref in (("vs_threshold", threshold), ("vs_champion", champion)):
            if ref not in predictions:
                continue
            # on the rows both were scored on: this row's, or the other's when it has fewer (slim and tune: fold 0)
            for boot in (own, boots.get(predictions[ref].rows.tobytes())):
                if boot is not None and key in boot.samples and ref in boot.samples:
                    d = boot.difference(key, ref, "f1_macro")
                    board.loc[i, [name, f"{name}_low", f"{name}_high"]] = d.estimate, d.low, d.high
                    break


def display(board: pd.DataFrame, metric: str = "val/f1_macro") -> pd.DataFrame:
    """The leaderboard for people: the selection metric, test macro-F1 and accuracy with their 95% intervals,
    the paired differences, `mean ± std` where a row has several runs; no run ids."""
    def num(m, s=float("nan")) -> str:
        return "" if m != m else f"{m:.4g}" if not s > 0 else f"{m:.3g} ± {s:.2g}"

    def ci(m, low, high) -> str:
        return "" if m != m else f"{m:.3f} [{low:.3f}, {high:.3f}]"

    def diff(m, low, high) -> str:
        return "" if m != m else f"{m:+.3f} [{low:+.3f}, {high:+.3f}]"

    col = RUN_COLUMNS[metric]
    out = board[["stage", "strategy", "n"]].copy()
    out["role"] = ["champion" if top else "bar" if s == "threshold" else "reference" if s == "reference_hgb" else
                   f"excluded: {why}" if why else "" for s, top, why in zip(board["strategy"], board["champion"],
                                                                             board["excluded"])]
    out[metric] = [num(m, s) for m, s in zip(board[col], board[f"{col}_std"])]
    out["test f1_macro [95% CI]"] = [ci(*v) for v in zip(board["f1_macro"], board["f1_macro_ci_low"],
                                                          board["f1_macro_ci_high"])]
    out["vs threshold"] = [diff(*v) for v in zip(board["vs_threshold"], board["vs_threshold_low"],
                                                 board["vs_threshold_high"])]
    out["test accuracy [95% CI]"] = [ci(*v) for v in zip(board["accuracy"], board["accuracy_ci_low"],
                                                         board["accuracy_ci_high"])]
    for name in ("roc_auc", "log_loss", "ece", "params", "train_s"):
        out[name] = [num(m) for m in board[name]]
    out["scope"] = board["scope"]
    out["pareto"] = ["*" if p else "" for p in board["pareto"]]
    return out


def verdict(board: pd.DataFrame, metric: str) -> list[str]:
    """What the leaderboard says, in plain sentences: who was chosen and how, and whether the data can tell
    it from thresholding the regressor and from the reference."""
    top = board[board["champion"]].iloc[0]
    n = int(top["test_rows"]) if top["test_rows"] == top["test_rows"] else 0
    lines = [f"Champion, chosen on validation ({metric} {top[RUN_COLUMNS[metric]]:.4f}): {top['strategy']} "
             f"({top['stage']}); "
             f"test macro-F1 {top['f1_macro']:.3f} [{top['f1_macro_ci_low']:.3f}, {top['f1_macro_ci_high']:.3f}] "
             f"on {n} test rows ({top['scope']})."]
    if top["strategy"] == "threshold":
        lines.append("Verdict: no conversion beat thresholding the regressor on validation; ship threshold "
                     "(the regressor cut at the class edges).")
    elif top["vs_threshold"] != top["vs_threshold"]:
        lines.append("Verdict: threshold was not run, so the conversion cannot be judged against it.")
    elif top["vs_threshold_low"] > 0:
        lines.append(f"Verdict: {top['strategy']} beats thresholding the regressor by {top['vs_threshold']:+.3f} "
                     f"[{top['vs_threshold_low']:+.3f}, {top['vs_threshold_high']:+.3f}] test macro-F1 "
                     "(paired 95% interval, excludes zero).")
    else:
        finding = (f"thresholding the regressor does better than {top['strategy']}" if top["vs_threshold_high"] < 0
                   else "no conversion is distinguishable from thresholding the regressor")
        lines.append(f"Verdict: {finding} on {n} test rows: {top['strategy']} vs threshold "
                     f"{top['vs_threshold']:+.3f} [{top['vs_threshold_low']:+.3f}, {top['vs_threshold_high']:+.3f}]. "
                     "Recommended: the simplest model, threshold (the regressor cut at the class edges).")
    ref = board[board["strategy"] == "reference_hgb"]
    if len(ref) and ref["f1_macro"].iloc[0] == ref["f1_macro"].iloc[0]:
        r = ref.iloc[0]
        lines.append(f"Gradient-boosting reference: test macro-F1 {r['f1_macro']:.3f} [{r['f1_macro_ci_low']:.3f}, "
                     f"{r['f1_macro_ci_high']:.3f}]; vs champion {r['vs_champion']:+.3f} "
                     f"[{r['vs_champion_low']:+.3f}, {r['vs_champion_high']:+.3f}].")
    return lines


def compare(cfg: Config, splits: list[Prepared], parent: str, reference: Future | None = None) -> Comparison:
    """The answer to "which conversion wins": every strategy and variant of the convert run `parent` read back
    from the store, a scikit-learn reference on the same splits, the verdict, the report, and the champion
    (the best of our classifiers on `compare.metric`, a validation metric) registered as a pyfunc that takes
    the raw columns. Artifacts go on the parent run: leaderboard.csv, leaderboard.md, report.html. Always
    runs: it only reads what the stages logged, and registers nothing twice. `reference`: the reference's fit
    (`fit_reference`) when convert started it earlier (jobs.submit), else it is fitted here."""
    data = splits[0]  # the champion's own split: slim and tune refine on it, its model was trained on it
    tags = tracking.get_run(parent).data.tags
    runs = [r for k in ("head_swap_run", "slim_run") if k in tags for r in strategy_runs(tags[k])]
    tune_run = tracking.get_run(tags["tune_run"]) if "tune_run" in tags else None
    # the best trial's model on the tune run, and its retraining on other folds; none when no trial beat the
    # untuned model (tag tuned=no_better): that model already has its row, a tuned row would be a copy
    if tune_run is not None and tune_run.data.tags.get("tuned") != "no_better":
        runs += [tune_run]
        runs += [r for r in tracking.children(tags["tune_run"]) if r.data.tags.get("strategy") == "tuned"]
    c = cfg.compare
    registered = c.register or f"reg2cls-{tracking.experiment_name(parent)}"
    with tracking.start("compare", "compare", parent=parent, tags={"split_key": data.split_key}) as run_id:
        if c.reference:
            fitted = jobs.result(reference) if reference is not None else fit_reference(cfg, splits)
            runs.append(_reference_run(cfg, splits, fitted))
        chosen = None  # cross-fitted: the head-swap strategy chosen on its mean over folds (see convert)
        if int(tags.get("folds", 1)) > 1 and "head_swap_run" in tags:
            model_run = tracking.get_run(tags["head_swap_run"]).data.tags["model_run"]
            chosen = tracking.get_run(model_run).data.tags["strategy"]
        board = leaderboard(runs, c.metric, seed=cfg.seed, chosen=chosen)
        if not board["champion"].any():
            raise UserError("no trained classifier among the runs to compare; run convert first")
        top = board[board["champion"]].iloc[0]
        champion_run = top["best_run"]
        model = tracking.load_run_model(champion_run)
        summary = verdict(board, c.metric)
        summary += [f"Data: {cfg.data.source}, target {cfg.data.target}, classes {', '.join(data.class_names)}",
                    f"Parent run {parent}; registered model {registered}, alias champion"]
        version = registry.register_champion(
            model, {"preprocessor": asdict(data.preprocessor), "class_names": data.class_names},
            _raw_example(data), registered,
            description=version_description(summary, top, champion_run, parent, registered),
            tags={"champion_run": champion_run, "strategy": str(top["strategy"]), "parent_run": parent},
            run_id=champion_run, model_description=model_description(cfg, data, registered))
        summary[-1] += f" (version {version})"
        tracking.describe_experiment(EXPERIMENT_NOTE)
        tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run,
                           "registered_model": registered, "registered_version": version})
        stands_for(champion_run)
        pooled = pooled_predictions([tracking.get_run(champion_run)])
        images = {"Per strategy": report.png(report.intervals_figure(board, c.metric))}
        notes = {"Per strategy": "Test macro-F1 of every row with its 95% bootstrap interval, rows in the "
                                 f"leaderboard's order ({c.metric}). Red: the champion; green: the gradient-boosting "
                                 "reference; blue: the other rows. Overlapping intervals: the data cannot tell "
                                 "them apart."}
        curves = validation_curves(board)
        if curves:
            images["Validation curves"] = report.png(report.validation_curves_figure(curves))
            notes["Validation curves"] = ("Validation macro-F1 per epoch of each head-swap strategy (its best run); "
                                          "training restores the epoch with the lowest validation loss.")
        if pooled is not None:
            proba = pooled.proba[0]
            images |= {
                "Confusion matrix": report.png(report.confusion_figure(pooled.c, pooled.pred[0], data.class_names)),
                "ROC": report.png(report.roc_figure(pooled.c, proba, data.class_names)),
                "Reliability": report.png(report.reliability_figure(pooled.c, proba))}
            notes["Confusion matrix"] = "Each cell: test rows and their share of the true class (row)."
            notes["Reliability"] = "Accuracy against confidence; the dashed diagonal is perfect calibration."
        for title, run, path in (("Slimming: Pareto", tags.get("slim_run"), "pareto.png"),
                                 ("Optuna: optimisation history", tags.get("tune_run"), "optuna_history.png")):
            image = tracking.read_artifact(run, path) if run else None
            if image:
                images[title] = image
        if "Slimming: Pareto" in images:
            notes["Slimming: Pareto"] = _unslimmed_note(tags["slim_run"], str(top["strategy"]))
        tuning = _tuning(tags.get("tune_run"), c.metric)
        if tuning is not None:
            (start, before), after = tuning
            images["Tuning against its untuned start"] = report.png(report.tuning_figure((start, before), after,
                                                                                         c.metric))
            change = after - before
            notes["Tuning against its untuned start"] = (
                f"Tuned {c.metric} {after:.4f} vs {before:.4f} for its untuned start ({start}): {change:+.4f}."
                + (" Tuning changed little: the untuned model was already as good as the search could make it."
                   if abs(change) < 0.005 else ""))
        elif tune_run is not None and tune_run.data.tags.get("tuned") == "no_better":
            m, logged = tune_run.data.params.get("tune.metric", "val/f1_macro"), tune_run.data.metrics
            start = tracking.get_run(tune_run.data.tags["source_run"]).data.tags.get("strategy", "model")
            summary.append(f"Tuning: the Optuna study found nothing better than the untuned {start} ({m} "
                           f"{logged.get(f'untuned/{m}', float('nan')):.4f}, best trial "
                           f"{logged.get(f'best/{m}', float('nan')):.4f}), so there is no tuned row.")
        if "Optuna: optimisation history" in images:
            images["Optuna: optimisation history"] = images.pop("Optuna: optimisation history")  # after tuning
        shown = display(board, c.metric)
        table = report.markdown(shown)
        tracking.log_files_to(parent, {
            "leaderboard.csv": board.to_csv(index=False), "leaderboard.md": table,
            "report.html": report.html(f"reg2cls: {cfg.experiment}", summary, shown, images, notes)})
    # the verdict where people look first: the convert run's description and columns of the runs table;
    # links are the MLflow UI's own routes, relative, so they work wherever the UI is served
    experiment_id = tracking.get_run(parent).info.experiment_id
    links = (f"Champion: [{top['strategy']} (run {champion_run})](#/experiments/{experiment_id}/runs/{champion_run})"
             f" · registered: [{registered} version {version}](#/models/{registered}/versions/{version})"
             " · figures: `report.html` in this run's artifacts")
    tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run, "model_run": champion_run,
                       "registered_model": registered, "registered_version": version,
                       "mlflow.note.content": "\n\n".join(summary) + "\n\n" + links + "\n\n" + table},
                      run_id=parent)
    tracking.log_metrics({f"champion/{c.metric}": top[RUN_COLUMNS[c.metric]], "champion/test_f1_macro": top["f1_macro"],
                          "champion/test_f1_macro_ci_low": top["f1_macro_ci_low"],
                          "champion/test_f1_macro_ci_high": top["f1_macro_ci_high"],
                          "champion/vs_threshold": top["vs_threshold"],
                          "champion/vs_threshold_low": top["vs_threshold_low"],
                          "champion/vs_threshold_high": top["vs_threshold_high"]}, run_id=parent)
    return Comparison(parent, run_id, board, summary, model, champion_run, registered, version)


def validation_curves(board: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """Each head-swap row's validation macro-F1 per epoch, from its best run; a row that did not train
    (threshold) as its single value."""
    curves = {}
    for _, row in board[board["stage"] == "head_swap"].iterrows():
        run = row["best_run"]
        if not isinstance(run, str) or not run:
            continue
        curve = tracking.epoch_curves(["val/f1_macro"], run).get("val/f1_macro")
        if curve:
            curves[str(row["strategy"])] = curve
        elif row["val_f1_macro"] == row["val_f1_macro"]:
            curves[str(row["strategy"])] = [(0, float(row["val_f1_macro"]))]
    return curves


def _unslimmed_note(slim_run: str, champion: str) -> str:
    """What the Pareto plot's `unslimmed` point is: the model slimming started from, which is not necessarily
    the champion."""
    source = tracking.get_run(slim_run).data.tags.get("source_run", "")
    name = tracking.get_run(source).data.tags.get("strategy", "?") if source else "?"
    same = "it is the champion" if name == champion else f"the champion is {champion}"
    return (f"'unslimmed' is {name} (run {source}), the model slimming started from; {same}. Red star: the "
            "recommended variant; blue line: the Pareto front; gray: dominated variants.")


def _tuning(tune_run: str | None, metric: str) -> tuple[tuple[str, float], float] | None:
    """(the untuned start's strategy and `metric`, the tuned `metric`) of a tune run, or None."""
    if not tune_run:
        return None
    run = tracking.get_run(tune_run)
    source = run.data.tags.get("source_run")
    if not source or metric not in run.data.metrics:
        return None
    start = tracking.get_run(source)
    if metric not in start.data.metrics:
        return None
    return (start.data.tags.get("strategy", "untuned"), start.data.metrics[metric]), run.data.metrics[metric]


EXPERIMENT_NOTE = """reg2cls: a PyTorch regressor turned into a classifier.

Each top-level `convert` run is one conversion; **its description holds the verdict** (which strategy won,
how it was chosen, its margin to thresholding the regressor) and its metrics `champion/*` are columns of the
runs table. Nested under it: `baseline` (the regressor), `head_swap` (one run per strategy), `slim`, `tune`
and `compare` (the leaderboard, `report.html`, the registered champion). Open the convert run's
`report.html` for the figures.
"""


def _how_to_call(registered: str) -> list[str]:
    return ["```bash", f"reg2cls predict --model-uri models:/{registered}@champion --input new.csv "
            "--output predictions.csv",
            f"mlflow models serve -m models:/{registered}@champion --env-manager local --host 127.0.0.1 --port 5001",
            "```"]


def model_description(cfg: Config, data: Prepared, registered: str) -> str:
    """The registered model's description (markdown): what it is, its inputs and classes, how to call it."""
    columns = [f"`{c}` (number)" for c in data.preprocessor.numeric]
    columns += [f"`{c}` (category)" for c in data.preprocessor.categories]
    return "\n".join([
        f"## {registered}",
        "",
        f"A classifier made by **reg2cls** from a PyTorch regressor of `{cfg.data.target}` "
        f"(data: `{cfg.data.source}`). The alias `champion` points at the version chosen by the newest "
        "`reg2cls convert`; each version's description says how it was chosen.",
        "",
        "- **Input**: the raw table's columns " + ", ".join(columns) + " (preprocessing travels inside the model).",
        "- **Output**: `label` (the class name) and one `proba_<class>` column per class.",
        "- **Classes**: " + ", ".join(f"`{c}`" for c in data.class_names)
        + f" ({cfg.data.target} cut at the class edges " + ", ".join(f"{e:.4g}" for e in data.edges) + ").",
        "",
        "### How to call it",
        *_how_to_call(registered)])


def version_description(summary: list[str], top: pd.Series, champion_run: str, parent: str, registered: str) -> str:
    """A registered version's description (markdown): which strategy, from which run, why it was chosen."""
    return "\n".join([
        f"**{top['strategy']}** ({top['stage']}), logged by run `{champion_run}` of convert run `{parent}`.",
        "",
        "### How it was chosen",
        *[f"- {line}" for line in summary],
        "",
        "### How to call it",
        *_how_to_call(registered)])


def _raw_example(data: Prepared) -> pd.DataFrame:
    """A few rows of the raw input columns (numbers as float64, so missing values stay valid)."""
    frame = data.example[data.preprocessor.columns].copy()
    for col in data.preprocessor.numeric:
        frame[col] = frame[col].astype("float64")
    for col in data.preprocessor.categories:
        frame[col] = frame[col].astype(str)
    return frame


@dataclass
class Reference:
    """The gradient-boosting reference fitted on every split (`fit_reference`), ready to log as its run."""
    seconds: float                            # fitting, over every split
    val: list[dict[str, float]]               # validation metrics of each split, under its rule
    rules: list[dict]                         # the decision rule of each split
    test: list[tuple[np.ndarray, np.ndarray]]  # each split's test (probabilities, classes its rule picked)
    latency_ms_per_1k: float


def fit_reference(cfg: Config, splits: list[Prepared]) -> Reference:
    """scikit-learn's HistGradientBoostingClassifier on the same splits (each fold's, when cross-fitted): is
    the network as good as the data allows? It gets the same decision freedom as the networks, for a fair
    comparison: a decision rule (temperature, offsets) fitted on its own validation probabilities
    (decision.fit_scores). No MLflow here: convert starts it in a worker process (jobs.submit) while the
    baseline trains, and compare logs it (`_reference_run`)."""
    import time

    from sklearn.ensemble import HistGradientBoostingClassifier

    seconds, val, rules, test = 0.0, [], [], []
    for data in splits:
        t = time.perf_counter()
        clf = HistGradientBoostingClassifier(random_state=cfg.seed).fit(data.train.x.numpy(), data.train.c.numpy())
        seconds += time.perf_counter() - t
        val_scores = decision.scores_of_proba(clf.predict_proba(data.val.x.numpy()))
        rules.append(decision.fit_scores(val_scores, data.val.c.numpy()))
        val.append(metrics.classification(data.val.c.numpy(), *decision.apply(rules[-1], val_scores)))
        test.append(decision.apply(rules[-1], decision.scores_of_proba(clf.predict_proba(data.test.x.numpy()))))
    x = np.random.default_rng(0).normal(size=(1000, splits[0].n_features)).astype(np.float32)
    return Reference(seconds, val, rules, test, metrics.median_ms(lambda: clf.predict_proba(x), repeats=5))


def _reference_run(cfg: Config, splits: list[Prepared], fitted: Reference):
    """The reference's run: its rules as params (per fold `fold_<i>.rule.*`), its validation metrics (the mean
    over folds), its test predictions logged like every strategy's."""
    with tracking.start("reference_hgb", "compare", strategy="reference_hgb",
                        tags={"split_key": splits[0].split_key, "seed": str(cfg.seed),
                              "folds": str(len(splits))}) as run_id:
        for data, rule in zip(splits, fitted.rules):
            prefix = "" if len(splits) == 1 else f"fold_{data.fold}."
            tracking.log_params({prefix + k: v for k, v in decision.as_params(rule).items()})
        tracking.log_params({"model": "sklearn.ensemble.HistGradientBoostingClassifier", "seed": cfg.seed,
                             "folds": len(splits)})
        values = {f"val/{k}": float(np.mean([v[k] for v in fitted.val])) for k in fitted.val[0]}
        values |= log_predictions([(data, *test) for data, test in zip(splits, fitted.test)], seed=cfg.seed)
        tracking.log_metrics({**values, "cost/train_seconds": fitted.seconds,
                              "cost/latency_ms_per_1k": fitted.latency_ms_per_1k})
    return tracking.get_run(run_id)
