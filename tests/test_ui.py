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


@pytest.mark.slow
def test_ui_shows_the_verdict_and_links_the_champion(mlflow_server, converted_on_server, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    experiment = converted_on_server
    exp_id = _api(mlflow_server, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]["experiment_id"]
    req = urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow/runs/search", method="POST",
                                 data=json.dumps({"experiment_ids": [exp_id],
                                                  "filter": "tags.stage = 'convert'"}).encode(),
                                 headers={"Content-Type": "application/json"})
    [parent] = json.loads(urllib.request.urlopen(req, timeout=30).read())["runs"]
    champion_run = next(t["value"] for t in parent["data"]["tags"] if t["key"] == "champion_run")

    driver = chromium(tmp_path)
    try:
        wait = WebDriverWait(driver, 90)

        def shows(text: str):
            return lambda d: text in d.find_element(By.TAG_NAME, "body").text

        driver.get(f"{mlflow_server}/#/experiments/{exp_id}")  # the experiment's description
        wait.until(shows("a PyTorch regressor turned into a classifier"), "no experiment description")
        driver.get(f"{mlflow_server}/#/experiments/{exp_id}/runs")  # the runs table
        wait.until(shows("convert"), "no convert run in the runs table")
        driver.get(f"{mlflow_server}/#/experiments/{exp_id}/runs/{parent['info']['run_id']}")  # its description
        wait.until(shows("Champion: "), "no verdict on the convert run")
        links = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"a[href$='/runs/{champion_run}']"),
                           "no link to the champion's run")
    finally:
        driver.quit()
    assert links
