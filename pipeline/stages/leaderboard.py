"""The leaderboard and the champion's choice: one row per strategy or variant of a convert run, read back from
the store, and `choose`, the simplest row the validation rows cannot tell from the best.

Selection and reporting are kept apart: rows are ordered and the champion chosen by a validation metric
(`compare.metric`, mean over the runs of a row: seeds and folds); test metrics are recomputed from the
test predictions each run logged (pooled over folds when cross-fitted) and only reported, each with a
seeded 95% bootstrap interval and the paired difference to `threshold` and to the champion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics, report, selection, stats, tracking
from ..config import COMPARE_METRICS
from ..strategies import STRATEGY, trains

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
PRIOR = "prior"  # the no-information floor: classes drawn at their training frequencies, the features ignored
NESTED = "nested"  # cross-fitted: the selection procedure, chosen on each fold's own validation rows


@dataclass
class Predictions:
    """A row's predictions, pooled over its folds: `proba[s]` holds seed s's probabilities for the test
    rows `rows` (positions in the data table), whose classes are `c`, and `pred[s]` the classes its decision
    rule picked (what every class metric, the bootstrap and the confusion matrix use); `val_pred[s]` the classes
    it decided for the validation rows (classes `val_c`, folds in order), which the champion is chosen on."""
    rows: np.ndarray   # (n,) sorted
    c: np.ndarray      # (n,)
    proba: np.ndarray  # (S, n, K)
    pred: np.ndarray   # (S, n)
    val_c: np.ndarray | None = None     # (m,)
    val_pred: np.ndarray | None = None  # (S, m)

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


def pooled_predictions(group: list, read: dict[str, dict | None] | None = None) -> Predictions | None:
    """The predictions of a row's runs, concatenated over folds (in fold order) for each seed; None when a run
    logged none. `read`: what tracking.read_predictions already returned, by run id."""
    folds = [r.data.tags.get("fold", "0") for r in group]
    # one run a fold (the tuning procedure's: each fold's kept model, whatever seed it was trained with) pools as
    # one; several runs a fold are seeds, each pooled over the folds on its own
    one_a_fold = len(set(folds)) == len(folds)
    by_seed: dict[str, list[dict]] = {}
    for run in sorted(group, key=lambda r: int(r.data.tags.get("fold", 0))):
        logged = read[run.info.run_id] if read is not None else tracking.read_predictions(run)
        if logged is None:
            return None
        by_seed.setdefault("" if one_a_fold else run.data.tags.get("seed", ""), []).append(logged)
    parts = []
    for logged in by_seed.values():
        rows = np.concatenate([p["rows"] for p in logged])
        order = np.argsort(rows, kind="stable")
        val = [np.concatenate([p[k] for p in logged]) if all(k in p for p in logged) else None
               for k in ("val_c", "val_pred")]
        parts.append((rows[order], np.concatenate([p["c"] for p in logged])[order],
                      np.concatenate([p["proba"] for p in logged])[order],
                      np.concatenate([p["pred"] for p in logged])[order], *val))
    rows = parts[0][0]
    if any(not np.array_equal(p[0], rows) for p in parts):  # a seed that ran on other folds: not comparable
        return None
    val_c, val_pred = parts[0][4], None
    if val_c is not None and all(p[4] is not None and np.array_equal(p[4], val_c) for p in parts):
        val_pred = np.stack([p[5] for p in parts])
    return Predictions(rows, parts[0][1], np.stack([p[2] for p in parts]), np.stack([p[3] for p in parts]),
                       val_c if val_pred is not None else None, val_pred)


def leaderboard(runs: list, metric: str = "val/f1_macro", seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """One row per (stage, strategy) of the FINISHED `runs` (strategy and variant runs, the tune stage run
    for its best model, the reference run), best on `metric` (a validation metric) first.

    Validation and cost columns are means over the row's runs (`<col>_std` over them, `n` their count). Test
    columns come from the row's test predictions, pooled over folds, averaged over seeds;
    `f1_macro` and `accuracy` carry a 95% bootstrap interval (`_ci_low`, `_ci_high`, resampling test rows,
    `seed`), and `vs_threshold` / `vs_champion` the paired difference in test macro-F1 to those rows on the
    same resamples (simultaneous max-t intervals over the rows, `vs_prior` too). `test_rows` is how many test
    rows a row was scored on, `scope` where they come from. `best_run` is the run standing for the row (best on
    validation among its runs on the first split); `champion`, `best_val` and `tied` come from `choose`, on
    validation only; `pareto` marks rows no other row beats on both `metric` and params.
    """
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            tags = run.data.tags
            strategy = tags.get("strategy") or ("tuned" if tags.get("stage") == "tune" else run.info.run_name)
            groups.setdefault((tags.get("stage", ""), strategy), []).append(run)
    read = {r.info.run_id: tracking.read_predictions(r) for group in groups.values() for r in group}
    rows, predictions = [], {}
    for (stage, strategy), group in groups.items():
        row: dict[str, object] = {"stage": stage, "strategy": strategy, "n": len(group)}
        for key, col in RUN_COLUMNS.items():
            values = [r.data.metrics[key] for r in group if key in r.data.metrics]
            row[col] = float(np.mean(values)) if values else float("nan")
            row[f"{col}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        pooled = pooled_predictions(group, read)
        if pooled is not None:
            predictions[strategy, stage] = pooled
            row |= _test_columns(pooled)
        folds = {r.data.tags.get("fold") for r in group} - {None}
        n_folds = max(len(folds), int(group[0].data.tags.get("folds", 1)))  # the reference: one run, every fold
        row["scope"] = (f"pooled over {n_folds} folds" if n_folds > 1 else f"fold {folds.pop()} only" if folds
                        else "test split")
        first_split = [r for r in group if r.data.tags.get("fold") in (None, "0")] or group
        row["best_run"] = selection.best_run(first_split).info.run_id
        row["runs"] = ",".join(r.info.run_id for r in group)
        row["excluded"] = next((r.data.tags["training"] for r in group if "training" in r.data.tags), "")
        rows.append(row)
    procedure = nested(groups, read, metric, seed, n_boot)
    if procedure is not None:
        rows.append(procedure[0])
        predictions[NESTED, "compare"] = procedure[1]
    frame = pd.DataFrame(rows)
    for col in (*TEST_COLUMNS.values(), "test_rows"):
        if col not in frame:
            frame[col] = float("nan")
    col = RUN_COLUMNS[metric]
    frame = frame.sort_values(col, ascending=metric in LOWER_IS_BETTER, kind="stable", na_position="last")
    frame = frame.reset_index(drop=True)
    choose(frame, predictions, metric, seed, n_boot)
    _intervals(frame, predictions, seed, n_boot)
    sign = 1 if metric in LOWER_IS_BETTER else -1  # pareto_front wants (cost, score): lower cost, higher score
    # a row flagged by its training (diverged, untrained, collapsed) is never offered as a trade-off
    points = [(p if p == p and not why else float("inf"), -sign * v)
              for p, v, why in zip(frame["params"], frame[col], frame["excluded"])]
    front = set(report.pareto_front(points))
    frame["pareto"] = [i in front and points[i][0] != float("inf") for i in range(len(frame))]
    return frame


def _test_columns(pooled: Predictions) -> dict[str, float]:
    """A row's test columns from its pooled predictions: each metric's mean over seeds, `_std` its spread."""
    out: dict[str, float] = {"test_rows": len(pooled.rows)}
    per_seed = [metrics.classification(pooled.c, p, d) for p, d in zip(pooled.proba, pooled.pred)]
    for key, col in TEST_COLUMNS.items():
        out[col] = float(np.mean([m[key] for m in per_seed]))
        out[f"{col}_std"] = float(np.std([m[key] for m in per_seed], ddof=1)) if len(per_seed) > 1 else float("nan")
    return out


def _on_fold(logged: dict | None, fold: int) -> dict | None:
    """The part of a multi-fold run's predictions (its `fold` and `val_fold` arrays) that belongs to `fold`."""
    if logged is None or "fold" not in logged or "val_fold" not in logged:
        return None
    test, val = logged["fold"] == fold, logged["val_fold"] == fold
    return {**{k: logged[k][test] for k in ("rows", "c", "proba", "pred")},
            **{k: logged[k][val] for k in ("val_c", "val_pred")}}


