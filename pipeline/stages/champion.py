"""The champion that ships: its model (on one split the champion row's model, cross-fitted a cross-fit
ensemble of its fold models), its registration in the Model Registry, and the registered model's and
version's descriptions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from .. import checkpoint, decision, registry, selection, tracking
from ..config import Config
from ..data import Prepared
from ..strategies import trains
from .common import stands_for


def register(cfg: Config, splits: list[Prepared], top: pd.Series, summary: list[str], parent: str,
             registered: str) -> tuple[nn.Module, str]:
    """The champion row `top`'s model (`shipped_model`) registered as `registered` with the alias `champion`,
    on the run that logged it; its version describes it with `summary` (how it was chosen). Returns the model
    and its version (compare then checks that it loads in a clean process: `registry.checking_loads`)."""
    data, champion_run = splits[0], top["best_run"]
    model = shipped_model(top, splits)
    version = registry.register_champion(
        model, registry.serving_meta(data), raw_example(data), registered,
        description=version_description(summary, top, champion_run, parent, registered,
                                        what_ships(top, data, len(splits), model)),
        tags={"champion_run": champion_run, "strategy": str(top["strategy"]), "parent_run": parent},
        run_id=champion_run, model_description=model_description(cfg, data, registered))
    stands_for(champion_run)
    return model, version


def _how_to_call(registered: str) -> list[str]:
    return ["```bash", f"reg2cls predict --model-uri models:/{registered}@champion --input new.csv "
            "--output predictions.csv",
            f"mlflow models serve -m models:/{registered}@champion --env-manager local --host 127.0.0.1 --port 5001",
            "```"]


def model_description(cfg: Config, data: Prepared, registered: str) -> str:
    """The registered model's description (markdown): what it is, its inputs and classes, how to call it."""
    columns = [f"`{c}` (number)" for c in data.preprocessor.numeric]
    columns += [f"`{c}` (category)" for c in data.preprocessor.categories]
    return "\n".join([
        f"## {registered}",
        "",
        f"A classifier made by **reg2cls** from a PyTorch regressor of `{cfg.data.target}` "
        f"(data: `{cfg.data.source}`). The alias `champion` points at the version chosen by the newest "
        "`reg2cls convert`; each version's description says how it was chosen.",
        "",
        "- **Input**: the raw table's columns " + ", ".join(columns) + " (preprocessing travels inside the model).",
        "- **Output**: `label` (the class name) and one `proba_<class>` column per class.",
        "- **Classes**: " + ", ".join(f"`{c}`" for c in data.class_names)
        + f" ({cfg.data.target} cut at the class edges "
        + ", ".join(f"{e:.4g}" for e in data.original_units(data.edges)) + ").",
        "",
        "### How to call it",
        *_how_to_call(registered)])


def shipped_model(top: pd.Series, splits: list[Prepared]) -> nn.Module:
    """The model the registry gets. On one split, the champion row's model (its seed best on validation).
    Cross-fitted, the average of the champion row's model on every fold (each its seed best on that fold's
    validation rows): a cross-fit ensemble (model.FoldEnsemble), whose decision rule is fitted on every fold's
    validation rows, each scored by its own fold's member, which never trained on them."""
    if len(splits) == 1:
        return checkpoint.load_run_model(top["best_run"])
    from ..model import fold_ensemble, set_rule
    from ..train import predict

    runs = [tracking.get_run(run_id) for run_id in str(top["runs"]).split(",")]
    by_fold = [[r for r in runs if r.data.tags.get("fold", "0") == str(data.fold)] for data in splits]
    if not all(by_fold):  # a fold without a finished run of this row (it failed there): its first fold's model
        return checkpoint.load_run_model(top["best_run"])
    k = splits[0].n_classes
    members, temperatures, scores, classes = [], [], [], []
    for data, on_fold in zip(splits, by_fold):
        best = selection.best_run(on_fold)
        member = checkpoint.load_run_model(best.info.run_id).cpu()
        temperatures.append(decision.rule_of(member, k)["temperature"])
        members.append(member)
        scores.append(decision.tempered(decision.scores_of(predict(member, data.val.x, "cpu"), k), temperatures[-1]))
        classes.append(data.val.c.numpy())
    ensemble = fold_ensemble(members, k, temperatures)
    set_rule(ensemble, decision.fit_scores(np.concatenate(scores), np.concatenate(classes),
                                           decision.is_ordinal(ensemble, k)))
    return ensemble.eval()


def what_ships(top: pd.Series, data: Prepared, folds: int, model: nn.Module) -> str:
    """What the registered `model` is, in one sentence: which model, trained on how many rows, and which of the
    printed numbers describe it."""
    from ..model import FoldEnsemble

    rows = f"{len(data.train.x)} training rows (validation: {len(data.val.x)})"
    what = "a regressor cut at the class edges" if not trains(top["strategy"]) else f"{top['strategy']}'s model"
    if folds == 1:
        return (f"The model is {what}, trained on {rows}; the test figures are its own, on "
                f"{int(top['test_rows'])} held-out rows.")
    if not isinstance(model, FoldEnsemble):
        return (f"The model is {what} of outer fold {data.fold} of {folds} only (the row has no model on some "
                f"fold), trained on {rows}; the pooled test figures describe the recipe over every fold.")
    return (f"The model is the average of {what} on each of the {folds} outer folds (a cross-fit ensemble: each "
            f"member trained on its fold's {rows}; together they saw every row), with one decision rule fitted on "
            f"every fold's validation rows. The test figures are the members' own, each on its fold's held-out rows "
            f"and pooled: they describe one fold's model on rows it never saw, and understate the average.")


def version_description(summary: list[str], top: pd.Series, champion_run: str, parent: str, registered: str,
                        what: str = "") -> str:
    """A registered version's description (markdown): which strategy, from which run (links to the runs' pages),
    why it was chosen, and `what` the model is (`what_ships`). Its first line is plain text: the registered
    model's versions table shows it unrendered."""
    experiment = tracking.get_run(parent).info.experiment_id
    return "\n".join([
        f"{top['strategy']} ({top['stage']}), test macro-F1 {top['f1_macro']:.3f} [{top['f1_macro_ci_low']:.3f}, "
        f"{top['f1_macro_ci_high']:.3f}] ({top['scope']})",
        "",
        f"Logged by [run {champion_run}]({tracking.ui_page(experiment, champion_run)}) of "
        f"[convert run {parent}]({tracking.ui_page(experiment, parent)}).",
        "",
        what,
        "",
        "### How it was chosen",
        *[f"- {line}" for line in summary],
        "",
        "### How to call it",
        *_how_to_call(registered)])


def raw_example(data: Prepared) -> pd.DataFrame:
    """A few rows of the raw input columns (numbers as float64, so missing values stay valid)."""
    frame = data.example[data.preprocessor.columns].copy()
    for col in data.preprocessor.numeric:
        frame[col] = frame[col].astype("float64")
    for col in data.preprocessor.categories:
        frame[col] = frame[col].astype(str)
    return frame
