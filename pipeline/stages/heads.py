"""The classification heads a regressor can get (`classifier_from`), the strategies that apply to the data
(`strategies_for`), and the check, before any run opens, that the regressor can get them (`check_convertible`).
Below the stages: baseline checks a brought model with it, head_swap builds its classifiers with it."""
from __future__ import annotations

import copy

import numpy as np
from torch import nn

from ..config import Config, UserError
from ..data import Prepared
from ..strategies import STRATEGY
from ..surgery import (CornHead, Head, check_swap, cumulative_link_head, edges_before_activation,
                       fit_cumulative_link_scale, fit_warm_start_scale, new_head, swap_head, warm_start_head)
from ..train import predict


def strategies_for(cfg: Config, data: Prepared) -> list[str]:
    """The strategies to run: `head_swap.strategies`, without the ordinal ones on two classes, where they are
    others reparametrised (cumulative_link's one logit (r - c)/s is warm_start's s(r - e); corn's one
    conditional head is finetune's new head): running them would only add ties under other names."""
    if data.n_classes > 2:
        return list(cfg.head_swap.strategies)
    return [s for s in cfg.head_swap.strategies if not STRATEGY[s].ordinal]


def check_convertible(cfg: Config, data: Prepared, regressor: nn.Module, head: Head) -> None:
    """Fail before any run opens if the swapped model's output has the wrong shape, or warm_start (or
    cumulative_link) could not reproduce threshold through the model's output activation."""
    skipped = [s for s in cfg.head_swap.strategies if s not in strategies_for(cfg, data)]
    if skipped and not strategies_for(cfg, data):
        raise UserError(f"with two classes the ordinal strategies ({', '.join(skipped)}) are warm_start and finetune "
                        "under other names; pass --strategies warm_start,finetune (or more classes)")
    classifier_from(regressor, head, data, "cpu")
    if any(STRATEGY[s].head in ("warm_start", "cumulative_link") for s in cfg.head_swap.strategies):
        warm_start_edges(regressor, head, data)


def warm_start_edges(regressor: nn.Module, head: Head, data: Prepared) -> np.ndarray:
    """Class edges in the units of the regression head's own output (before any output activation)."""
    edges = (data.edges - data.y_mean) / data.y_std  # in the regressor's output units
    activation = regressor.get_submodule(head.activation) if head.activation else None
    return edges_before_activation(activation, edges)


def classifier_from(regressor: nn.Module, head: Head, data: Prepared, device,
                    kind: str = "new") -> tuple[nn.Module, float | None]:
    """A copy of the regressor with a classification head of `kind`: `new` (random), `corn` (random
    CornHead), or computed from the regression head: `warm_start` or `cumulative_link` (whose scale,
    fitted on validation, is returned too); output activation removed; output shape and untouched
    backbone checked."""
    model = copy.deepcopy(regressor)
    if head.activation:  # logits, not squashed outputs
        swap_head(model, head.activation, nn.Identity())
    backbone = {name: v.clone() for name, v in model.state_dict().items()}
    scale = None
    if kind in ("warm_start", "cumulative_link"):
        # the model without its output activation outputs the head's own r
        edges = warm_start_edges(regressor, head, data)
        r = predict(model, data.val.x, device).reshape(-1)
        if kind == "warm_start":
            scale = fit_warm_start_scale(r, data.val.c, edges)
            swap_head(model, head.name, warm_start_head(model.get_submodule(head.name), edges, scale))
        else:
            scale = fit_cumulative_link_scale(r, data.val.c, edges)
            swap_head(model, head.name, cumulative_link_head(model.get_submodule(head.name), edges, scale))
    elif kind == "corn":
        swap_head(model, head.name, CornHead(head.in_features, data.n_classes))
    else:
        swap_head(model, head.name, new_head(head.in_features, data.n_classes))
    check_swap(model, backbone, head.name, data.n_features, data.n_classes)
    return model, scale