def nested(groups: dict[tuple[str, str], list], read: dict[str, dict | None], metric: str, seed: int,
           n_boot: int) -> tuple[dict, Predictions] | None:
    """Under cross-fitting, the row of the selection procedure itself (`nested`): in each outer fold `choose` picks
    among the candidate rows on that fold's own validation decisions only, and the chosen row's run on that fold
    (its seed best on validation) predicts the fold's test rows. Pooled over folds, these test predictions score
    the procedure honestly: no row that took part in a choice is scored by it. (The champion row is chosen on
    every fold's validation rows, some of which are other folds' test rows.) None on one split."""
    folds = sorted({r.data.tags["fold"] for g in groups.values() for r in g if "fold" in r.data.tags}, key=int)
    if len(folds) < 2 or metric not in ("val/f1_macro", "val/accuracy"):
        return None
    score = metrics.f1_macro if metric == "val/f1_macro" else (lambda c, p, k: float(np.mean(c == p)))
    col, chosen, parts = RUN_COLUMNS[metric], [], []
    for fold in folds:
        board, preds, runs = [], {}, {}
        for (stage, strategy), group in groups.items():
            on_fold = [r for r in group if r.data.tags.get("fold") == fold]
            logged = [read[r.info.run_id] for r in on_fold]
            if not on_fold and strategy == PRIOR:  # one run over every fold: its part on this fold
                on_fold, logged = group, [_on_fold(read[r.info.run_id], int(fold)) for r in group]
            if (stage not in CANDIDATES and strategy != PRIOR) or not on_fold or any(
                    p is None or "val_pred" not in p for p in logged):
                continue
            k = logged[0]["proba"].shape[1]
            preds[strategy, stage] = Predictions(logged[0]["rows"], logged[0]["c"],
                                                 np.stack([p["proba"] for p in logged]),
                                                 np.stack([p["pred"] for p in logged]), logged[0]["val_c"],
                                                 np.stack([p["val_pred"] for p in logged]))
            runs[strategy, stage] = max(zip(on_fold, logged), key=lambda r: score(r[1]["val_c"], r[1]["val_pred"], k))
            board.append({"stage": stage, "strategy": strategy, col: float(np.mean(
                [score(p["val_c"], p["val_pred"], k) for p in logged])), "params": float(np.mean(
                [r.data.metrics.get("cost/params", np.nan) for r in on_fold])),
                "excluded": next((r.data.tags["training"] for r in on_fold if "training" in r.data.tags), "")})
        if not board:
            return None
        board = pd.DataFrame(board)
        choose(board, preds, metric, seed, n_boot)
        top = board[board["champion"]].iloc[0]
        chosen.append(f"fold {fold}: {top['strategy']}")
        parts.append(runs[top["strategy"], top["stage"]][1])
    rows = np.concatenate([p["rows"] for p in parts])
    order = np.argsort(rows, kind="stable")
    pooled = Predictions(rows[order], np.concatenate([p["c"] for p in parts])[order],
                         np.concatenate([p["proba"] for p in parts])[order][None],
                         np.concatenate([p["pred"] for p in parts])[order][None])
    row = {"stage": "compare", "strategy": NESTED, "n": len(folds), **{c: float("nan") for c in RUN_COLUMNS.values()},
           **_test_columns(pooled), "scope": f"pooled over {len(folds)} folds", "best_run": "", "runs": "",
           "excluded": "", "choices": ", ".join(chosen)}
    return row, pooled


