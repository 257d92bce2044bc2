"""The story in the MLflow UI itself: a real `mlflow server` on 127.0.0.1 and headless Chromium open the
experiment and the convert run, and find the verdict and the link to the champion's run. It guards what
reg2cls writes (descriptions, links), not MLflow's own UI."""
from __future__ import annotations

import json
import urllib.request

import pytest
from test_report import chromium


def _api(server: str, path: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{server}/api/2.0/mlflow/{path}", timeout=30).read())


def _parent(server: str, experiment: str) -> tuple[str, dict]:
    """The experiment's id and its convert run, as the REST API returns them."""
    exp_id = _api(server, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]["experiment_id"]
    req = urllib.request.Request(f"{server}/api/2.0/mlflow/runs/search", method="POST",
                                 data=json.dumps({"experiment_ids": [exp_id],
                                                  "filter": "tags.stage = 'convert'"}).encode(),
                                 headers={"Content-Type": "application/json"})
    [parent] = json.loads(urllib.request.urlopen(req, timeout=30).read())["runs"]
    return exp_id, parent


def _tag(run: dict, key: str) -> str:
    return next(t["value"] for t in run["data"]["tags"] if t["key"] == key)


@pytest.mark.slow
def test_experiment_link_opens_on_its_training_runs(mlflow_server, converted_on_server, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline import tracking

    exp_id, parent = _parent(mlflow_server, converted_on_server)
    driver = chromium(tmp_path)
    try:
        driver.get(f"{mlflow_server}/{tracking.ui_page(exp_id)}")  # the link convert prints, without its run
        WebDriverWait(driver, 90).until(lambda d: parent["info"]["run_name"] in d.find_element("tag name", "body").text,
                                        "the convert run is not listed")
        url = driver.current_url
    finally:
        driver.quit()
    assert f"/experiments/{exp_id}/runs" in url and "genai" not in url  # the runs table, not GenAI's traces


@pytest.mark.slow
def test_registered_model_page_renders_its_description(mlflow_server, converted_on_server, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, parent = _parent(mlflow_server, converted_on_server)
    name = _tag(parent, "registered_model")
    driver = chromium(tmp_path)
    try:
        driver.get(f"{mlflow_server}/#/models/{name}")
        heading = WebDriverWait(driver, 90).until(
            lambda d: d.find_elements(By.XPATH, "//h3[contains(., 'How to call it')]"), "no rendered description")
        text = driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
    assert heading and "###" not in text and "**" not in text  # markdown rendered, not shown raw


@pytest.mark.slow
def test_ui_shows_the_verdict_and_links_the_champion(mlflow_server, converted_on_server, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    exp_id, parent = _parent(mlflow_server, converted_on_server)
    champion_run = _tag(parent, "champion_run")

    driver = chromium(tmp_path)
    try:
        wait = WebDriverWait(driver, 90)

        def shows(text: str):
            return lambda d: text in d.find_element(By.TAG_NAME, "body").text

        driver.get(f"{mlflow_server}/#/experiments/{exp_id}")  # the experiment's description
        wait.until(shows("a PyTorch regressor turned into a classifier"), "no experiment description")
        driver.get(f"{mlflow_server}/#/experiments/{exp_id}/runs")  # the runs table
        wait.until(shows(parent["info"]["run_name"]), "no convert run in the runs table")
        driver.get(f"{mlflow_server}/#/experiments/{exp_id}/runs/{parent['info']['run_id']}")  # its description
        wait.until(shows("Champion: "), "no verdict on the convert run")
        links = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"a[href*='/runs/{champion_run}?']"),
                           "no link to the champion's run")
    finally:
        driver.quit()
    assert links
