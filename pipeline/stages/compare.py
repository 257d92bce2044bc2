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
from ..config import COMPARE_METRICS, Config, UserError, registered_name
from ..data import Prepared
from .common import log_predictions, stands_for
from .reference import fit_reference, reference_runs

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
    by_seed: dict[str, list[dict]] = {}
    for run in sorted(group, key=lambda r: int(r.data.tags.get("fold", 0))):
        logged = read[run.info.run_id] if read is not None else tracking.read_predictions(run.info.run_id)
        if logged is None:
            return None
        by_seed.setdefault(run.data.tags.get("seed", ""), []).append(logged)
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
    read = {r.info.run_id: tracking.read_predictions(r.info.run_id) for group in groups.values() for r in group}
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
        row["best_run"] = max(first_split, key=lambda r: r.data.metrics.get("val/f1_macro", float("-inf"))).info.run_id
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


# rows the evidence cannot tell apart are ranked by this, simplest first: the floor, threshold, then (among our
# trained classifiers) the fewest parameters, then how far a strategy moves from the regressor it starts from
SIMPLER = (PRIOR, "threshold", "warm_start", "cumulative_link", "linear_probe", "finetune", "lp_ft", "corn", "scratch")


def simplicity(row: pd.Series) -> tuple:
    """A row's rank among rows that cannot be told apart (lower is simpler): never the order runs started in."""
    name = str(row["strategy"])
    kind = {PRIOR: 0, "threshold": 1}.get(name, 3 if row["stage"] == "tune" else 2)
    params = row["params"] if row["params"] == row["params"] else 0.0
    return kind, params, SIMPLER.index(name) if name in SIMPLER else len(SIMPLER), name


