"""convert: every stage in order under one parent run."""
from __future__ import annotations

from torch import nn

from .. import tracking
from ..config import Config
from ..data import Prepared
from ..surgery import Head
from .baseline import baseline
from .common import log_run_inputs
from .compare import Comparison, compare
from .head_swap import head_swap
from .slim import slim
from .tune import tune


def convert(cfg: Config, data: Prepared, brought: tuple[nn.Module, Head] | None, force: bool = False) -> Comparison:
    """baseline -> head_swap -> slim -> tune -> compare under one parent run. `brought` is the user's
    model from `bring` (called before this parent run opens, so a model that does not fit leaves no
    run); `force` re-runs stages that could be reused."""
    with tracking.start("convert", "convert", tags={"split_key": data.split_key}) as run_id:
        log_run_inputs(cfg, data)
        base = baseline(cfg, data, brought, force=force)
        swapped = head_swap(cfg, data, base, force=force)
        slimmed = slim(cfg, data, swapped, force=force)
        stage_runs = {"baseline_run": base.run_id, "head_swap_run": swapped.run_id, "slim_run": slimmed.run_id}
        if cfg.tune.n_trials > 0:
            stage_runs["tune_run"] = tune(cfg, data, slimmed, force=force).run_id
        tracking.set_tags(stage_runs)
        return compare(cfg, data, run_id)
