"""Figures and tables for people: the slim Pareto plot, the leaderboard in markdown.

Figures are matplotlib objects (Agg backend, no display needed); tracking.py logs them.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


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
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
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
