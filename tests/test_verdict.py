"""The verdict can be trusted: every choice on validation, intervals on test numbers, cross-fitting on small
data, and threshold as a classifier that can be shipped."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import checkpoint, tracking
from pipeline.stages import leaderboard, strategy_runs

from conftest import TUNED_ROW, invoke, runs_of, settled, tiny_args, use_store


def _strategy_run(name: str, val_f1: float, c: np.ndarray, pred: np.ndarray, val_c: np.ndarray | None = None,
                  val_pred: np.ndarray | None = None, params: int = 10) -> None:
    """A strategy run as head_swap logs one: validation metrics, its test predictions and validation decisions."""
    with mlflow.start_run(run_name=name, nested=True, tags={"stage": "head_swap", "strategy": name, "seed": "0"}):
        mlflow.log_metrics({"val/f1_macro": val_f1, "cost/params": params})
        tracking.log_predictions(np.arange(len(c)), c, np.eye(3)[pred], pred,
                                 **({"val_c": val_c, "val_pred": val_pred} if val_c is not None else {}))


def _right_on(rng, c: np.ndarray, share: float) -> np.ndarray:
    """Classes right on about `share` of the rows, one class off elsewhere."""
    return np.where(rng.random(len(c)) < share, c, (c + 1) % 3)


def test_the_champion_is_best_on_validation_even_when_another_row_is_better_on_test(store, experiment):
    rng = np.random.default_rng(0)
    c, val_c = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    noisy = _right_on(rng, c, 0.5)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="head_swap", tags={"stage": "head_swap"}) as stage:
        _strategy_run("threshold", 0.50, c, noisy, val_c, _right_on(rng, val_c, 0.5))
        _strategy_run("valid_best", 0.90, c, noisy, val_c, _right_on(rng, val_c, 0.9))  # best on validation only
        _strategy_run("test_best", 0.60, c, c, val_c, _right_on(rng, val_c, 0.6))        # perfect on test only
    board = leaderboard(strategy_runs(stage.info.run_id), "val/f1_macro")
    assert list(board["strategy"]) == ["valid_best", "test_best", "threshold"]
    assert board.loc[board["champion"], "strategy"].tolist() == ["valid_best"]
    assert board.loc[board["strategy"] == "test_best", "f1_macro"].item() == 1.0  # reported, never chosen on


def test_when_validation_cannot_separate_the_best_from_threshold_the_champion_is_threshold(store, experiment):
    """The best row on validation is ahead by noise only: the recommendation is the simplest row it cannot be told
    apart from, threshold, and the best row is only marked as such."""
    rng = np.random.default_rng(3)
    c, val_c = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    val_thr = _right_on(rng, val_c, 0.6)
    val_best = np.where(rng.random(200) < 0.05, val_c, val_thr)  # a few rows better than threshold
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="head_swap", tags={"stage": "head_swap"}) as stage:
        _strategy_run("threshold", 0.60, c, _right_on(rng, c, 0.6), val_c, val_thr)
        _strategy_run("finetune", 0.62, c, _right_on(rng, c, 0.6), val_c, val_best, params=500)
    board = leaderboard(strategy_runs(stage.info.run_id), "val/f1_macro").set_index("strategy")
    assert board.loc["finetune", "best_val"] and board.loc["finetune", "tied"]
    assert board.loc["threshold", "champion"] and not board.loc["finetune", "champion"]


def test_exact_ties_on_validation_go_to_the_simpler_row_not_to_the_first_run(store, experiment):
    rng = np.random.default_rng(4)
    c, val_c = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    same = _right_on(rng, val_c, 0.7)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="head_swap", tags={"stage": "head_swap"}) as stage:
        _strategy_run("finetune", 0.7, c, _right_on(rng, c, 0.7), val_c, same, params=500)  # started first
        _strategy_run("threshold", 0.7, c, _right_on(rng, c, 0.7), val_c, same)
    board = leaderboard(strategy_runs(stage.info.run_id), "val/f1_macro").set_index("strategy")
    assert board.loc["threshold", "best_val"] and board.loc["threshold", "champion"]


def test_intervals_and_paired_differences_are_on_every_row(store, experiment):
    rng = np.random.default_rng(1)
    c = rng.integers(0, 3, 400)
    base = np.where(rng.random(400) < 0.6, c, (c + 1) % 3)
    better = np.where(rng.random(400) < 0.5, c, base)  # agrees with threshold where it is not right
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="head_swap", tags={"stage": "head_swap"}) as stage:
        _strategy_run("threshold", 0.5, c, base)
        _strategy_run("better", 0.8, c, better)  # no validation decisions logged: chosen on the metric alone
    board = leaderboard(strategy_runs(stage.info.run_id), "val/f1_macro").set_index("strategy")
    row = board.loc["better"]
    assert row["f1_macro_ci_low"] < row["f1_macro"] < row["f1_macro_ci_high"]
    assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
    assert 0 < row["vs_threshold_low"] < row["vs_threshold"] < row["vs_threshold_high"]
    assert board.loc["threshold", ["vs_threshold", "vs_threshold_low", "vs_threshold_high"]].tolist() == [0, 0, 0]
    # paired: much narrower than the two marginal intervals side by side
    paired = row["vs_threshold_high"] - row["vs_threshold_low"]
    marginal = (row["f1_macro_ci_high"] - row["f1_macro_ci_low"]) + (
        board.loc["threshold", "f1_macro_ci_high"] - board.loc["threshold", "f1_macro_ci_low"])
    assert paired < 0.6 * marginal


@pytest.fixture(scope="module")
def cross_fitted(store_uri, tmp_path_factory):
    """One tiny convert with --folds 3, shared by the tests below."""
    experiment = "verdict-folds"
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp_path_factory.mktemp("folds"))
        result = invoke("convert", *tiny_args(experiment, "--folds", "3",
                                              "--strategies", "threshold,finetune,warm_start",
                                              "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false",
                                              "--set", "tune.n_trials=2", *TUNED_ROW))
    assert result.exit_code == 0, result.output
    return experiment, result.stdout


@pytest.mark.slow
def test_cross_fitting_tests_every_row_exactly_once(cross_fitted):
    experiment, _ = cross_fitted
    runs = runs_of(experiment)
    assert settled(runs)
    for strategy in ("threshold", "finetune", "warm_start"):
        folds = [r for r in runs if r.data.tags.get("strategy") == strategy and r.data.tags["stage"] == "head_swap"]
        assert sorted(r.data.tags["fold"] for r in folds) == ["0", "1", "2"]
        rows = np.concatenate([tracking.read_predictions(r.info.run_id)["rows"] for r in folds])
        assert sorted(rows.tolist()) == list(range(240))  # each of the 240 rows tested exactly once


@pytest.mark.slow
def test_cross_fitted_runs_nest_convert_stage_fold_strategy(cross_fitted):
    experiment, _ = cross_fitted
    runs = runs_of(experiment)
    by_id = {r.info.run_id: r for r in runs}
    parent = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    strategy = next(r for r in runs if r.data.tags.get("strategy") == "finetune")
    fold = by_id[parent[strategy.info.run_id]]
    stage = by_id[parent[fold.info.run_id]]
    convert = by_id[parent[stage.info.run_id]]
    assert fold.info.run_name == f"fold_{strategy.data.tags['fold']}" and stage.info.run_name == "head_swap"
    assert convert.data.tags["stage"] == "convert" and convert.data.tags["folds"] == "3"


@pytest.mark.slow
def test_the_leaderboard_pools_folds_and_says_so(cross_fitted):
    experiment, output = cross_fitted
    [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                            artifact_path="leaderboard.csv")).set_index("strategy")
    # every row, slim's variants and the tuned row (each fold's own study) included, is scored on all rows
    for strategy in ("finetune", "reference_hgb", "width_0.5", "tuned", "prior", "nested"):
        assert board.loc[strategy, "scope"] == "pooled over 3 folds" and board.loc[strategy, "test_rows"] == 240
    # the procedure's own row: chosen on each fold's validation rows, one choice a fold
    assert [c.split(": ")[0] for c in board.loc["nested", "choices"].split(", ")] == ["fold 0", "fold 1", "fold 2"]
    assert board["champion"].sum() == 1 and board["f1_macro_ci_low"].notna().all()
    assert "Verdict:" in output and "Champion:" in output
    assert output.index("Verdict:") < output.index("Leaderboard")  # the answer first
    # the verdict is on the convert run too: its description and summary metrics
    assert "Verdict:" in parent.data.tags["mlflow.note.content"]
    # the procedure's sentence too; the console leaves it to --verbose (the nested row is in its leaderboard)
    assert "Procedure, nested" in parent.data.tags["mlflow.note.content"] and "Procedure, nested" not in output
    assert parent.data.metrics["champion/test_f1_macro"] == board[board["champion"]]["f1_macro"].item()
    assert "champion/vs_threshold_low" in parent.data.metrics


@pytest.mark.slow
def test_the_console_fits_a_screen(cross_fitted):
    """A cross-fitted convert's stdout, the default run's shape: at most 30 lines, none over 120 characters,
    the verdict before the leaderboard and where to look next at the end."""
    _, output = cross_fitted
    lines = output.splitlines()
    assert len(lines) <= 30, output
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    assert output.index("Verdict:") < output.index("Leaderboard") < output.index("mlflow ui --backend-store-uri")
    first = next(i for i, line in enumerate(lines) if line.startswith("Leaderboard"))
    table = lines[first:next(i for i in range(first, len(lines)) if lines[i].startswith(("...", "Predict", "View")))]
    assert len(table) >= 3 and max(map(len, table)) <= 100, "\n".join(table)  # the leaderboard fits 100 columns


@pytest.mark.parametrize("flag", ["diverged", "collapsed", "untrained"])
def test_an_excluded_rows_role_keeps_the_leaderboard_within_100_columns(flag):
    from pipeline.stages.verdict import role

    said = role(pd.Series({"excluded": flag, "champion": False, "strategy": "finetune"}))
    assert said == f"✗ {flag}" and len(said) <= len("best on val")  # the role column's widest other word


@pytest.mark.slow
def test_the_folds_slim_runs_draw_no_figure_the_report_draws_slim_once(cross_fitted):
    """Five matplotlib figures a convert cost seconds in the main process while the workers waited."""
    experiment, _ = cross_fitted
    runs = runs_of(experiment)
    folds = [r for r in runs if r.data.tags.get("stage") == "slim" and "fold" in r.data.tags
             and "strategy" not in r.data.tags]
    client = mlflow.MlflowClient()
    assert len(folds) == 3
    assert not any(a.path == "pareto.png" for r in folds for a in client.list_artifacts(r.info.run_id))
    [parent] = [r for r in runs if r.data.tags["stage"] == "convert"]
    assert "Slimming: Pareto" in tracking.read_artifact(parent, "report.html").decode()


@pytest.mark.slow
def test_each_run_carries_its_test_interval(cross_fitted):
    experiment, _ = cross_fitted
    strategy_runs_ = [r for r in runs_of(experiment) if r.data.tags.get("strategy") in ("finetune", "reference_hgb")]
    for run in strategy_runs_:
        m = run.data.metrics
        assert m["test/f1_macro_ci_low"] <= m["test/f1_macro"] <= m["test/f1_macro_ci_high"]
        assert m["test/accuracy_ci_low"] <= m["test/accuracy"] <= m["test/accuracy_ci_high"]


@pytest.mark.slow
def test_threshold_registered_as_champion_serves_the_regressor_cut_at_the_edges(experiment, tmp_path):
    from pipeline import config, data
    from pipeline.stages.common import regressor_outputs

    result = invoke("convert", *tiny_args(experiment, "--folds", "1", "--strategies", "threshold",
                                          "--set", "slim.keep_ratios=none", "--set", "slim.depth=false",
                                          "--set", "tune.n_trials=0"))
    assert result.exit_code == 0, result.output
    runs = runs_of(experiment)
    [parent] = [r for r in runs if r.data.tags["stage"] == "convert"]
    assert parent.data.tags["champion"] == "threshold"
    [base] = [r for r in runs if r.data.tags["stage"] == "baseline"]
    cfg = config.load(None, config.recovered(parent.data.params))
    prepared = data.prepare(cfg.data, cfg.seed)
    regressor = checkpoint.load_run_model(base.info.run_id)
    cut = data.to_classes(regressor_outputs(regressor, prepared.test.x, prepared, "cpu"), prepared.edges)
    raw = data.load_target(cfg.data)[0].iloc[prepared.test_rows][prepared.preprocessor.columns]
    raw.to_csv(tmp_path / "new.csv", index=False)
    model_uri = f"models:/{parent.data.tags['registered_model']}@champion"
    out = invoke("predict", "--model-uri", model_uri, "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "pred.csv"))
    assert out.exit_code == 0, out.output
    served = pd.read_csv(tmp_path / "pred.csv")["label"].tolist()
    assert served == [prepared.class_names[k] for k in cut]
    proba = pd.read_csv(tmp_path / "pred.csv").filter(like="proba_").to_numpy()
    assert 0 < proba.min() and proba.max() < 1  # real probabilities, not 0/1: a finite, honest log loss


@pytest.mark.parametrize("folds, rows, expected", [("auto", 442, 5), ("auto", 9999, 5), ("auto", 10_000, 1),
                                                   ("3", 100, 3), ("1", 100, 1)])
def test_folds_auto_cross_fits_small_tables_only(folds, rows, expected):
    from pipeline import data

    assert data.n_folds(folds, rows) == expected


@pytest.mark.slow
def test_a_run_whose_training_diverged_is_marked_and_never_champion(experiment):
    result = invoke("convert", *tiny_args(experiment, "--strategies", "threshold,finetune", "--lr", "1e12",
                                          "--set", "slim.keep_ratios=none", "--set", "slim.depth=false",
                                          "--set", "tune.n_trials=0"))
    assert result.exit_code == 0, result.output
    runs = runs_of(experiment)
    [finetune] = [r for r in runs if r.data.tags.get("strategy") == "finetune"]
    assert finetune.data.tags["training"] in ("diverged", "untrained")
    [parent] = [r for r in runs if r.data.tags["stage"] == "convert"]
    # the regressor trained at that rate learned nothing either: the floor or threshold, never the flagged run
    assert parent.data.tags["champion"] in ("threshold", "prior") and "cannot be champion" in result.output


@pytest.mark.slow
def test_on_features_that_carry_no_signal_the_verdict_says_chance_and_names_no_winner(experiment, tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"]).assign(y=rng.normal(size=300))
    table.to_csv(tmp_path / "noise.csv", index=False)
    result = invoke("convert", *tiny_args(experiment, "--strategies", "threshold,finetune,warm_start,linear_probe",
                                          "--set", "slim.keep_ratios=none", "--set", "slim.depth=false",
                                          "--set", "tune.n_trials=0"),
                    "--data", str(tmp_path / "noise.csv"), "--target", "y", "--classes", "quantile:3")
    assert result.exit_code == 0, result.output
    [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
    verdict = next(line for line in result.output.splitlines() if line.startswith("Verdict:"))
    assert "no better than chance" in verdict and "beats" not in verdict
    m = parent.data.metrics
    if parent.data.tags["champion"] != "prior":  # the simplest row tied with the best: it must not beat chance
        assert m["champion/vs_prior_low"] <= 0
    assert m["champion/test_f1_macro_ci_low"] <= 1 / 3 <= m["champion/test_f1_macro_ci_high"]


@pytest.mark.slow
def test_the_alias_the_tags_the_description_the_report_and_the_hint_name_one_model(cross_fitted):
    experiment, output = cross_fitted
    [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
    tags = parent.data.tags
    champion, registered = tags["champion"], tags["registered_model"]
    version = mlflow.MlflowClient().get_model_version_by_alias(registered, "champion")
    assert str(version.version) == tags["registered_version"] and version.tags["strategy"] == champion
    assert version.tags["champion_run"] == tags["champion_run"] == tags["model_run"]
    # plain first line: the registered model's versions table shows it unrendered
    assert version.description.startswith(f"{champion} (") and "each of the 3 outer folds" in version.description
    assert f"Champion: {champion} (" in output and f"models:/{registered}@champion" in output
    report = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html")
    assert f"Champion: {champion} (" in open(report).read()


def test_a_cross_fitted_champion_ships_the_average_of_its_fold_models(cross_fitted):
    """What ships after cross-fitting is every fold's model of the champion row, averaged (a cross-fit ensemble):
    the served probabilities are the mean of the members' tempered probabilities."""
    import torch

    from pipeline import decision, registry
    from pipeline.model import FoldEnsemble, fitted_rule

    experiment, _ = cross_fitted
    [parent] = [r for r in runs_of(experiment) if r.data.tags["stage"] == "convert"]
    if parent.data.tags["champion"] == "prior":
        pytest.skip("nothing registered: the floor won on this tiny table")
    pyfunc, columns, _ = registry.load_champion(f"models:/{parent.data.tags['registered_model']}@champion")
    model = pyfunc.unwrap_python_model().model
    assert isinstance(model, FoldEnsemble) and len(model.members) == 3
    x = torch.randn(16, 10)  # friedman1: 10 features
    with torch.no_grad():
        mean = torch.stack([torch.exp(torch.tensor(decision.tempered(decision.scores_of(m(x), 3), float(t))))
                            for m, t in zip(model.members, model.temperatures)]).mean(0)
        np.testing.assert_allclose(torch.exp(model(x)).numpy(), mean.numpy(), rtol=1e-4, atol=1e-6)
    assert set(fitted_rule(model)) == {"temperature", "offsets", "ordinal"}
