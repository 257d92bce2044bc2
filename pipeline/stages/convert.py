"""convert: every stage in order under one parent run."""
from __future__ import annotations

from torch import nn

from .. import tracking
from ..config import Config
from ..data import Prepared
from ..surgery import Head
from .baseline import baseline, bring
from .common import StageResult, log_run_inputs, say
from .compare import compare, leaderboard
from .head_swap import head_swap
from .slim import slim
from .tune import tune


def convert(cfg: Config, data: Prepared, prev: StageResult | None = None, force: bool = False,
            brought: tuple[nn.Module, Head] | None = None) -> StageResult:
    """baseline -> head_swap -> slim -> tune -> compare under one parent run; returns the leaderboard."""
    brought = brought or bring(cfg, data)  # before the parent run opens: a model that does not fit leaves no run
    with tracking.start("convert", "convert", tags={"split_key": data.split_key}) as run_id:
        log_run_inputs(cfg, data)
        base = baseline(cfg, data, force=force, brought=brought)
        swapped = head_swap(cfg, data, base, force=force)
        stage_runs = {"baseline_run": base.run_id, "head_swap_run": swapped.run_id}
        slimmed = tuned = None
        if swapped.model is not None:
            slimmed = slim(cfg, data, swapped, force=force)
            stage_runs["slim_run"] = slimmed.run_id
            if cfg.tune.n_trials > 0:
                tuned = tune(cfg, data, slimmed, force=force, resume=False)
                stage_runs["tune_run"] = tuned.run_id
        else:
            say("slim, tune: skipped, no head-swap strategy trained a model (threshold only)")
        tracking.set_tags(stage_runs)
        compared = compare(cfg, data, StageResult(run_id)) if swapped.model is not None else None
        board = compared.details["leaderboard"] if compared else leaderboard([swapped.run_id], metric=cfg.compare.metric)
    return StageResult(run_id, compared.model if compared else None,
                       details={"leaderboard": board, "compare": compared, "baseline": base, "head_swap": swapped,
                                "slim": slimmed, "tune": tuned})
