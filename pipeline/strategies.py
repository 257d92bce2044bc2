"""The head-swap strategies, one frozen row each: the one place that says how a strategy differs from the
others. The stages read its fields (head_swap builds and trains by them, the leaderboard ranks by them);
nothing else should test a strategy's name for its behaviour. docs/design.md says why each strategy exists.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str
    head: str            # the head it starts from (stages.heads.classifier_from's kind): new, warm_start,
                         # cumulative_link (both computed from the regression head), corn
    probe: bool          # trains the head alone first, the backbone frozen (a linear probe)
    finetune: bool       # trains the whole network (after the probe: at lr * head_swap.lp_ft_lr_factor)
    reset: bool          # every weight reset: the architecture alone, so it can start before the regressor trained
    ordinal: bool        # an ordinal head: on two classes another strategy under another name, so not run
    longest_first: int   # the order the workers take it in, lower first: a long run taken last leaves them idle.
                         # From the runs' cost/train_seconds on diabetes, penguins and diamonds: lp_ft (a probe,
                         # then a fine-tune) is the longest everywhere, corn among the three longest; a probe
                         # converges slowly on large tables; threshold trains nothing
    simpler: int         # among rows the evidence cannot tell apart, lower is simpler: nearer the regressor
    about: str           # one line for the report's glossary

    @property
    def trains(self) -> bool:
        """False for threshold alone: the regressor cut at the class edges, no step taken."""
        return self.probe or self.finetune

    @property
    def random_start(self) -> bool:
        """Whether its untrained model is a random head (not threshold): a run that never beats its start is then
        flagged `untrained`."""
        return self.head not in ("warm_start", "cumulative_link")


TABLE = (
    # name, head, probe, finetune, reset, ordinal, longest_first, simpler, about
    Strategy("threshold", "warm_start", False, False, False, False, 4, 0,
             "the regressor unchanged, its output cut at the class edges: the bar every conversion must beat"),
    Strategy("linear_probe", "new", True, False, False, False, 2, 3,
             "a new head trained on the frozen regressor's features"),
    Strategy("finetune", "new", False, True, False, False, 3, 4,
             "a new head, and the whole network trained"),
    Strategy("lp_ft", "new", True, True, False, False, 0, 5,
             "linear probe first, then the whole network fine-tuned at a lower learning rate"),
    Strategy("warm_start", "warm_start", False, True, False, False, 3, 1,
             "a classification head computed from the regression head (starts equal to threshold), then "
             "fine-tuned"),
    Strategy("scratch", "new", False, True, True, False, 3, 7,
             "the same architecture trained from random weights: the control"),
    Strategy("cumulative_link", "cumulative_link", False, True, False, True, 3, 2,
             "ordinal: the regressor's output with learnable ordered cut points (starts equal to threshold), the "
             "whole network trained on the ordinal likelihood"),
    Strategy("corn", "corn", False, True, False, True, 1, 6,
             "ordinal: K-1 conditional binary heads (CORN, Shi et al. 2021), the whole network trained"),
)
STRATEGY = {s.name: s for s in TABLE}
STRATEGIES = tuple(STRATEGY)  # every strategy, the default of head_swap.strategies


def trains(name: str) -> bool:
    """Whether a run whose `strategy` tag is `name` trained: a head-swap strategy's row says (threshold takes no
    step); any other name (a slim variant, a tuned model, a reference) is a model that trained."""
    return STRATEGY[name].trains if name in STRATEGY else True
