"""Figures and tables for people: the slim Pareto plot, the leaderboard in markdown, report.html and the
figures it shows (`figures`: each one what its caption says, read back from the runs compare compared).

Figures are plain `matplotlib.figure.Figure` objects, not pyplot's: they need no display and leave
the process's backend (a notebook's, say) alone; tracking.py logs them, `png()` renders them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from .metrics import calibration_bins
from .strategies import TABLE


def _figure(**kwargs):
    """A new matplotlib Figure; matplotlib is imported here, on the first figure, so that importing the stages
    (a worker process does) does not load it."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _plain(draw):
    """Draw (and render) in matplotlib's default style, whatever the process set globally (Optuna's plots
    switch pyplot to `ggplot`: grey panels and grids on every later figure)."""
    import functools

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        from matplotlib import style

        with style.context("default"):
            return draw(*args, **kwargs)
    return wrapped


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) that no other point beats on both: lower cost, higher score."""
    front = []
    for i, (cost, score) in enumerate(points):
        dominated = any(c <= cost and s >= score and (c, s) != (cost, score) for c, s in points)
        if not dominated:
            front.append(i)
    return front


@_plain
def pareto_figure(rows: list[dict], recommended: str, unslimmed: str = "slimming's input"):
    """Parameters vs validation macro-F1 (what slim recommends on), one point per slim variant plus the unslimmed
    model (`unslimmed` names it: slimming's input, not necessarily the champion); a legend for every mark."""
    from matplotlib.lines import Line2D

    fig = _figure(figsize=(6.8, 4.4), dpi=110)
    ax = fig.subplots()
    points = [(r["cost/params"], r["val/f1_macro"]) for r in rows]
    front = set(pareto_front(points))
    for i, r in enumerate(rows):
        x, y = points[i]
        style = dict(marker="*", s=160, color="tab:red") if r["strategy"] == recommended else \
            dict(marker="o", s=40, color="tab:blue" if i in front else "tab:gray")
        if r["strategy"] == "unslimmed":
            style.update(edgecolors="black", linewidths=1.2)
        ax.scatter([x], [y], zorder=3, **style)
        if r["strategy"] == "unslimmed":  # the largest model: its label goes to the left, inside the plot
            ax.annotate(f"unslimmed ({unslimmed})", (x, y), textcoords="offset points", xytext=(-6, 5), fontsize=8,
                        ha="right")
        else:
            ax.annotate(r["strategy"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ordered = sorted(front, key=lambda i: points[i][0])
    ax.plot([points[i][0] for i in ordered], [points[i][1] for i in ordered], color="tab:blue", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("validation macro-F1")
    ax.set_title(f"Slimming: size vs quality (recommended: {recommended})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=[
        Line2D([], [], marker="*", color="tab:red", ls="", markersize=11, label="recommended variant"),
        Line2D([], [], marker="o", color="tab:blue", ls="-", lw=1, label="Pareto front (nothing smaller is better)"),
        Line2D([], [], marker="o", color="tab:gray", ls="", label="dominated"),
        Line2D([], [], marker="o", color="white", markeredgecolor="black", ls="", label="unslimmed (slimming's input)"),
    ], fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


@_plain
def intervals_figure(board: pd.DataFrame, metric: str):
    """Test macro-F1 of every row with its 95% bootstrap interval, in the board's order (best on `metric`, a
    validation metric, first), on an axis zoomed to the intervals; the champion and the reference stand out."""
    shown = board[board["f1_macro"] == board["f1_macro"]]
    labels = [f"{s} ({st})" for s, st in zip(shown["strategy"], shown["stage"])]
    champion = next((i for i, top in enumerate(shown["champion"]) if top), None) if "champion" in shown else None
    fig = _figure(figsize=(7.0, 0.32 * len(shown) + 1.4), dpi=110)
    ax = fig.subplots()
    y = np.arange(len(shown))
    low, high = shown["f1_macro_ci_low"].to_numpy(), shown["f1_macro_ci_high"].to_numpy()
    mid = shown["f1_macro"].to_numpy()
    colors = ["tab:red" if i == champion else "tab:green" if str(s).startswith("reference") else "tab:blue"
              for i, s in enumerate(shown["strategy"])]
    ax.hlines(y, low, high, colors=colors, lw=2)
    ax.scatter(mid, y, c=colors, zorder=3)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"test macro-F1 with its 95% bootstrap interval\n(rows ordered by {metric})")
    ax.grid(axis="x", alpha=0.3)
    # on the figure, not the axes: long row labels narrow the axes, and a title centred on them ran off the right
    fig.suptitle("red: champion (chosen on validation), green: gradient-boosting reference", fontsize=9)
    fig.tight_layout()
    return fig


@_plain
def confusion_figure(c_true, pred, class_names: list[str], scope: str = ""):
    """Counts and row percentages (share of each true class), coloured by the row percentage, with text in
    white on dark cells and black on light ones."""
    k = len(class_names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (c_true, pred), 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure(figsize=(1.3 * k + 3.0, 1.0 * k + 2), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (row)")
    ax.set_title(f"Champion: confusion matrix (test; count and row %)\n{scope or f'{len(c_true)} rows'}", fontsize=9)
    fig.tight_layout()
    return fig


@_plain
def validation_curves_figure(curves: dict[str, list[tuple[int, float]]], metric: str = "val/f1_macro"):
    """One per-epoch validation curve per head-swap strategy, overlaid (a strategy that does not train, such as
    threshold, is a dashed level line at its value when given as a single point)."""
    fig = _figure(figsize=(7.0, 3.8), dpi=110)
    ax = fig.subplots()
    for name, points in curves.items():
        if len(points) > 1:
            ax.plot(*zip(*points), label=name, lw=1.5)
        elif points:
            ax.axhline(points[0][1], ls="--", lw=1, color="gray", label=f"{name} (no training)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"Head-swap strategies: {metric} per epoch (validation)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@_plain
def tuning_figure(untuned: tuple[str, float], tuned: float, metric: str):
    """The tuned model's validation score beside its untuned start, with the difference written out."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(6.4, 2.4), dpi=110)
    ax = fig.subplots()
    labels, values = [f"untuned start: {untuned[0]}", "tuned"], [untuned[1], tuned]
    ax.scatter(values, [0, 1], color=["tab:gray", "tab:purple"], s=60, zorder=3)
    ax.hlines([0, 1], min(values), values, color=["tab:gray", "tab:purple"], lw=1)
    ax.set_yticks([0, 1], labels)
    ax.set_ylim(-0.6, 1.6)
    span = max(abs(tuned - untuned[1]), 0.01)
    ax.set_xlim(min(values) - span, max(values) + span)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(metric)
    ax.set_title(f"Tuning: {tuned - untuned[1]:+.4f} over its untuned start", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


@_plain
def roc_figure(c_true, proba, class_names: list[str], scope: str = ""):
    """ROC curve of the positive class (binary) or one-vs-rest per class."""
    from sklearn.metrics import auc, roc_curve

    fig = _figure(figsize=(5.0, 4.2), dpi=110)
    ax = fig.subplots()
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for k in classes:
        fpr, tpr, _ = roc_curve(c_true == k, proba[:, k])
        ax.plot(fpr, tpr, label=f"{class_names[k]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Champion: ROC (test{'' if len(class_names) == 2 else ', one-vs-rest'})\n"
                 f"{scope or f'{len(c_true)} rows'}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@_plain
def reliability_figure(c_true, proba, bins: int = 10, scope: str = ""):
    """Accuracy against confidence in equal-width bins: the diagonal is perfect calibration."""
    xs, ys, ns = zip(*calibration_bins(c_true, proba, bins))
    fig = _figure(figsize=(5.0, 4.2), dpi=110)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax.plot(xs, ys, marker="o")
    for x, y, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Champion: reliability (test; rows per bin)\n{scope or f'{len(c_true)} rows'}", fontsize=9)
    fig.tight_layout()
    return fig


@_plain
def png(figure) -> bytes:
    """The figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


GLOSSARY = {
    **{s.name: s.about for s in TABLE},
    "width_*, depth_*": "slim variants: the champion-to-be cut narrower or shallower, then fine-tuned "
                        "(distilled from the unslimmed model when configured)",
    "tuned": "the Optuna search's best configuration (dropout, learning rate, ...), retrained from the untuned "
             "model's starting weights; cross-fitted, each fold's own search and choice (its untuned model where "
             "no trial beat it); absent when no trial beat the untuned model (on any fold)",
    "reference_hgb": "scikit-learn's gradient boosting on the same splits: how good the data allows, not a "
                     "candidate",
    "reference_hgb_regressor": "scikit-learn's gradient-boosting regressor cut at the class edges: the reference's "
                               "own threshold, not a candidate",
    "prior": "the no-information floor: classes drawn at their training frequencies, the features ignored; "
             "macro-F1 about 1/K",
    "nested": "cross-fitted only: each fold's own champion, chosen on that fold's validation rows, predicting that "
              "fold's test rows: the honest score of the selection procedure",
}


def html(title: str, summary: list[str], board: pd.DataFrame, images: dict[str, bytes],
         notes: dict[str, str] | None = None) -> str:
    """One self-contained page: the verdict paragraph, the leaderboard, a glossary of the strategies and
    every image embedded as base64, each with its note (`notes[name]`) under its heading."""
    import html as h

    notes = notes or {}
    verdict = [s for s in summary if s.startswith(("Champion", "Verdict", "Gradient"))]
    details = [s for s in summary if s not in verdict]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{h.escape(title)}</title>",
             "<link rel='icon' href='data:,'>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;margin:0.5em 0 1em}"
             ".verdict{background:#f3f6fa;border-left:4px solid #2b6cb0;padding:0.6em 1em;font-size:15px}"
             ".note{color:#444;font-size:13px;margin:0}dt{font-weight:bold;font-family:monospace}"
             "dd{margin:0 0 0.4em 1.5em;font-size:13px}</style></head><body>",
             f"<h1>{h.escape(title)}</h1>",
             "<div class='verdict' id='verdict'>", *[f"<p>{h.escape(s)}</p>" for s in verdict], "</div>",
             "<ul class='note'>", *[f"<li>{h.escape(s)}</li>" for s in details], "</ul>"]
    images = dict(images)
    first = next(iter(images), None)
    if first is not None:  # the dot plot right under the verdict, before the table
        parts += _image(first, images.pop(first), notes.get(first))
    parts += ["<h2>Leaderboard</h2>",
              "<p class='note'>Ordered by the validation metric; the champion is chosen there, never on test. "
              "Intervals are 95% bootstrap intervals over the test rows; <code>vs threshold</code> is the paired "
              "difference to thresholding the regressor; <code>pareto</code> (*) marks rows no other row beats on "
              "both the metric and the parameter count.</p>",
              board.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")]
    for name, data in images.items():
        parts += _image(name, data, notes.get(name))
    parts += ["<h2>Glossary</h2>", "<dl>",
              *[f"<dt>{h.escape(k)}</dt><dd>{h.escape(v)}</dd>" for k, v in GLOSSARY.items()], "</dl>",
              "</body></html>"]
    return "\n".join(parts)


def _image(name: str, data: bytes, note: str | None) -> list[str]:
    import base64
    import html as h

    return [f"<h2>{h.escape(name)}</h2>", *([f"<p class='note'>{h.escape(note)}</p>"] if note else []),
            f"<img alt='{h.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"]


# ------------------------------------------------------------------ the report's figures, from the runs compared
INTERVALS_NOTE = (
    "Test macro-F1 of every row with its 95% bootstrap interval, rows in the leaderboard's order ({metric}). Red: "
    "the champion; green: the gradient-boosting reference; blue: the other rows. Every row is scored on the same "
    "test rows, so two rows are compared by their paired difference, not by whether these intervals overlap: read "
    "the leaderboard's 'vs threshold' column (the paired 95% interval of each row minus threshold), which is "
    "narrower than either interval.")


def figures(board: pd.DataFrame, pooled, metric: str, class_names: list[str],
            stage_runs: dict[str, str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """report.html's figures as PNG bytes by title, in the page's order, and the note under each: the dot plot,
    the head-swap strategies' validation curves, the champion row's confusion matrix, ROC and reliability from
    `pooled` (leaderboard.Predictions: its test predictions pooled over all its folds, or None), the slim Pareto
    plot, the tuning figures. `stage_runs`: the convert run's tags (`head_swap_run`, `slim_run`, `tune_run`)."""
    images = {"Per strategy": png(intervals_figure(board, metric))}
    notes = {"Per strategy": INTERVALS_NOTE.format(metric=metric)}
    curves = validation_curves(board)
    if curves:
        images["Validation curves"] = png(validation_curves_figure(curves))
        notes["Validation curves"] = (
            "Validation macro-F1 (argmax) per epoch of each head-swap strategy, all on the first split (fold 0 when "
            "cross-fitted), each from its run best on validation there; threshold, which does not train, is its "
            "value on that same split. Training restores the epoch with the lowest validation loss (logged as each "
            "run's metric best_epoch; the MLflow UI draws each run's curves).")
    top = board[board["champion"]]
    if pooled is not None and len(top):
        champion_figures(top.iloc[0], pooled, class_names, images, notes)
    slim = slim_figure(board, stage_runs)
    if slim is not None:
        images["Slimming: Pareto"], notes["Slimming: Pareto"] = slim
    tuning_figures(stage_runs.get("tune_run"), metric, images, notes)
    return images, notes


def champion_figures(top: pd.Series, pooled, class_names: list[str], images: dict, notes: dict) -> None:
    """The champion row's confusion matrix, ROC and reliability plot, into `images` and `notes`: from its test
    predictions pooled over its folds (the leaderboard's test columns come from the same rows), labelled with
    where the rows come from and how many there are (the first seed's, when it ran several)."""
    n, seeds = len(pooled.rows), pooled.proba.shape[0]
    scope = f"{top['strategy']}, {top['scope']}, {n} rows" + (f", first of {seeds} seeds" if seeds > 1 else "")
    proba = pooled.proba[0]
    images["Confusion matrix"] = png(confusion_figure(pooled.c, pooled.pred[0], class_names, scope))
    images["ROC"] = png(roc_figure(pooled.c, proba, class_names, scope))
    images["Reliability"] = png(reliability_figure(pooled.c, proba, scope=scope))
    where = (f"{top['strategy']} ({top['stage']}) on {n} test rows ({top['scope']}): the rows its leaderboard "
             "row and the verdict are computed on" + (f"; the first of its {seeds} seeds" if seeds > 1 else ""))
    notes["Confusion matrix"] = (f"{where}. Each cell: test rows and their share of the true class (row); the cells "
                                 f"add up to {n}.")
    notes["ROC"] = (f"{where}. The leaderboard's roc_auc ({top['roc_auc']:.4f}) is "
                    + ("this curve's AUC" if len(class_names) == 2 else "the mean of these one-vs-rest AUCs")
                    + (", averaged over seeds." if seeds > 1 else "."))
    notes["Reliability"] = f"{where}. Accuracy against confidence; the dashed diagonal is perfect calibration."


def validation_curves(board: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """Each head-swap row's validation macro-F1 per epoch from its best run (`best_run`: best on validation among
    its runs on the first split); a row that did not train (threshold) as its single value from that same run."""
    from . import tracking

    curves = {}
    for _, row in board[board["stage"] == "head_swap"].iterrows():
        run = row["best_run"]
        if not isinstance(run, str) or not run:
            continue
        curve = tracking.epoch_curves(["val/f1_macro"], run).get("val/f1_macro")
        if curve:
            curves[str(row["strategy"])] = curve
        else:
            value = tracking.get_run(run).data.metrics.get("val/f1_macro")
            if value is not None:
                curves[str(row["strategy"])] = [(0, float(value))]
    return curves


def slim_figure(board: pd.DataFrame, stage_runs: dict[str, str]) -> tuple[bytes, str] | None:
    """The slim Pareto plot drawn from the leaderboard (validation macro-F1 against parameters: what slim
    recommends on), its variants and the model slimming started from, with its note; None without slim rows."""
    from . import tracking

    variants = board[board["stage"] == "slim"]
    if variants.empty or "slim_run" not in stage_runs or "head_swap_run" not in stage_runs:
        return None
    recommended = tracking.get_run(stage_runs["slim_run"]).data.tags.get("recommended")
    if recommended is None:  # cross-fitted: each fold recommends on its own validation rows
        picks = [r.data.tags.get("recommended", "?") for r in tracking.children(stage_runs["slim_run"])]
        recommended = picks[0] if len(set(picks)) == 1 else f"per fold: {', '.join(picks)}"
    source = tracking.get_run(stage_runs["head_swap_run"]).data.tags.get("model_run", "")
    start = tracking.get_run(source).data.tags.get("strategy", "") if source else ""
    rows = [{"strategy": s, "cost/params": p, "val/f1_macro": v}
            for s, p, v in zip(variants["strategy"], variants["params"], variants["val_f1_macro"])]
    unslimmed = board[(board["stage"] == "head_swap") & (board["strategy"] == start)]
    if len(unslimmed):
        rows.append({"strategy": "unslimmed", "cost/params": unslimmed["params"].iloc[0],
                     "val/f1_macro": unslimmed["val_f1_macro"].iloc[0]})
    rows = [r for r in rows if r["cost/params"] == r["cost/params"] and r["val/f1_macro"] == r["val/f1_macro"]]
    champion = board[board["champion"]]
    shipped = str(champion["strategy"].iloc[0]) if len(champion) else "?"
    same = "it is the champion" if start == shipped else f"the champion is {shipped}"
    note = (f"Validation macro-F1 (mean over each row's runs, the leaderboard's column) against parameters: what slim "
            f"recommends on. 'unslimmed' is {start or '?'} (run {source or '?'}), the model slimming started from; "
            f"{same}. Red star: the recommended variant ({recommended or '?'}); blue line: the Pareto front; gray: "
            "dominated variants.")
    return png(pareto_figure(rows, recommended, unslimmed=start or "slimming's input")), note


def tuning_figures(tune_run: str | None, metric: str, images: dict, notes: dict) -> None:
    """The tuned model against its untuned start, and Optuna's history with every trial counted (the pruned ones,
    stopped early by the pruner, are not drawn), into `images` and `notes`."""
    from . import tracking

    if not tune_run:
        return
    run = tracking.get_run(tune_run)
    tuning = _tuning(run, metric)
    if tuning is not None:
        (start, before), after = tuning
        title = "Tuning against its untuned start"
        images[title] = png(tuning_figure((start, before), after, metric))
        change = after - before
        notes[title] = (f"Tuned {metric} {after:.4f} vs {before:.4f} for its untuned start ({start}): {change:+.4f}."
                        + (" Tuning changed little: the untuned model was already as good as the search could make "
                           "it." if abs(change) < 0.005 else ""))
    history = tracking.read_artifact(run, "optuna_history.png")
    if history:
        title = "Optuna: optimisation history"
        images[title] = history
        counts = {s: int(run.data.metrics.get(f"trials/{s}", 0)) for s in ("complete", "pruned", "fail")}
        notes[title] = (f"{sum(counts.values())} trials: {counts['complete']} complete (drawn), {counts['pruned']} "
                        f"pruned (stopped early by the pruner, below the median of earlier trials at the same epoch; "
                        f"not drawn), {counts['fail']} failed. Trial 0 is the untuned configuration.")


def _tuning(run, metric: str) -> tuple[tuple[str, float], float] | None:
    """(the untuned start's strategy and `metric`, the tuned `metric`) of a tune run, or None."""
    from . import tracking

    source = run.data.tags.get("source_run")
    if not source or metric not in run.data.metrics:
        return None
    start = tracking.get_run(source)
    if metric not in start.data.metrics:
        return None
    return (start.data.tags.get("strategy", "untuned"), start.data.metrics[metric]), run.data.metrics[metric]


# ------------------------------------------------------------------ what the runs table says without picking columns
def describe_runs(board: pd.DataFrame, metric: str, stage_runs: dict[str, str], runs: dict) -> None:
    """Write what people need beside each run in the MLflow UI: every run of a leaderboard row gets a description
    (what it is, which fold, that the row's pooled test figure is not this run's own), and the head_swap and slim
    stage runs (and their fold runs) get the validation and test macro-F1 of the row they chose, rounded to 3
    decimals: the fold mean and the pooled figure that appear nowhere else in the runs table. `runs`: the board's
    runs by id, as the leaderboard read them."""
    from . import tracking

    for rank, row in enumerate(board.itertuples(index=False), start=1):
        ids = [r for r in str(row.runs).split(",") if r] if isinstance(row.runs, str) else []
        for run_id in ids:
            tags = runs[run_id].data.tags
            note = _run_note(row, rank, len(board), metric, {"folds": stage_runs.get("folds", "?"), **tags})
            tracking.set_tags({tracking.NOTE_TAG: note}, run_id)
    for key in ("head_swap_run", "slim_run"):
        stage_run = stage_runs.get(key)
        model_run = tracking.get_run(stage_run).data.tags.get("model_run") if stage_run else None
        if not model_run:
            continue
        made_by = tracking.get_run(model_run).data.tags  # slim may keep the unslimmed model: a head_swap row
        chosen = board[(board["stage"] == made_by.get("stage")) & (board["strategy"] == made_by.get("strategy"))]
        if chosen.empty:
            continue
        row = chosen.iloc[0]
        tracking.log_metrics(_rounded({"val/f1_macro": row["val_f1_macro"], "test/f1_macro": row["f1_macro"]}),
                             run_id=stage_run)
        by_fold: dict[str | None, list] = {}  # the row's runs on each fold (one per seed)
        for r in str(row["runs"]).split(","):
            run = tracking.get_run(r)
            by_fold.setdefault(run.data.tags.get("fold"), []).append(run.data.metrics)
        for fold_run in tracking.children(stage_run):
            own = by_fold.get(fold_run.data.tags.get("fold")) if "strategy" not in fold_run.data.tags else None
            if own:
                means = {k: np.mean([m.get(k, np.nan) for m in own]) for k in ("val/f1_macro", "test/f1_macro")}
                tracking.log_metrics(_rounded(means), run_id=fold_run.info.run_id)


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    """Three decimals, as people read them in the runs table (full precision: the strategy runs, leaderboard.csv)."""
    return {k: round(float(v), 3) if v is not None and v == v else None for k, v in values.items()}


def _run_note(row, rank: int, n_rows: int, metric: str, tags: dict[str, str]) -> str:
    """A leaderboard row's run description (markdown): what the strategy is, which fold and seed, and how its
    row (all its runs, pooled) ranked."""
    strategy = str(row.strategy)
    what = GLOSSARY.get(strategy) or next((v for k, v in GLOSSARY.items() if strategy.startswith(k.split("*")[0])
                                           and "*" in k), "")
    fold = tags.get("fold")
    where = f"fold {fold} of {tags['folds']}" if fold is not None else "one split"
    seed = f", seed {tags['seed']}" if "seed" in tags else ""
    lines = [f"**{strategy}** ({row.stage}), {where}{seed}: {what}."]
    if row.f1_macro == row.f1_macro:
        lines.append(
            f"This run's own test metrics are on its {'fold' if fold is not None else 'split'}'s test rows only. The "
            f"verdict and the leaderboard use the row {strategy}, all its {row.n} run(s) together: test macro-F1 "
            f"{row.f1_macro:.3f} [{row.f1_macro_ci_low:.3f}, {row.f1_macro_ci_high:.3f}] on {int(row.test_rows)} "
            f"rows ({row.scope}), so it differs from this run's test/f1_macro.")
    ranked = f"Ranked {rank} of {n_rows} on validation ({metric}, mean over the row's runs)"
    lines.append(ranked + (": **the champion**." if row.champion else "."))
    return "\n\n".join(lines)
