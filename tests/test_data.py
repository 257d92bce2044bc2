"""Data contracts: classes and preprocessing fitted on train only, human-readable classes, input kinds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import data
from pipeline.config import Data, UserError


def test_to_classes_puts_edge_values_in_the_lower_class():
    edges = np.array([1.0, 2.0])
    assert data.to_classes(np.array([0.5, 1.0, 1.5, 2.0, 2.5]), edges).tolist() == [0, 0, 1, 1, 2]
    assert data.class_names(np.array([120.0, 200.0])) == ["<=120.0", "120.0-200.0", ">200.0"]


def test_quantile_edges_come_from_the_training_split_only(tiny_data):
    d = tiny_data
    y_train = d.train.y.double().numpy() * d.y_std + d.y_mean
    np.testing.assert_allclose(d.edges, np.quantile(y_train, [1 / 3, 2 / 3]))
    y_all = d.frame["target"].to_numpy()
    assert not np.allclose(d.edges, np.quantile(y_all, [1 / 3, 2 / 3]))  # would match if it peeked
    # standardisation also uses the training rows only
    assert abs(float(d.train.y.mean())) < 1e-5 and abs(float(d.train.y.std(unbiased=False)) - 1) < 1e-4
    assert abs(float(d.train.x[:, 0].mean())) < 1e-5


def test_split_is_stratified_seeded_and_disjoint(tiny_data):
    d = tiny_data
    assert len(d.train) + len(d.val) + len(d.test) == 240
    assert d.summary["val_rows"] == len(d.val) and d.summary["test_rows"] == len(d.test)
    for part in (d.val, d.test):
        counts = np.bincount(part.c.numpy(), minlength=3)
        assert counts.min() >= len(part) // 3 - 2
    again = data.prepare(Data(source="synthetic:friedman1?rows=240&noise=0.5"), seed=0)
    assert np.array_equal(again.test.x.numpy(), d.test.x.numpy())


def test_thresholds_one_cut_is_binary():
    d = data.prepare(Data(source="synthetic:friedman1?rows=200", classes="thresholds:14"), seed=0)
    assert d.class_names == ["<=14.0", ">14.0"] and d.n_classes == 2


def test_categorical_missing_values_and_label_column(tmp_path):
    rng = np.random.default_rng(0)
    n = 150
    frame = pd.DataFrame({"a": rng.normal(size=n), "color": rng.choice(["red", "green", "blue"], n)})
    frame["price"] = 3 * frame["a"] + (frame["color"] == "red") + rng.normal(scale=0.1, size=n)
    frame["band"] = np.where(frame["price"] > 0.5, "high", "low")
    frame.loc[:9, "a"] = np.nan           # 10 missing feature values: imputed
    frame.loc[10:14, "price"] = np.nan    # 5 missing targets: dropped
    path = tmp_path / "prices.parquet"
    frame.to_parquet(path)
    d = data.prepare(Data(source=str(path), target="price", classes="label:band"), seed=0)
    assert d.summary["rows_dropped_missing_target"] == 5
    assert d.summary["features_imputed"] == 10
    assert d.preprocessor.feature_names == ["a", "color=blue", "color=green", "color=red"]
    assert d.class_names == ["low", "high"]  # ordered by median target
    assert 0.0 < d.edges[0] < 1.5
    x = d.preprocessor.transform(pd.DataFrame({"a": [np.nan], "color": ["purple"]}))
    assert x.shape == (1, 4) and np.all(x[0, 1:] == 0)  # unseen category: all zeros


@pytest.mark.parametrize("spec, target, classes, message", [
    ("missing.csv", "target", "quantile:3", "data file missing.csv not found"),
    ("CSV", "nope", "quantile:3", "target column 'nope' not in the data; columns: a, color, price"),
    ("CSV", "color", "quantile:3", "target column 'color' is not numeric"),
    ("CSV", "const", "quantile:3", "target column 'const' is constant"),
    ("CSV", "price", "quantile:30", "needs at least 7 per class"),
    ("CSV", "price", "thresholds:5,2", "must be strictly increasing"),
    ("CSV", "price", "thresholds:1000", "outside the target's range"),
    ("CSV", "price", "label:band", "label column 'band' (from --classes label:band) not in the data"),
    ("CSV", "price", "bins:3", "not understood"),
    ("BROKEN", "price", "quantile:3", "cannot read"),
    ("CSV", "inf_target", "quantile:3", "target column 'inf_target' has 1 infinite values"),
    ("CSV", "price", "quantile:3|inf_feature", "feature column 'inf_feature' has infinite values"),
    ("CSV", "price", "quantile:3|row_id", "feature column 'row_id' looks like an identifier"),
])
def test_bad_input_is_one_clear_error(tmp_path, spec, target, classes, message):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "color": ["red", "blue"] * 30})
    frame["price"] = frame["a"] * 2
    if target == "const":
        frame["const"] = 1.0
    frame["inf_target"] = frame["price"].where(frame.index != 3, np.inf)
    classes, _, extra = classes.partition("|")
    if extra == "inf_feature":
        frame["inf_feature"] = frame["a"].where(frame.index != 5, -np.inf)
    if extra == "row_id":
        frame["row_id"] = [f"id-{i}" for i in range(len(frame))]
    features = () if not extra else ("a", extra)
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    source = {"CSV": str(csv), "BROKEN": str(broken)}.get(spec, spec)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        data.prepare(Data(source=source, target=target, classes=classes, features=features), seed=0)
    assert "\n" not in str(err.value)


def test_dates_are_refused_and_close_edges_keep_distinct_names(tmp_path):
    frame = pd.DataFrame({"when": pd.date_range("2020-01-01", periods=60), "a": np.arange(60.0)})
    frame["target"] = frame["a"] * 2
    frame.to_parquet(tmp_path / "d.parquet")
    with pytest.raises(UserError, match="feature column 'when' holds dates"):
        data.prepare(Data(source=str(tmp_path / "d.parquet")), seed=0)
    assert len(set(data.class_names(np.array([-1e-5, 1e-5, 2e-5])))) == 4
    assert data.class_names(np.array([100001.1, 100001.3]))[1] == "100001.1-100001.3"
