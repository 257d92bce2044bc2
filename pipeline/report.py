"""Figures and tables for people: the slim Pareto plot, the leaderboard in markdown, report.html.

Figures are plain `matplotlib.figure.Figure` objects, not pyplot's: they need no display and leave
the process's backend (a notebook's, say) alone; tracking.py logs them, `png()` renders them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .metrics import calibration_bins


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) that no other point beats on both: lower cost, higher score."""
    front = []
    for i, (cost, score) in enumerate(points):
        dominated = any(c <= cost and s >= score and (c, s) != (cost, score) for c, s in points)
        if not dominated:
            front.append(i)
    return front


def pareto_figure(rows: list[dict], recommended: str):
    """Parameters vs test macro-F1, one point per slim variant plus the unslimmed model."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    points = [(r["cost/params"], r["test/f1_macro"]) for r in rows]
    front = set(pareto_front(points))
    for i, r in enumerate(rows):
        x, y = points[i]
        style = dict(marker="*", s=160, color="tab:red") if r["strategy"] == recommended else \
            dict(marker="o", s=40, color="tab:blue" if i in front else "tab:gray")
        ax.scatter([x], [y], zorder=3, **style)
        ax.annotate(r["strategy"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ordered = sorted(front, key=lambda i: points[i][0])
    ax.plot([points[i][0] for i in ordered], [points[i][1] for i in ordered], color="tab:blue", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test macro-F1")
    ax.set_title(f"Slimming: size vs quality (recommended: {recommended})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def intervals_figure(board: pd.DataFrame, metric: str):
    """Test macro-F1 of every row with its 95% bootstrap interval, in the board's order (best on `metric`, a
    validation metric, first), on an axis zoomed to the intervals; the champion and the reference stand out."""
    shown = board[board["f1_macro"] == board["f1_macro"]]
    labels = [f"{s} ({st})" for s, st in zip(shown["strategy"], shown["stage"])]
    champion = next((i for i, st in enumerate(shown["stage"]) if st in ("head_swap", "slim", "tune")), None)
    fig = Figure(figsize=(7.0, 0.32 * len(shown) + 1.4), dpi=110)
    ax = fig.subplots()
    y = np.arange(len(shown))
    low, high = shown["f1_macro_ci_low"].to_numpy(), shown["f1_macro_ci_high"].to_numpy()
    mid = shown["f1_macro"].to_numpy()
    colors = ["tab:red" if i == champion else "tab:green" if s == "reference_hgb" else "tab:blue"
              for i, s in enumerate(shown["strategy"])]
    ax.hlines(y, low, high, colors=colors, lw=2)
    ax.scatter(mid, y, c=colors, zorder=3)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"test macro-F1, 95% bootstrap interval (rows ordered by {metric})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("red: champion (chosen on validation), green: gradient-boosting reference", fontsize=9)
    fig.tight_layout()
    return fig


def confusion_figure(c_true, pred, class_names: list[str]):
    k = len(class_names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (c_true, pred), 1)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.0 * k + 2), dpi=110)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Champion: confusion matrix (test)", fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(c_true, proba, class_names: list[str]):
    """ROC curve of the positive class (binary) or one-vs-rest per class."""
    from sklearn.metrics import auc, roc_curve

    fig = Figure(figsize=(5.0, 4.2), dpi=110)
    ax = fig.subplots()
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for k in classes:
        fpr, tpr, _ = roc_curve(c_true == k, proba[:, k])
        ax.plot(fpr, tpr, label=f"{class_names[k]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Champion: ROC (test)" + ("" if len(class_names) == 2 else ", one-vs-rest"), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def reliability_figure(c_true, proba, bins: int = 10):
    """Accuracy against confidence in equal-width bins: the diagonal is perfect calibration."""
    xs, ys, ns = zip(*calibration_bins(c_true, proba, bins))
    fig = Figure(figsize=(5.0, 4.2), dpi=110)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax.plot(xs, ys, marker="o")
    for x, y, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Champion: reliability (test; rows per bin)", fontsize=10)
    fig.tight_layout()
    return fig


def png(figure) -> bytes:
    """The figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


def html(title: str, summary: list[str], board: pd.DataFrame, images: dict[str, bytes]) -> str:
    """One self-contained page: the summary, the leaderboard, every image embedded as base64."""
    import base64
    import html as h

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{h.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;margin:1em 0}</style></head><body>",
             f"<h1>{h.escape(title)}</h1>", "<ul>", *[f"<li>{h.escape(s)}</li>" for s in summary], "</ul>",
             "<h2>Leaderboard</h2>", board.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")]
    for name, data in images.items():
        parts += [f"<h2>{h.escape(name)}</h2>",
                  f"<img alt='{h.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"]
    parts.append("</body></html>")
    return "\n".join(parts)
