"""The leaderboard told to people: the table within 100 columns (`display`), the verdict's sentences, the
convert run's description and the experiment's.

Numbers come from the leaderboard (leaderboard.py) and are only put into words here: nothing is chosen.
"""
from __future__ import annotations

import pandas as pd

from .. import tracking
from .leaderboard import NESTED, PRIOR, RUN_COLUMNS


def display(board: pd.DataFrame, metric: str = "val/f1_macro") -> pd.DataFrame:
    """The leaderboard for people, within 100 columns: each row's role, the validation metric it was chosen on
    (`mean±std` over its runs), test macro-F1 with its 95% interval (`test F1`), the simultaneous paired difference to
    threshold, its parameters. Every other column is in leaderboard.csv."""
    def num(m, s=float("nan")) -> str:
        return "" if m != m else f"{m:.3f}" if not s > 0 else f"{m:.3f}±{s:.3f}"

    def ci(m, low, high, sign="") -> str:
        return "" if m != m else f"{m:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"

    col = RUN_COLUMNS[metric]
    out = pd.DataFrame({"row": [s if st in ("head_swap", "compare") else f"{s} ({st})"
                                for s, st in zip(board["strategy"], board["stage"])]})
    out["role"] = [role(r) for _, r in board.iterrows()]
    out[metric] = [num(m, s) for m, s in zip(board[col], board[f"{col}_std"])]
    out["test F1 [95% CI]"] = [ci(*v) for v in zip(board["f1_macro"], board["f1_macro_ci_low"],
                                                         board["f1_macro_ci_high"])]
    out["vs threshold"] = [ci(*v, sign="+") for v in zip(board["vs_threshold"], board["vs_threshold_low"],
                                                         board["vs_threshold_high"])]
    out["params"] = ["" if p != p else f"{p:,.0f}" for p in board["params"]]
    return out


def role(row: pd.Series) -> str:
    """What a leaderboard row is to the verdict, in a word or two."""
    if row["excluded"]:
        return f"✗ {row['excluded']}"  # excluded: diverged, collapsed or untrained (within the 100 columns)
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


def tuning(tune_run) -> list[str]:
    """Why there is no tuned row, when there is none: tuning skipped, or no trial beat the untuned model."""
    if tune_run is None:
        return []
    if "tune_skipped" in tune_run.data.tags:
        return [f"Tuning: skipped ({tune_run.data.tags['tune_skipped']}), so there is no tuned row."]
    if "fold_runs" in tune_run.data.tags and tune_run.data.tags["tuned"] == "no_better":
        return ["Tuning: on no fold did the Optuna study find anything better than the untuned model by more than "
                "the noise of that fold's validation rows, so there is no tuned row."]
    if tune_run.data.tags.get("tuned") == "no_better":
        m, logged = tune_run.data.params.get("tune.metric", "val/f1_macro"), tune_run.data.metrics
        start = tracking.get_run(tune_run.data.tags["source_run"]).data.tags.get("strategy", "model")
        return [f"Tuning: the Optuna study found nothing better than the untuned {start} by more than "
                f"the noise of the validation rows ({m} {logged.get(f'untuned/{m}', float('nan')):.4f}, "
                f"best trial {logged.get(f'best/{m}', float('nan')):.4f}), so there is no tuned row."]
    return []


def parent_note(summary: list[str], top: pd.Series, parent: str, registered: str, version: str, table: str) -> str:
    """The convert run's description (markdown), where people look first: the verdict, links to the champion's
    run and registered version, the leaderboard. Links are the MLflow UI's own routes, relative, so they work
    wherever the UI is served."""
    experiment_id, champion_run = tracking.get_run(parent).info.experiment_id, top["best_run"]
    links = (f"Champion: [{top['strategy']} (run {champion_run})]({tracking.ui_page(experiment_id, champion_run)})"
             + (f" · registered: [{registered} version {version}](#/models/{registered}/versions/{version})"
                if version else "") + " · figures: `report.html` in this run's artifacts")
    return "\n\n".join(summary) + "\n\n" + links + "\n\n" + table


EXPERIMENT_NOTE = """reg2cls: a PyTorch regressor turned into a classifier.

Each top-level `convert` run is one conversion; **its description holds the verdict** (which strategy won,
how it was chosen, its margin to thresholding the regressor) and its metrics `champion/*` are columns of the
runs table. Nested under it: `baseline` (the regressor), `head_swap` (one run per strategy), `slim`, `tune`
and `compare` (the leaderboard, `report.html`, the registered champion). Open the convert run's
`report.html` for the figures.
"""


