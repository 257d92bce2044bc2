"""What people read: the registered champion's run and descriptions, metrics that chart well, and report.html
rendered by a real headless Chromium (Debian's /usr/bin/chromium with /usr/bin/chromedriver)."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY, TUNED_ROW, invoke, runs_of, tiny_args, use_store
from mlflow.tracking import MlflowClient

from pipeline import data, registry, report, tracking

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(tmp_path: Path):
    """Headless Chromium driven by selenium (no download: Debian's browser and driver); skips without them."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("Chromium not installed (apt-get install chromium chromium-driver; .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1300,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def converted(store_uri, tmp_path_factory):
    """One tiny convert over every stage, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("report")
    experiment = f"rep-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp)
        result = invoke("convert", *tiny_args(experiment, "--strategies", "threshold,linear_probe,warm_start",
                                              "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false",
                                              "--set", "tune.n_trials=2", *TUNED_ROW))
        assert result.exit_code == 0, result.output
        runs = runs_of(experiment)
        yield {"experiment": experiment, "tmp": tmp, "runs": runs,
               "parent": next(r for r in runs if r.data.tags["stage"] == "convert")}


@pytest.mark.slow
def test_champion_is_registered_from_its_own_run(converted):
    parent = converted["parent"]
    name = parent.data.tags["registered_model"]
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    assert version.run_id == parent.data.tags["champion_run"]  # the badge and lineage: the winning run
    champion = MlflowClient().get_run(version.run_id)
    assert champion.info.status == "FINISHED" and champion.data.tags["stage"] != "compare"
    compare = next(r for r in converted["runs"] if r.data.tags["stage"] == "compare" and "strategy" not in r.data.tags)
    assert champion.info.end_time <= compare.info.start_time  # ended again with its own end time
    loaded = mlflow.pyfunc.load_model(f"runs:/{version.run_id}/champion")
    assert "label" in loaded.metadata.get_output_schema().input_names()


@pytest.mark.slow
def test_registered_model_and_version_have_markdown_descriptions(converted):
    parent = converted["parent"]
    name, client = parent.data.tags["registered_model"], MlflowClient()
    model = client.get_registered_model(name)
    version = client.get_model_version_by_alias(name, "champion")
    for text in (model.description, version.description):
        assert f"reg2cls predict --model-uri models:/{name}@champion" in text
        assert f"mlflow models serve -m models:/{name}@champion" in text
    assert "**Classes**" in model.description and "**Input**" in model.description
    assert "### How it was chosen" in version.description and "- Verdict:" in version.description
    assert parent.data.tags["champion_run"] in version.description


@pytest.mark.slow
def test_experiment_gets_a_description_once(converted):
    from pipeline import tracking

    client = MlflowClient()
    exp = client.get_experiment_by_name(converted["experiment"])
    assert "convert" in exp.tags["mlflow.note.content"]
    client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", "mine")
    tracking.describe_experiment("other", exp.experiment_id)
    assert client.get_experiment(exp.experiment_id).tags["mlflow.note.content"] == "mine"


@pytest.mark.slow
def test_convert_description_links_the_champion_run_and_version(converted):
    parent = converted["parent"]
    note, tags = parent.data.tags["mlflow.note.content"], parent.data.tags
    assert f"runs/{tags['champion_run']}?workflowType=machine_learning)" in note
    assert f"#/models/{tags['registered_model']}/versions/{tags['registered_version']})" in note


@pytest.mark.slow
def test_final_metrics_leave_the_curves_without_a_cliff(converted):
    client = MlflowClient()
    run = next(r for r in converted["runs"] if r.data.tags.get("strategy") == "warm_start")
    curve = client.get_metric_history(run.info.run_id, "epoch/val_f1_macro")
    loss = client.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert sorted(m.step for m in curve) == sorted(m.step for m in loss)  # one point an epoch, none added after
    final = client.get_metric_history(run.info.run_id, "val/f1_macro")
    assert [m.step for m in final] == [0]  # the returned model's value, logged once, off the curve
    assert 0 <= run.data.metrics["best_epoch"] <= max(m.step for m in loss)  # the restored epoch, marked


@pytest.mark.slow
def test_baseline_final_rmse_is_the_restored_best_epochs(converted):
    client = MlflowClient()
    run = next(r for r in converted["runs"] if r.data.tags["stage"] == "baseline")
    rmse = client.get_metric_history(run.info.run_id, "epoch/val_rmse")
    best = int(run.data.metrics["best_epoch"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/rmse")] == [0]
    assert run.data.metrics["val/rmse"] == pytest.approx(next(m.value for m in rmse if m.step == best), rel=1e-4)


@pytest.mark.slow
def test_strategy_runs_log_their_curves_as_metrics_not_figures(converted):
    # the MLflow UI draws a run's curves from its per-epoch metrics: no per-run figure repeats them
    client = MlflowClient()
    run = next(r for r in converted["runs"] if r.data.tags.get("strategy") == "linear_probe")
    for key in ("train/loss", "val/loss", "val/f1_macro"):
        assert len({m.step for m in client.get_metric_history(run.info.run_id, tracking.epoch_key(key))}) > 1, key
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {"state", "predictions.npz"}


@pytest.mark.slow
def test_report_renders_in_chromium_with_every_image(converted, tmp_path):
    page = Path(mlflow.artifacts.download_artifacts(run_id=converted["parent"].info.run_id,
                                                    artifact_path="report.html", dst_path=str(tmp_path)))
    driver = chromium(tmp_path)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        verdict = driver.find_element("id", "verdict").text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        headings = driver.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
    finally:
        driver.quit()
    assert errors == []
    assert len(images) >= 7 and all(ok for _, ok in images), images
    assert "Champion: " in verdict and "Verdict:" in verdict
    for title in ("Per strategy", "Validation curves", "Confusion matrix", "Slimming: Pareto",
                  "Tuning against its untuned start", "Glossary"):
        assert title in headings


@pytest.mark.slow
def test_report_confusion_matrix_adds_up_to_the_test_rows_it_states(converted, tmp_path):
    import re

    from pipeline.stages.leaderboard import pooled_predictions

    parent = converted["parent"]
    page = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html",
                                                    dst_path=str(tmp_path)))
    driver = chromium(tmp_path)
    try:
        driver.get(page.as_uri())
        verdict = driver.find_element("id", "verdict").text
        note = driver.execute_script("const h = [...document.querySelectorAll('h2')].find(h => h.textContent === "
                                     "'Confusion matrix'); return h.nextElementSibling.textContent")
    finally:
        driver.quit()
    stated = int(re.search(r"on (\d+) test rows", verdict).group(1))
    assert f"add up to {stated}." in note, note
    # the figure is drawn from the champion row's pooled predictions: as many rows as the verdict states
    board = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv"))
    top = board[board["champion"]].iloc[0]
    pooled = pooled_predictions([MlflowClient().get_run(r) for r in top["runs"].split(",")])
    assert len(pooled.c) == len(pooled.pred[0]) == stated == int(top["test_rows"])


@pytest.mark.slow
def test_a_second_data_set_converts_with_the_default_names(converted, tmp_path):
    frame = data.load(TINY["data.source"]).head(200)
    frame.columns = [f"a{i}" for i in range(frame.shape[1] - 1)] + ["y"]  # other columns than the first convert's
    frame.to_csv(tmp_path / "second_set.csv", index=False)
    args = tiny_args(converted["experiment"], "--strategies", "threshold,warm_start", "--target", "y",
                     "--set", "slim.keep_ratios=none", "--set", "slim.depth=false", "--set", "tune.n_trials=0")
    args[args.index("--data") + 1] = str(tmp_path / "second_set.csv")
    result = invoke("convert", *args)
    assert result.exit_code == 0, result.output
    second = next(r for r in runs_of(converted["experiment"]) if r.data.tags["stage"] == "convert"
                  and r.info.run_id != converted["parent"].info.run_id)
    assert second.data.tags["registered_model"] == f"{converted['experiment']}-second_set"
    assert second.info.run_name == f"second_set → {second.data.tags['champion']}"
    first = converted["parent"].data.tags["registered_model"]
    assert MlflowClient().get_model_version_by_alias(first, "champion").run_id == converted["parent"].data.tags[
        "champion_run"]  # the first data set's champion stays where it was


def test_same_data_with_other_columns_is_refused_under_the_default_name(converted):
    before = len(runs_of(converted["experiment"]))
    result = invoke("convert", *tiny_args(converted["experiment"], "--features", "x0,x1,x2"))
    assert result.exit_code == 1 and "with other input columns" in result.output, result.output
    said = [ln for ln in result.output.strip().splitlines()
            if not ln.startswith(("data: ", "    "))]  # after the summary (and its wrapped continuation)
    assert len(said) == 1 and len(runs_of(converted["experiment"])) == before


def test_optuna_study_says_its_data_model_metric_and_convert_run(converted):
    import optuna

    tune = next(r for r in converted["runs"] if r.data.tags["stage"] == "tune" and "strategy" not in r.data.tags)
    study = optuna.load_study(study_name=tune.data.tags["optuna_study"], storage=tune.data.tags["optuna_storage"])
    source = MlflowClient().get_run(tune.data.tags["source_run"]).data.tags["strategy"]
    assert study.study_name.startswith(f"friedman1-{source}-")
    assert study.metric_names == ["val/f1_macro"]
    assert study.user_attrs["mlflow_convert_run"] == converted["parent"].info.run_id
    assert study.user_attrs["model"] == source and study.user_attrs["data"] == TINY["data.source"]


def test_confusion_matrix_has_counts_row_shares_and_contrasting_text():
    c_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    fig = report.confusion_figure(c_true, pred, ["low", "high"])
    cells = [(t.get_text(), t.get_color()) for t in fig.axes[0].texts]
    assert cells == [("3\n75%", "white"), ("1\n25%", "black"), ("3\n75%", "white"), ("1\n25%", "black")]


def test_pareto_figure_names_its_unslimmed_model_and_has_a_legend():
    rows = [{"strategy": "unslimmed", "cost/params": 1000, "val/f1_macro": 0.8},
            {"strategy": "width_0.5", "cost/params": 500, "val/f1_macro": 0.79}]
    ax = report.pareto_figure(rows, "width_0.5", unslimmed="warm_start").axes[0]
    assert "unslimmed (warm_start)" in [t.get_text() for t in ax.texts]
    assert len(ax.get_legend().get_texts()) == 4


@pytest.mark.slow
def test_strategy_runs_record_each_split_as_an_input(converted):
    run = next(r for r in converted["runs"] if r.data.tags.get("strategy") == "warm_start")
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset.name
                for i in run.inputs.dataset_inputs}
    assert set(contexts) == {"train", "validation", "test"}
    assert all(name.endswith(f"[{context}]") for context, name in contexts.items())


@pytest.mark.slow
def test_exported_models_say_their_strategy(converted):
    run = next(r for r in converted["runs"] if r.data.tags.get("strategy") == "warm_start")
    registry.export(run.info.run_id)
    models = MlflowClient().search_logged_models(experiment_ids=[run.info.experiment_id])
    [model] = [m for m in models if m.source_run_id == run.info.run_id and m.name == "warm_start"]  # its name
    assert model.tags["strategy"] == "warm_start" and model.tags["stage"] == "head_swap"
