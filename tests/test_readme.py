"""The README's commands: each runs here, or in the test or CI step that `ELSEWHERE` names.

Its `reg2cls` commands run as written, in a fresh folder with MLflow's default store, with small-work options
appended (a repeated option keeps the last, so the README's own options still apply); then its `mlflow ui`
command opens that store.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import free_port, wait_for_http

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()

# commands that run elsewhere: how the command starts -> the file that runs it, and the text that file runs
ELSEWHERE = {
    "python -c \"import torch\"": (".ci/run", "python -c \"import torch\""),
    "pip install torch": (".ci/run", "pip install -q torch"),
    "pip install .": (".ci/run", "pip install -q ."),
    "pip install -e \".[test]\"": (".ci/run", "pip install -q -e \".[test]\""),
    "python -m pytest -q": (".ci/run", "python -m pytest -q"),
    "python experiments/user_regressor.py": ("tests/test_user_model.py", "experiments/user_regressor.py"),
    "reg2cls convert --config experiments/user_model.yaml": ("tests/test_user_model.py", "experiments/user_model.yaml"),
    "mlflow run . -e convert": ("tests/test_convert.py", "\"mlflow\", \"run\", str(REPO), \"-e\", \"convert\""),
}
SMALL = ["--epochs", "2", "--folds", "1", "--strategies", "threshold,finetune", "--jobs", "1", "--quiet",
         "--set", "model.width=16", "--set", "slim.keep_ratios=0.5", "--set", "slim.depth=false",
         "--set", "tune.n_trials=0", "--set", "compare.reference=false"]


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks: comments dropped, `a && b` and `(a || b)` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|\|\|", line):
                part = part.strip().strip("()").replace("2>/dev/null", "").strip()
                if part:
                    commands.append(part)
    return commands


def elsewhere(command: str) -> tuple[str, str] | None:
    return next((where for start, where in ELSEWHERE.items() if command.startswith(start)), None)


def test_every_readme_command_runs_here_or_elsewhere():
    commands = readme_commands()
    assert "reg2cls convert" in commands  # the reader's first command
    for command in commands:
        where = elsewhere(command)
        if where is None:
            assert command.startswith(("reg2cls convert", "mlflow ui")), f"{command!r}: run it here or in ELSEWHERE"
        else:
            path, text = where
            assert text in (REPO / path).read_text(), f"{command!r}: {path} no longer runs {text!r}"


@pytest.mark.slow
def test_readme_commands_run_on_the_default_store(tmp_path):
    """The README's converts (built-in data, and a CSV of its own data example's shape), then its `mlflow ui`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    pd.DataFrame({"sqft": x[:, 0], "rooms": x[:, 1], "age": x[:, 2],
                  "price": 175_000 + 90_000 * x[:, 0] + 30_000 * x[:, 1] + rng.normal(0, 20_000, 300)}
                 ).to_csv(tmp_path / "prices.csv", index=False)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's reg2cls, mlflow
    here = [c for c in readme_commands() if elsewhere(c) is None]
    for command in [c for c in here if c.startswith("reg2cls")]:
        done = subprocess.run([*shlex.split(command), *SMALL], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    assert (tmp_path / "mlflow.db").is_file()  # MLflow's default store, in the working folder
    [ui] = [c for c in here if c.startswith("mlflow ui")]
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        # in its own process group: `mlflow ui` serves from worker processes of its own, ended with it
        server = subprocess.Popen([*shlex.split(ui), "--port", str(port)], cwd=tmp_path, env=env, stdout=out,
                                  stderr=out, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name"
                                    "?experiment_name=reg2cls", timeout=10) as answer:
            assert json.load(answer)["experiment"]["name"] == "reg2cls"
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # it holds nothing to save: the store is the converts'
        server.wait(20)