def simplicity(row: pd.Series) -> tuple:
    """A row's rank among rows that cannot be told apart (lower is simpler): never the order runs started in. The
    floor, threshold, then (among our trained classifiers) the fewest parameters, then how far a strategy moves
    from the regressor it starts from (STRATEGY's `simpler`)."""
    name = str(row["strategy"])
    kind = 0 if name == PRIOR else 1 if not trains(name) else 3 if row["stage"] == "tune" else 2
    params = row["params"] if row["params"] == row["params"] else 0.0
    return kind, params, STRATEGY[name].simpler if name in STRATEGY else len(STRATEGY), name


def choose(board: pd.DataFrame, predictions: dict[tuple[str, str], Predictions], metric: str, seed: int = 0,
           n_boot: int = 1000) -> None:
    """The champion, on validation only, into `board` in place (columns `best_val`, `tied`, `champion`).

    Candidates are our classifiers and the floor (`prior`), none flagged by its training. The cross-fitted
    tuned row is one: each of its folds is the model that fold's own choices kept on those validation rows, so
    its validation score leans optimistic, but its test score is pooled out of fold, honest whichever row is
    chosen, and when tuning is what makes a model at all, only this row can ship it. The best on `metric`
    (ties to the simpler) is `best_val`; every candidate whose simultaneous 95% interval against it on the same
    validation rows (paired bootstrap of its validation decisions, max-t over the candidates) does not exclude
    zero is `tied` with it; the champion is the simplest tied row (`simplicity`). When the data cannot separate
    the best from threshold or from the floor, the champion is therefore one of those."""
    board["best_val"] = board["tied"] = board["champion"] = False
    col = RUN_COLUMNS[metric]
    candidates = [i for i in board.index if (board.at[i, "stage"] in CANDIDATES or board.at[i, "strategy"] == PRIOR)
                  and board.at[i, col] == board.at[i, col] and board.at[i, "excluded"] == ""]
    if not candidates:
        return
    sign = 1 if metric in LOWER_IS_BETTER else -1
    best = min(candidates, key=lambda i: (sign * board.at[i, col], simplicity(board.loc[i])))
    tied = [best]
    key = {i: (board.at[i, "strategy"], board.at[i, "stage"]) for i in candidates}
    own = predictions.get(key[best])
    stat = {"val/f1_macro": "f1_macro", "val/accuracy": "accuracy"}.get(metric)
    if stat and own is not None and own.val_pred is not None:
        same = [i for i in candidates if key[i] in predictions and predictions[key[i]].val_pred is not None
                and np.array_equal(predictions[key[i]].val_c, own.val_c)]
        boot = stats.bootstrap(own.val_c, {str(i): predictions[key[i]].val_pred for i in same},
                               own.proba.shape[2], n_boot=n_boot, seed=seed)
        gaps = boot.simultaneous([str(i) for i in same], str(best), stat)
        tied += [i for i in same if i != best and gaps[str(i)].high >= 0]
    board.loc[tied, "tied"] = True
    board.at[best, "best_val"] = True
    board.at[min(tied, key=lambda i: simplicity(board.loc[i])), "champion"] = True


