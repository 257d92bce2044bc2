"""The stages, each `stage(cfg, data, prev) -> StageResult`: baseline, head_swap, slim, tune, compare,
and convert, which runs them in order under one parent run.

Stages compose model, surgery, train, metrics and tracking; batch loops live in train.py only. A stage
whose stage key (config, split key, upstream runs, package source) matches a FINISHED run is reused
instead of trained again. One module per stage; common.py holds what they share.
"""
from .baseline import baseline, bring
from .common import StageResult, seeds_of
from .compare import compare, display, leaderboard
from .convert import convert
from .head_swap import classifier_from, head_swap
from .slim import slim
from .tune import tune

__all__ = ["StageResult", "baseline", "bring", "classifier_from", "compare", "convert", "display", "head_swap",
           "leaderboard", "seeds_of", "slim", "tune"]
