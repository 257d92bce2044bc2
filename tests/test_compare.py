"""compare, report, register and serve, checked through real clients: the MLflow store and registry,
`mlflow models serve`, the REST API of `mlflow server`, and `reg2cls predict`."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TUNED_ROW, free_port, invoke, process_env, runs_of, tiny_args, use_store, wait_for_http
from mlflow.tracking import MlflowClient

from pipeline.stages.leaderboard import simplicity


def houses(n: int, seed: int) -> pd.DataFrame:
    """A raw table as users have them: a categorical column and missing values."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"sqft": rng.normal(100, 30, n), "rooms": rng.integers(1, 6, n).astype(float),
                          "district": rng.choice(["north", "south", "east"], n)})
    frame["price"] = (2 * frame["sqft"] + 15 * frame["rooms"]
                      + frame["district"].map({"north": 40, "south": 0, "east": 20}))
    frame["price"] += rng.normal(0, 10, n)
    frame.loc[rng.choice(n, min(8, n // 3), replace=False), "rooms"] = np.nan
    return frame


@pytest.fixture(scope="module")
def converted(store_uri, tmp_path_factory):
    """One convert with two seeds over every stage, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("compare")
    experiment = f"cmp-{uuid.uuid4().hex[:6]}"
    houses(260, 0).to_csv(tmp / "houses.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp)
        args = tiny_args(experiment, "--seeds", "2", "--strategies", "threshold,linear_probe,warm_start",
                         "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false", "--set", "tune.n_trials=2",
                         *TUNED_ROW)
        args[args.index("--data") + 1] = str(tmp / "houses.csv")
        result = invoke("convert", *args, "--target", "price")
        assert result.exit_code == 0, result.output
        yield {"experiment": experiment, "tmp": tmp, "output": result.output, "store": store_uri,
               "model": f"models:/{experiment}-houses@champion"}


def _parent(runs):
    return next(r for r in runs if r.data.tags["stage"] == "convert")


@pytest.mark.slow
def test_head_swap_picks_the_strategy_best_by_its_mean_over_seeds_and_ships_its_best_seed(converted):
    runs = runs_of(converted["experiment"])
    [stage] = [r for r in runs if r.data.tags["stage"] == "head_swap" and "strategy" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id
                and "training" not in r.data.tags]
    means = pd.DataFrame([{"strategy": r.data.tags["strategy"], "f1": r.data.metrics["val/f1_macro"]}
                          for r in children]).groupby("strategy").f1.mean()
    chosen = next(r for r in children if r.info.run_id == stage.data.tags["model_run"])
    assert means[chosen.data.tags["strategy"]] == means.max()
    assert chosen.data.metrics["val/f1_macro"] == max(r.data.metrics["val/f1_macro"] for r in children
                                                       if r.data.tags["strategy"] == chosen.data.tags["strategy"])


@pytest.mark.slow
def test_leaderboard_is_the_mean_and_std_of_the_stored_runs(converted):
    runs = runs_of(converted["experiment"])
    parent = _parent(runs)
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    by_id = {r.info.run_id: r for r in runs}
    rows = {(r.stage, r.strategy): r for r in board.itertuples()}
    assert {("head_swap", "threshold"), ("head_swap", "linear_probe"), ("head_swap", "warm_start"),
            ("slim", "width_0.5"), ("tune", "tuned"), ("compare", "reference_hgb")} <= set(rows)
    assert rows[("head_swap", "warm_start")].n == 2 and rows[("head_swap", "threshold")].n == 1
    for row in board.itertuples():
        for key, col in (("test/f1_macro", "f1_macro"), ("val/f1_macro", "val_f1_macro")):
            values = [by_id[i].data.metrics[key] for i in row.runs.split(",")]
            assert getattr(row, col) == pytest.approx(np.mean(values))
            if len(values) > 1:
                assert getattr(row, f"{col}_std") == pytest.approx(np.std(values, ddof=1))
    assert list(board["val_f1_macro"]) == sorted(board["val_f1_macro"], reverse=True)  # ordered on validation
    assert "Leaderboard" in converted["output"] and rows[("head_swap", "warm_start")].val_f1_macro_std >= 0


@pytest.mark.slow
def test_champion_is_the_best_network_and_registered_with_alias(converted):
    runs = runs_of(converted["experiment"])
    parent = _parent(runs)
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    classifiers = board[board["stage"].isin(["head_swap", "slim", "tune"])]
    top = board[board["champion"]].iloc[0]
    best = board[board["best_val"]].iloc[0]
    assert best["val_f1_macro"] == classifiers["val_f1_macro"].max()  # chosen on validation, threshold included
    # the champion is the best, or the simplest row validation cannot tell from it
    assert top["strategy"] == best["strategy"] or (top["tied"] and simplicity(top) <= simplicity(best))
    name = f"{converted['experiment']}-houses"
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    assert version.tags["champion_run"] == top["best_run"] and version.tags["strategy"] == top["strategy"]
    assert top["strategy"] in version.description and parent.info.run_id in version.description
    assert parent.data.tags["champion_run"] == top["best_run"]


@pytest.mark.slow
def test_report_is_one_self_contained_page(converted):
    parent = _parent(runs_of(converted["experiment"]))
    page = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html")).read_text()
    assert page.count("src='data:image/png;base64,") >= 6  # bars, confusion, ROC, reliability, Pareto, Optuna
    for title in ("Confusion matrix", "ROC", "Reliability", "Slimming: Pareto", "Optuna: optimisation history"):
        assert f"<h2>{title}</h2>" in page
    assert "reference_hgb" in page and "<table" in page and "http" not in page.split("<body>", 1)[1].split("src=")[0]


@pytest.mark.slow
def test_predict_takes_raw_columns_and_handles_bad_input(converted, tmp_path):
    new = houses(12, 1).drop(columns=["price"])
    new.loc[0, "district"] = "unheard-of"
    new.loc[1, "district"] = np.nan
    new.loc[1, ["sqft", "rooms"]] = new.loc[0, ["sqft", "rooms"]].values
    new["notes"] = "extra"
    new.to_csv(tmp_path / "new.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", converted["store"])
        out = invoke("predict", "--model-uri", converted["model"], "--input", str(tmp_path / "new.csv"),
                     "--output", str(tmp_path / "pred.csv"))
        assert out.exit_code == 0, out.output
        assert "ignoring column(s) the model does not use: notes" in out.output
        pred = pd.read_csv(tmp_path / "pred.csv")
        proba = [c for c in pred.columns if c.startswith("proba_")]
        assert len(pred) == 12 and len(proba) == 3
        np.testing.assert_allclose(pred[proba].sum(axis=1), 1.0, rtol=1e-6)
        assert set(pred["label"]) <= {c[len("proba_"):] for c in proba}
        # an unknown category is handled like a missing one
        np.testing.assert_allclose(pred.loc[0, proba].astype(float), pred.loc[1, proba].astype(float), rtol=1e-6)
        new.drop(columns=["sqft"]).to_csv(tmp_path / "short.csv", index=False)
        bad = invoke("predict", "--model-uri", converted["model"], "--input", str(tmp_path / "short.csv"),
                     "--output", str(tmp_path / "x.csv"))
        assert bad.exit_code == 1 and "is missing column(s) sqft" in bad.output
        assert len(bad.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_champion_loads_and_predicts_without_scikit_learn(converted, tmp_path):
    """What serving imports (decision.py, its metrics) leaves scikit-learn out: it would add a second to every
    load of the champion (`mlflow models serve`, `reg2cls predict`, compare's clean-process check)."""
    code = ("import sys, mlflow.pyfunc\n"
            "from mlflow.models import Model\n"
            f"path = mlflow.artifacts.download_artifacts({converted['model']!r})\n"
            "out = mlflow.pyfunc.load_model(path).predict(Model.load(path).load_input_example(path))\n"
            "assert len(out) and 'label' in out.columns, out\n"
            "assert 'sklearn' not in sys.modules, 'scikit-learn imported'")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=process_env(converted["store"]))
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_predict(converted, tmp_path):
    new = houses(6, 2).drop(columns=["price"])
    new.to_csv(tmp_path / "new.csv", index=False)
    port = free_port()
    env = process_env(converted["store"])
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", converted["model"], "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        body = json.dumps({"dataframe_split": json.loads(new.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        served = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", converted["store"])
        assert invoke("predict", "--model-uri", converted["model"], "--input", str(tmp_path / "new.csv"),
                      "--output", str(tmp_path / "pred.csv")).exit_code == 0
    assert [row["label"] for row in served] == list(pd.read_csv(tmp_path / "pred.csv")["label"])


@pytest.mark.slow
def test_compare_alone_re_reads_the_store(converted):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", converted["store"])
        mp.chdir(converted["tmp"])
        refused = invoke("compare", "--experiment", converted["experiment"], "--metric", "test/log_loss")
        out = invoke("compare", "--experiment", converted["experiment"], "--metric", "val/log_loss", "--no-reference")
    assert refused.exit_code == 1 and "would choose the champion on the test split" in refused.output
    assert out.exit_code == 0, out.output
    assert "reference_hgb" not in out.output
    compares = [r for r in runs_of(converted["experiment"])
                if r.data.tags["stage"] == "compare" and "strategy" not in r.data.tags]
    assert len(compares) == 2 and all(r.info.status == "FINISHED" for r in compares)
    parent = _parent(runs_of(converted["experiment"]))
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    assert list(board["val_log_loss"]) == sorted(board["val_log_loss"])


@pytest.mark.slow
def test_rest_api_of_a_tracking_server_finds_every_run(mlflow_server, converted_on_server):
    experiment = converted_on_server

    def api(method: str, path: str, payload: dict | None = None) -> dict:
        url = f"{mlflow_server}/api/2.0/mlflow/{path}"
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    exp = api("GET", f"experiments/get-by-name?experiment_name={experiment}")["experiment"]

    def search(filter_string: str) -> list[dict]:
        return api("POST", "runs/search", {"experiment_ids": [exp["experiment_id"]], "filter": filter_string,
                                           "max_results": 500}).get("runs", [])

    [parent] = search("tags.stage = 'convert'")
    parent_id = parent["info"]["run_id"]
    stages = search(f"tags.mlflow.parentRunId = '{parent_id}'")
    tags = {s["info"]["run_id"]: {t["key"]: t["value"] for t in s["data"]["tags"]} for s in stages}
    assert {t["stage"] for t in tags.values()} == {"baseline", "head_swap", "slim", "tune", "compare"}
    swap_id = next(i for i, t in tags.items() if t["stage"] == "head_swap")
    strategies = search(f"tags.mlflow.parentRunId = '{swap_id}'")
    found = {}
    for run in strategies:
        run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        found[run_tags["strategy"]] = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert run["info"]["status"] == "FINISHED"
    assert set(found) == {"threshold", "finetune"}
    assert all("test/f1_macro" in m and "cost/params" in m for m in found.values())


def _fold_run(fold: int, seed: int):
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(run_id=f"f{fold}s{seed}"),
                           data=SimpleNamespace(tags={"fold": str(fold), "seed": str(seed)}))


def _logged(fold: int) -> dict:
    rows = np.array([2 * fold, 2 * fold + 1])
    return {"rows": rows, "c": np.array([0, 1]), "proba": np.eye(2), "pred": np.array([0, 1]),
            "val_c": np.array([1]), "val_pred": np.array([1])}


@pytest.mark.parametrize("seeds, pooled_seeds", [((42, 43), 1), ((42, 42), 1)], ids=["seeds_differ", "same_seed"])
def test_one_run_a_fold_pools_over_the_folds_whatever_their_seeds(seeds, pooled_seeds):
    """The cross-fitted tuned row holds each fold's kept model, trained with whichever seed that fold's choice
    had: its folds pool into one set of predictions covering every row, not one partial set per seed."""
    from pipeline.stages.leaderboard import pooled_predictions

    runs = [_fold_run(fold, seed) for fold, seed in enumerate(seeds)]
    pooled = pooled_predictions(runs, {r.info.run_id: _logged(fold) for fold, r in enumerate(runs)})
    assert pooled is not None and list(pooled.rows) == [0, 1, 2, 3] and pooled.proba.shape[0] == pooled_seeds


def test_seeds_that_ran_on_different_folds_do_not_pool():
    from pipeline.stages.leaderboard import pooled_predictions

    runs = [_fold_run(0, 42), _fold_run(0, 43), _fold_run(1, 42)]
    assert pooled_predictions(runs, {r.info.run_id: _logged(int(r.data.tags["fold"])) for r in runs}) is None
