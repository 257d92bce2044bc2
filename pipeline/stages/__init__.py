"""The stages: baseline, head_swap, slim, tune, compare, and convert, which runs them in order under
one parent run. Each takes the config, the prepared data and what it builds on, and returns what the
next builds on:

    baseline(cfg, data, brought)            -> StageResult (the regressor)
    head_swap(cfg, data, baseline_result)   -> StageResult (the classifier best on validation)
    slim(cfg, data, source_result)          -> StageResult (the recommended smaller variant)
    tune(cfg, data, source_result)          -> StageResult (the best trial's model)
    compare(cfg, splits, parent_run_id)     -> Comparison  (leaderboard, verdict, registered champion)

convert runs them in order on one split, or cross-fitted on several outer folds (baseline, head_swap and
slim on every fold, choosing on the mean over folds; tune searches on the first fold and retrains its best
configuration on the others).

Stages compose model, surgery, train, metrics and tracking; batch loops live in train.py only. A stage
whose stage key (reuse.py) matches a FINISHED run is reused instead of trained again. One module per
stage; common.py and heads.py hold what they share (no stage imports another but convert, which runs
them all).
"""
from .baseline import baseline, bring
from .common import StageResult, seeds_of, stage_output
from .compare import Comparison, compare
from .convert import convert, estimate
from .head_swap import head_swap
from .heads import classifier_from
from .leaderboard import leaderboard, strategy_runs
from .slim import slim
from .tune import tune
from .verdict import display

__all__ = ["Comparison", "StageResult", "baseline", "bring", "classifier_from", "compare", "convert", "display",
           "estimate", "head_swap", "leaderboard", "seeds_of", "slim", "stage_output", "strategy_runs", "tune"]