def _intervals(board: pd.DataFrame, predictions: dict[tuple[str, str], Predictions], seed: int, n_boot: int) -> None:
    """Bootstrap intervals and paired differences into `board`, in place. Rows scored on the same test rows
    share one set of resamples; a row scored on fewer rows is compared with `threshold`, the champion and the
    floor on those rows only. The differences against each of those three are simultaneous (max-t) over every
    row of the leaderboard: a dozen rows against one bar would otherwise name a winner on pure noise."""
    for col in ("f1_macro_ci_low", "f1_macro_ci_high", "accuracy_ci_low", "accuracy_ci_high",
                *(f"{name}{end}" for name in ("vs_threshold", "vs_champion", "vs_prior")
                  for end in ("", "_low", "_high"))):
        board[col] = float("nan")
    keys = [(s, st) for s, st in zip(board["strategy"], board["stage"])]
    champion = next((key for key, top in zip(keys, board["champion"]) if top), None)
    boots = {}  # one bootstrap per set of test rows, holding every row that was scored on all of them
    for key in keys:
        if key in predictions and predictions[key].rows.tobytes() not in boots:
            rows = predictions[key].rows
            covering = {k: p.restricted(rows) for k, p in predictions.items() if np.isin(rows, p.rows).all()}
            first = covering[key]
            boots[rows.tobytes()] = stats.bootstrap(first.c, {k: p.pred for k, p in covering.items()},
                                                    first.proba.shape[2], n_boot=n_boot, seed=seed)
    against: dict[tuple[bytes, tuple], dict] = {}  # (bootstrap, reference) -> every row's simultaneous interval

    def difference(boot_id: bytes, key: tuple, ref: tuple) -> stats.Interval:
        if (boot_id, ref) not in against:
            against[boot_id, ref] = boots[boot_id].simultaneous(list(boots[boot_id].samples), ref, "f1_macro")
        return against[boot_id, ref].get(key, stats.Interval(0.0, 0.0, 0.0, signed=True))  # the reference itself

    for i, key in enumerate(keys):
        if key not in predictions:
            continue
        own = predictions[key].rows.tobytes()
        for m in ("f1_macro", "accuracy"):
            ci = boots[own].interval(key, m)
            board.loc[i, [f"{m}_ci_low", f"{m}_ci_high"]] = ci.low, ci.high
        for name, ref in (("vs_threshold", ("threshold", "head_swap")), ("vs_champion", champion),
                          ("vs_prior", (PRIOR, "compare"))):
            if ref not in predictions:
                continue
            # on the rows both were scored on: this row's, or the other's when it has fewer
            for boot_id in (own, predictions[ref].rows.tobytes()):
                if boot_id in boots and key in boots[boot_id].samples and ref in boots[boot_id].samples:
                    d = difference(boot_id, key, ref)
                    board.loc[i, [name, f"{name}_low", f"{name}_high"]] = d.estimate, d.low, d.high
                    break
