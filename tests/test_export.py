"""`reg2cls export`: a full servable MLflow model made on request from the state any run keeps."""
from __future__ import annotations

import uuid

import pandas as pd
import pytest
from conftest import invoke, runs_of, tiny_args, use_store

from pipeline import config, data, tracking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(store_uri, tmp_path_factory):
    """One tiny convert (two strategies, no slim, no tuning), shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("export")
    experiment = f"exp-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, store_uri, tmp)
        result = invoke("convert", *tiny_args(experiment, "--strategies", "threshold,warm_start",
                                              "--set", "slim.keep_ratios=none", "--set", "slim.depth=false",
                                              "--set", "tune.n_trials=0", "--set", "compare.reference=false"))
        assert result.exit_code == 0, result.output
        yield {"tmp": tmp, "runs": runs_of(experiment)}


def test_an_exported_run_predicts_the_classes_its_run_logged(converted):
    tmp = converted["tmp"]
    [warm] = [r for r in converted["runs"] if r.data.tags.get("strategy") == "warm_start"]
    out = invoke("export", "--run-id", warm.info.run_id, "--name", "warm")
    assert out.exit_code == 0, out.output
    uri = f"runs:/{warm.info.run_id}/warm"
    assert uri in out.output
    # the raw rows of the run's test split, through the exported model: the classes the run logged for them
    cfg = config.load(None, config.recovered(warm.data.params))
    logged = tracking.read_predictions(warm.info.run_id)
    prepared = data.prepare(cfg.data, cfg.seed)
    raw = data.load_target(cfg.data)[0].iloc[logged["rows"]][prepared.preprocessor.columns]
    raw.to_csv(tmp / "new.csv", index=False)
    result = invoke("predict", "--model-uri", uri, "--input", str(tmp / "new.csv"), "--output", str(tmp / "p.csv"))
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(tmp / "p.csv")["label"].tolist()
    assert labels == [prepared.class_names[k] for k in logged["pred"]]


def test_exporting_a_baseline_run_is_a_one_line_error(converted):
    [base] = [r for r in converted["runs"] if r.data.tags["stage"] == "baseline"]
    result = invoke("export", "--run-id", base.info.run_id)
    assert result.exit_code == 1
    assert "keeps no classifier" in result.output and "Traceback" not in result.output