def choose(board: pd.DataFrame, predictions: dict[tuple[str, str], Predictions], metric: str, seed: int = 0,
           n_boot: int = 1000) -> None:
    """The champion, on validation only, into `board` in place (columns `best_val`, `tied`, `champion`).

    Candidates are our classifiers and the floor (`prior`), none flagged by its training. The best on `metric`
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


def display(board: pd.DataFrame, metric: str = "val/f1_macro") -> pd.DataFrame:
    """The leaderboard for people, within 100 columns: each row's role, the validation metric it was chosen on
    (`mean ± std` over its runs), test macro-F1 with its 95% interval, the simultaneous paired difference to
    threshold, its parameters. Every other column is in leaderboard.csv."""
    def num(m, s=float("nan")) -> str:
        return "" if m != m else f"{m:.3f}" if not s > 0 else f"{m:.3f} ± {s:.3f}"

    def ci(m, low, high, sign="") -> str:
        return "" if m != m else f"{m:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"

    col = RUN_COLUMNS[metric]
    out = pd.DataFrame({"row": [s if st in ("head_swap", "compare") else f"{s} ({st})"
                                for s, st in zip(board["strategy"], board["stage"])]})
    out["role"] = [role(r) for _, r in board.iterrows()]
    out[metric] = [num(m, s) for m, s in zip(board[col], board[f"{col}_std"])]
    out["test macro-F1 [95% CI]"] = [ci(*v) for v in zip(board["f1_macro"], board["f1_macro_ci_low"],
                                                         board["f1_macro_ci_high"])]
    out["vs threshold"] = [ci(*v, sign="+") for v in zip(board["vs_threshold"], board["vs_threshold_low"],
                                                         board["vs_threshold_high"])]
    out["params"] = ["" if p != p else f"{p:,.0f}" for p in board["params"]]
    return out


def role(row: pd.Series) -> str:
    """What a leaderboard row is to the verdict, in a word or two."""
    if row["excluded"]:
        return f"excluded: {row['excluded']}"
    if row["champion"]:
        return "champion"
    if row.get("best_val"):
        return "best on val"
    name = str(row["strategy"])
    if name == "threshold":
        return "bar"
    if name == PRIOR:
        return "floor"
    if name == NESTED:
        return "procedure"
    if name.startswith("reference"):
        return "reference"
    return "≈ best" if row.get("tied") else ""


def verdict(board: pd.DataFrame, metric: str, warnings: list[str] = ()) -> list[str]:
    """What the leaderboard says, in plain sentences, the answer first: whether the champion is better than
    chance (the `prior` floor) and than thresholding the regressor, then which row it is and why (chosen on
    validation: the simplest row the validation rows cannot tell from the best), then the reference. Test
    differences are simultaneous 95% intervals over the leaderboard's rows. `warnings` (the checks of the
    regressor, `check.*` tags) come first: they say when no verdict can mean much."""
    top = board[board["champion"]].iloc[0]
    best = board[board["best_val"]].iloc[0]
    name, col = str(top["strategy"]), RUN_COLUMNS[metric]
    n = int(top["test_rows"]) if top["test_rows"] == top["test_rows"] else 0
    lines = [f"Warning: {w}" for w in warnings]

    def diff(row: pd.Series, ref: str) -> str:
        return f"{row[ref]:+.3f} [{row[ref + '_low']:+.3f}, {row[ref + '_high']:+.3f}]"

    if name == PRIOR:
        lines.append("Verdict: no better than chance. No classifier was separable on validation from the class prior "
                     "(classes drawn at their training frequencies): the features carry no usable signal for these "
                     "classes. Nothing is registered as champion.")
    elif top["vs_prior"] == top["vs_prior"] and not top["vs_prior_low"] > 0:
        lines.append(f"Verdict: no better than chance on test: {name} vs the class prior {diff(top, 'vs_prior')} "
                     "test macro-F1; the features carry no usable signal that the test rows confirm.")
    elif name == "threshold":
        lines.append("Verdict: ship threshold, the regressor cut at the class edges: no conversion was separable from "
                     "it on validation.")
    elif top["vs_threshold"] != top["vs_threshold"]:
        lines.append(f"Verdict: {name}; threshold was not run, so the conversion cannot be judged against it.")
    elif top["vs_threshold_low"] > 0:
        lines.append(f"Verdict: {name} beats thresholding the regressor by {diff(top, 'vs_threshold')} test "
                     "macro-F1 (simultaneous 95% interval, excludes zero).")
    else:
        finding = ("thresholding the regressor does better" if top["vs_threshold_high"] < 0
                   else "it is not distinguishable from thresholding the regressor")
        lines.append(f"Verdict: {name} was chosen on validation, but on test {finding}: "
                     f"{diff(top, 'vs_threshold')} macro-F1 (simultaneous 95% interval).")
    if name != PRIOR:
        why = ("the best on validation" if top["best_val"] else
               f"the simplest of {int(board['tied'].sum())} rows the validation rows cannot tell from the best, "
               f"{best['strategy']} ({best[col]:.3f})")
        lines.append(f"Champion: {name} ({top['stage']}; {metric} {top[col]:.3f}), {why}; test macro-F1 "
                     f"{top['f1_macro']:.3f} [{top['f1_macro_ci_low']:.3f}, {top['f1_macro_ci_high']:.3f}] on {n} "
                     f"test rows ({top['scope']}).")
    for _, r in board[board["strategy"] == NESTED].iterrows():
        lines.append(f"Procedure, nested: choosing on each fold's own validation rows ({r['choices']}) scores test "
                     f"macro-F1 {r['f1_macro']:.3f} [{r['f1_macro_ci_low']:.3f}, {r['f1_macro_ci_high']:.3f}] pooled "
                     f"over the folds, vs threshold {diff(r, 'vs_threshold')}: the honest score of the selection.")
    for _, r in board[board["strategy"].astype(str).str.startswith("reference")].iterrows():
        if r["f1_macro"] == r["f1_macro"] and r["vs_champion"] == r["vs_champion"]:
            lines.append(f"Gradient-boosting {r['strategy']}: test macro-F1 {r['f1_macro']:.3f} "
                         f"[{r['f1_macro_ci_low']:.3f}, {r['f1_macro_ci_high']:.3f}]; "
                         f"vs champion {diff(r, 'vs_champion')}.")
    return lines


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
    runs = [r for k in ("head_swap_run", "slim_run") if k in tags for r in strategy_runs(tags[k])]
    tune_run = tracking.get_run(tags["tune_run"]) if "tune_run" in tags else None
    # the best trial's model on the tune run; cross-fitted, each fold's tune run (the model its study kept: the
    # tuning procedure). None when no trial beat the untuned model (tag tuned=no_better) on any fold: that model
    # already has its row, a tuned row would be a copy
    if tune_run is not None and tune_run.data.tags.get("tuned") != "no_better":
        fold_runs = tune_run.data.tags.get("fold_runs")
        runs += [tracking.get_run(r) for r in fold_runs.split(",")] if fold_runs else [tune_run]
    c = cfg.compare
    registered = registered_name(cfg, tracking.experiment_name(parent))
    with tracking.start("compare", "compare", parent=parent, tags={"split_key": data.split_key}) as run_id:
        if c.reference:
            fitted = jobs.result(reference) if reference is not None else fit_reference(cfg, splits)
            runs += reference_runs(cfg, splits, fitted)
        jobs.close()  # the last worker task is done: the workers' memory goes back before the champion's check
        runs.append(_prior_run(cfg, splits))
        board = leaderboard(runs, c.metric, seed=cfg.seed)
        if not board["champion"].any():
            raise UserError("no trained classifier among the runs to compare; run convert first")
        top = board[board["champion"]].iloc[0]
        champion_run = top["best_run"]
        checks = [value for key, value in sorted(tags.items()) if key.startswith("check.")]
        summary = verdict(board, c.metric, checks)
        summary.append(f"Data: {cfg.data.source}, target {cfg.data.target}, classes {', '.join(data.class_names)}")
        model, version = None, ""
        if top["strategy"] == PRIOR:  # no model beats chance: the recommendation is to ship none
            registered = ""
            summary.append(f"Parent run {parent}; nothing registered")
        else:
            model = shipped_model(top, splits)
            summary.append(f"Parent run {parent}; registered model {registered}, alias champion")
            version = registry.register_champion(
                model, {"preprocessor": asdict(data.preprocessor), "class_names": data.class_names},
                _raw_example(data), registered,
                description=version_description(summary, top, champion_run, parent, registered,
                                                what_ships(top, data, len(splits), model)),
                tags={"champion_run": champion_run, "strategy": str(top["strategy"]), "parent_run": parent},
                run_id=champion_run, model_description=model_description(cfg, data, registered))
            summary[-1] += f" (version {version})"
            if c.check_load:  # before it says done: it loads and predicts elsewhere
                registry.check_loads(f"models:/{registered}/{version}")
            stands_for(champion_run)
        tracking.describe_experiment(EXPERIMENT_NOTE)
        tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run,
                           "registered_model": registered, "registered_version": version})
        pooled = pooled_predictions([tracking.get_run(run) for run in str(top["runs"]).split(",")])
        images, notes = report.figures(board, pooled, c.metric, data.class_names, tags)
        report.describe_runs(board, c.metric, tags)
        if tune_run is not None and "tune_skipped" in tune_run.data.tags:
            summary.append(f"Tuning: skipped ({tune_run.data.tags['tune_skipped']}), so there is no tuned row.")
        elif tune_run is not None and "fold_runs" in tune_run.data.tags and tune_run.data.tags["tuned"] == "no_better":
            summary.append("Tuning: on no fold did the Optuna study find anything better than the untuned model by "
                           "more than the noise of that fold's validation rows, so there is no tuned row.")
        elif tune_run is not None and tune_run.data.tags.get("tuned") == "no_better":
            m, logged = tune_run.data.params.get("tune.metric", "val/f1_macro"), tune_run.data.metrics
            start = tracking.get_run(tune_run.data.tags["source_run"]).data.tags.get("strategy", "model")
            summary.append(f"Tuning: the Optuna study found nothing better than the untuned {start} by more than "
                           f"the noise of the validation rows ({m} {logged.get(f'untuned/{m}', float('nan')):.4f}, "
                           f"best trial {logged.get(f'best/{m}', float('nan')):.4f}), so there is no tuned row.")
        shown = display(board, c.metric)
        table = report.markdown(shown)
        tracking.log_files_to(parent, {
            "leaderboard.csv": board.to_csv(index=False), "leaderboard.md": table,
            "report.html": report.html(f"reg2cls: {cfg.experiment}", summary, shown, images, notes)})
    # the verdict where people look first: the convert run's description and columns of the runs table;
    # links are the MLflow UI's own routes, relative, so they work wherever the UI is served
    experiment_id = tracking.get_run(parent).info.experiment_id
    links = (f"Champion: [{top['strategy']} (run {champion_run})]({tracking.ui_page(experiment_id, champion_run)})"
             + (f" · registered: [{registered} version {version}](#/models/{registered}/versions/{version})"
                if version else "") + " · figures: `report.html` in this run's artifacts")
    tracking.set_tags({"champion": str(top["strategy"]), "champion_run": champion_run,
                       **({"model_run": champion_run} if version else {}),
                       "registered_model": registered, "registered_version": version,
                       "mlflow.note.content": "\n\n".join(summary) + "\n\n" + links + "\n\n" + table},
                      run_id=parent)
    tracking.log_metrics({f"champion/{c.metric}": top[RUN_COLUMNS[c.metric]], "champion/test_f1_macro": top["f1_macro"],
                          "champion/test_f1_macro_ci_low": top["f1_macro_ci_low"],
                          "champion/test_f1_macro_ci_high": top["f1_macro_ci_high"],
                          "champion/vs_threshold": top["vs_threshold"],
                          "champion/vs_threshold_low": top["vs_threshold_low"],
                          "champion/vs_threshold_high": top["vs_threshold_high"],
                          "champion/vs_prior": top["vs_prior"], "champion/vs_prior_low": top["vs_prior_low"],
                          "champion/vs_prior_high": top["vs_prior_high"]}, run_id=parent)
    return Comparison(parent, run_id, board, summary, model, champion_run, registered, version)


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
        + f" ({cfg.data.target} cut at the class edges "
        + ", ".join(f"{e:.4g}" for e in data.original_units(data.edges)) + ").",
        "",
        "### How to call it",
        *_how_to_call(registered)])


def shipped_model(top: pd.Series, splits: list[Prepared]) -> nn.Module:
    """The model the registry gets. On one split, the champion row's model (its seed best on validation).
    Cross-fitted, the average of the champion row's model on every fold (each its seed best on that fold's
    validation rows): a cross-fit ensemble (model.FoldEnsemble), whose decision rule is fitted on every fold's
    validation rows, each scored by its own fold's member, which never trained on them."""
    if len(splits) == 1:
        return tracking.load_run_model(top["best_run"])
    from ..model import fold_ensemble
    from ..train import predict

    runs = [tracking.get_run(run_id) for run_id in str(top["runs"]).split(",")]
    by_fold = [[r for r in runs if r.data.tags.get("fold", "0") == str(data.fold)] for data in splits]
    if not all(by_fold):  # a fold without a finished run of this row (it failed there): its first fold's model
        return tracking.load_run_model(top["best_run"])
    k = splits[0].n_classes
    members, temperatures, scores, classes = [], [], [], []
    for data, on_fold in zip(splits, by_fold):
        best = max(on_fold, key=lambda r: r.data.metrics.get("val/f1_macro", float("-inf")))
        member = tracking.load_run_model(best.info.run_id).cpu()
        temperatures.append(decision.rule_of(member, k)["temperature"])
        members.append(member)
        scores.append(decision.tempered(decision.scores_of(predict(member, data.val.x, "cpu"), k), temperatures[-1]))
        classes.append(data.val.c.numpy())
    ensemble = fold_ensemble(members, k, temperatures)
    ensemble.reg2cls_rule = decision.fit_scores(np.concatenate(scores), np.concatenate(classes),
                                                decision.is_ordinal(ensemble, k))
    return ensemble.eval()


def what_ships(top: pd.Series, data: Prepared, folds: int, model: nn.Module) -> str:
    """What the registered `model` is, in one sentence: which model, trained on how many rows, and which of the
    printed numbers describe it."""
    from ..model import FoldEnsemble

    rows = f"{len(data.train.x)} training rows (validation: {len(data.val.x)})"
    what = "a regressor cut at the class edges" if top["strategy"] == "threshold" else f"{top['strategy']}'s model"
    if folds == 1:
        return (f"The model is {what}, trained on {rows}; the test figures are its own, on "
                f"{int(top['test_rows'])} held-out rows.")
    if not isinstance(model, FoldEnsemble):
        return (f"The model is {what} of outer fold {data.fold} of {folds} only (the row has no model on some "
                f"fold), trained on {rows}; the pooled test figures describe the recipe over every fold.")
    return (f"The model is the average of {what} on each of the {folds} outer folds (a cross-fit ensemble: each "
            f"member trained on its fold's {rows}; together they saw every row), with one decision rule fitted on "
            f"every fold's validation rows. The test figures are the members' own, each on its fold's held-out rows "
            f"and pooled: they describe one fold's model on rows it never saw, and understate the average.")


def version_description(summary: list[str], top: pd.Series, champion_run: str, parent: str, registered: str,
                        what: str = "") -> str:
    """A registered version's description (markdown): which strategy, from which run (links to the runs' pages),
    why it was chosen, and `what` the model is (`what_ships`). Its first line is plain text: the registered
    model's versions table shows it unrendered."""
    experiment = tracking.get_run(parent).info.experiment_id
    return "\n".join([
        f"{top['strategy']} ({top['stage']}), test macro-F1 {top['f1_macro']:.3f} [{top['f1_macro_ci_low']:.3f}, "
        f"{top['f1_macro_ci_high']:.3f}] ({top['scope']})",
        "",
        f"Logged by [run {champion_run}]({tracking.ui_page(experiment, champion_run)}) of "
        f"[convert run {parent}]({tracking.ui_page(experiment, parent)}).",
        "",
        what,
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
