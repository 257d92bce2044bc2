"""Data contracts: classes and preprocessing fitted on train only, human-readable classes, input kinds."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import data
from pipeline.config import Data, UserError

from conftest import tiny_config


def test_to_classes_puts_edge_values_in_the_lower_class():
    edges = np.array([1.0, 2.0])
    assert data.to_classes(np.array([0.5, 1.0, 1.5, 2.0, 2.5]), edges).tolist() == [0, 0, 1, 1, 2]
    assert data.class_names(np.array([120.0, 200.0])) == ["<=120.0", "120.0-200.0", ">200.0"]


def test_quantile_edges_come_from_the_training_split_only(tiny_data):
    d = tiny_data
    y_train = d.train.y.double().numpy() * d.y_std + d.y_mean
    np.testing.assert_allclose(d.edges, np.quantile(y_train, [1 / 3, 2 / 3]))
    y_all = data.load_target(tiny_config().data)[1]
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


# ------------------------------------------------------------------------------- the named steps
def test_load_target_drops_missing_targets_and_counts_them(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": [0.5, None, 1.5, None, 2.5, 3.0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    kept, y, n_dropped = data.load_target(Data(source=str(tmp_path / "t.csv"), target="y"))
    assert n_dropped == 2
    assert y.dtype == np.float64 and y.tolist() == [0.5, 1.5, 2.5, 3.0]
    assert kept["a"].tolist() == [1.0, 3.0, 5.0, 6.0] and kept.index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("text, expected", [
    ("quantile:4", data.ClassSpec("quantile", "4", k=4)),
    ("thresholds:1,2.5", data.ClassSpec("thresholds", "1,2.5", cuts=(1.0, 2.5))),
    ("label:band", data.ClassSpec("label", "band")),
])
def test_parse_classes(text, expected):
    assert data.parse_classes(text) == expected


Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
LABELS = np.array(["b", "b", "a", "a", "c", "c", "c", "a"])


@pytest.mark.parametrize("spec, labels, codes, names", [
    ("quantile:2", None, [0, 0, 0, 0, 1, 1, 1, 1], ["<=4.5", ">4.5"]),          # edges on all rows
    ("thresholds:2,6", None, [0, 0, 1, 1, 1, 1, 2, 2], ["<=2.0", "2.0-6.0", ">6.0"]),
    ("label:band", LABELS, [1, 1, 0, 0, 2, 2, 2, 0], ["a", "b", "c"]),           # alphabetical
])
def test_strata_are_provisional_classes_of_every_row(spec, labels, codes, names):
    got_codes, got_names = data.strata(data.parse_classes(spec), Y, labels)
    assert got_codes.tolist() == codes and got_names == names


@pytest.mark.parametrize("spec, labels, edges, names, classes", [
    # quantile: the median of the rows it is fitted on (rows 0..3 -> 2.5), applied to every row
    ("quantile:2", None, [2.5], ["<=2.5", ">2.5"], [0, 0, 1, 1, 1, 1, 1, 1]),
    ("thresholds:2,6", None, [2.0, 6.0], ["<=2.0", "2.0-6.0", ">6.0"], [0, 0, 1, 1, 1, 1, 2, 2]),
    # label: ordered by median target on the fitted rows (a: 3.5, b: 1.5), cut where the two separate best
    ("label:band", np.array(["b", "b", "a", "a", "a", "a", "a", "a"]), [2.0], ["b", "a"], [0, 0, 1, 1, 1, 1, 1, 1]),
])
def test_fit_classes_uses_only_the_given_rows(spec, labels, edges, names, classes):
    rows = np.array([0, 1, 2, 3])
    got_edges, got_names, got_classes = data.fit_classes(data.parse_classes(spec), Y, labels, rows)
    np.testing.assert_allclose(got_edges, edges)
    assert got_names == names and got_classes.tolist() == classes


@pytest.mark.parametrize("features, label_col, columns", [
    ((), None, ["a", "b", "band"]),
    ((), "band", ["a", "b"]),
    (("b", "a"), "band", ["b", "a"]),  # the given order
])
def test_select_features(features, label_col, columns):
    frame = pd.DataFrame({"a": [1.0], "target": [2.0], "b": [3.0], "band": ["x"]})
    assert data.select_features(frame, Data(features=features), label_col).columns.tolist() == columns


def test_split_rows_reproduces_prepares_rows(tiny_data):
    cfg = Data(source="synthetic:friedman1?rows=240&noise=0.5")
    _, y, _ = data.load_target(cfg)
    strata, _ = data.strata(data.parse_classes(cfg.classes), y, None)
    train, val, test = data.split_rows(strata, cfg, seed=0)
    assert np.array_equal(tiny_data.test_rows, test)
    for part, rows in ((tiny_data.train, train), (tiny_data.val, val), (tiny_data.test, test)):
        np.testing.assert_allclose(part.y.double().numpy() * tiny_data.y_std + tiny_data.y_mean, y[rows], rtol=1e-5)
    assert tiny_data.fold is None


# ------------------------------------------------------------------------------------------ folds
FOLDS_CFG = Data(source="synthetic:friedman1?rows=240&noise=0.5")


@pytest.fixture(scope="module")
def folds() -> list[data.Prepared]:
    return data.prepare_folds(FOLDS_CFG, seed=0, k=5)


def test_every_row_is_tested_in_exactly_one_fold(folds):
    rows = np.concatenate([f.test_rows for f in folds])
    assert len(rows) == 240 and sorted(rows.tolist()) == list(range(240))
    assert [f.fold for f in folds] == [0, 1, 2, 3, 4]


def fold_rows(k: int = 5) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    _, y, _ = data.load_target(FOLDS_CFG)
    strata, _ = data.strata(data.parse_classes(FOLDS_CFG.classes), y, None)
    return data.fold_rows(strata, FOLDS_CFG, seed=0, k=k)


@pytest.mark.parametrize("i", range(5))
def test_fold_rows_are_disjoint_and_cover_the_table(folds, i):
    train, val, test = fold_rows()[i]
    assert np.array_equal(folds[i].test_rows, test)
    assert len(set(train) | set(val) | set(test)) == len(train) + len(val) + len(test) == 240
    assert len(test) == 48 and len(val) == 36  # test 1/k of the table, val val_fraction of it


@pytest.mark.parametrize("classes", ["quantile:3", "thresholds:12,18"])
def test_folds_share_one_class_definition_fitted_on_all_rows(classes):
    cfg = Data(source=FOLDS_CFG.source, classes=classes)
    folds = data.prepare_folds(cfg, seed=0, k=3)
    y = data.load_target(cfg)[1]
    expected = np.quantile(y, [1 / 3, 2 / 3]) if classes.startswith("quantile") else [12.0, 18.0]
    for f in folds:
        np.testing.assert_array_equal(f.edges, expected)
        assert f.class_names == folds[0].class_names


def test_fold_split_keys_are_distinct_and_deterministic(folds, tiny_data):
    keys = [f.split_key for f in folds]
    assert len(set(keys + [tiny_data.split_key])) == 6
    assert [f.split_key for f in data.prepare_folds(FOLDS_CFG, seed=0, k=5)] == keys
    assert data.prepare_folds(FOLDS_CFG, seed=0, k=4)[0].split_key != keys[0]


@pytest.mark.parametrize("i", range(5))
def test_fold_preprocessing_is_fitted_on_its_train_rows(folds, i):
    f, (train, _, _) = folds[i], fold_rows()[i]
    assert abs(float(f.train.x[:, 0].mean())) < 1e-5 and abs(float(f.train.y.mean())) < 1e-5
    table, y, _ = data.load_target(FOLDS_CFG)
    x0 = table["x0"].to_numpy()
    assert f.preprocessor.means[0] == pytest.approx(x0[train].mean(), rel=1e-12)
    assert f.y_mean == pytest.approx(y[train].mean(), rel=1e-12)
    assert f.preprocessor.means[0] != pytest.approx(x0.mean(), rel=1e-9)  # not every row


def test_fold_summary_adds_fold_and_folds(folds, tiny_data):
    assert set(folds[2].summary) == set(tiny_data.summary) | {"fold", "folds"}
    assert folds[2].summary["fold"] == 2 and folds[2].summary["folds"] == 5
    assert folds[2].summary["test_rows"] == len(folds[2].test) == len(folds[2].test_rows)


@pytest.mark.parametrize("k, val_fraction, message", [
    (20, 0.15, "has 15 rows, but 20 stratified folds with val_fraction=0.15 need at least 20 per class; use fewer"),
    (1, 0.15, "cross-fitting needs at least 2 folds, got 1"),
    (2, 0.5, "2 folds with val_fraction=0.5 leave no training rows"),
])
def test_folds_refuse_too_little_data(k, val_fraction, message):
    with pytest.raises(UserError, match=message) as err:
        data.prepare_folds(Data(source="synthetic:friedman1?rows=45", val_fraction=val_fraction), seed=0, k=k)
    assert "\n" not in str(err.value)


def test_a_log1p_target_keeps_classes_and_names_in_the_targets_units(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    frame["price"] = np.exp(10 + frame["a"] + 0.3 * rng.normal(size=300))
    frame.to_csv(tmp_path / "prices.csv", index=False)
    cfg = Data(source=str(tmp_path / "prices.csv"), target="price", folds="1", classes="thresholds:20000,40000")
    plain, logged = data.prepare(cfg, 0), data.prepare(dataclasses.replace(cfg, target_transform="log1p"), 0)
    assert logged.class_names == plain.class_names == ["<=20000.0", "20000.0-40000.0", ">40000.0"]
    assert torch.equal(logged.train.c, plain.train.c)
    np.testing.assert_allclose(logged.edges, np.log1p([20000, 40000]))  # where the regressor's output is cut
    np.testing.assert_allclose(logged.original_units(logged.edges), [20000, 40000])
    y = logged.train.y.double().numpy() * logged.y_std + logged.y_mean  # the regressor learns log(1 + price)
    price = frame["price"].to_numpy()
    assert all(np.abs(price - p).min() < 1e-3 * p for p in np.expm1(y))


def test_a_log1p_target_must_stay_above_minus_one(tmp_path):
    frame = pd.DataFrame({"a": np.arange(40.0), "y": np.linspace(-3, 3, 40)})
    frame.to_csv(tmp_path / "neg.csv", index=False)
    with pytest.raises(UserError, match="log1p needs a target above -1"):
        data.prepare(Data(source=str(tmp_path / "neg.csv"), target="y", folds="1", target_transform="log1p"), 0)


def lag_windows(path, n: int = 200, shuffled: bool = False) -> str:
    """One series as overlapping lag windows, the way time-series repositories feed a regressor: row t holds
    y[t-1], ..., y[t-5] and the target y[t]; a `day` column dates each row (rows in file order unless shuffled)."""
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=n + 5))
    frame = pd.DataFrame({f"lag{k}": y[5 - k:n + 5 - k] for k in range(1, 6)})
    frame["target"], frame["day"] = y[5:], np.arange(n)
    if shuffled:
        frame = frame.sample(frac=1.0, random_state=0)
    frame.to_csv(path, index=False)
    return str(path)


def test_lag_windows_under_a_random_split_are_named(tmp_path):
    from pipeline import checks

    [split] = data.prepare_splits(Data(source=lag_windows(tmp_path / "series.csv"), folds="1"), 0)
    assert split.summary["overlapping_windows"] > 0.9
    assert "--split ordered" in checks.overlapping(split)
    [ordered] = data.prepare_splits(Data(source=lag_windows(tmp_path / "series.csv"), folds="1", split="ordered"), 0)
    assert checks.overlapping(ordered) is None


@pytest.mark.parametrize("split", ["ordered", "time:day"])
def test_a_time_ordered_split_tests_on_the_latest_rows(tmp_path, split):
    source = lag_windows(tmp_path / "series.csv", shuffled=split == "time:day")
    [prepared] = data.prepare_splits(Data(source=source, split=split), 0)  # folds auto: one split
    day = pd.read_csv(source)["day"].to_numpy()
    assert day[prepared.test_rows].min() >= 170 and len(prepared.test_rows) == 30  # the latest 15%
    assert "day" not in prepared.preprocessor.columns or split == "ordered"


def test_a_time_ordered_split_refuses_cross_fitting(tmp_path):
    with pytest.raises(UserError, match="pass --folds 1"):
        data.prepare_splits(Data(source=lag_windows(tmp_path / "series.csv"), split="ordered", folds="5"), 0)


def test_label_edges_of_each_fold_come_from_its_own_training_rows(tmp_path):
    rng = np.random.default_rng(0)
    price = rng.normal(size=300)
    # overlapping classes: where they separate best depends on which rows are looked at
    band = np.where(price + rng.normal(scale=0.5, size=300) > 0, "high", "low")
    path = tmp_path / "prices.csv"
    pd.DataFrame({"a": price + rng.normal(scale=0.3, size=300), "price": price, "band": band}).to_csv(path, index=False)
    cfg = Data(source=str(path), target="price", classes="label:band", folds="3")
    folds = data.prepare_folds(cfg, seed=0, k=3)
    frame, y, _ = data.load_target(cfg)
    labels = data.class_labels(data.parse_classes(cfg.classes), frame)
    provisional, _ = data.strata(data.parse_classes(cfg.classes), y, labels)
    for fold, (train, _, test) in zip(folds, data.fold_rows(provisional, cfg, 0, 3)):
        np.testing.assert_array_equal(fold.test_rows, test)
        np.testing.assert_array_equal(fold.edges, data._label_edges(y[train], labels[train], fold.class_names))
    assert {tuple(f.class_names) for f in folds} == {("low", "high")}  # one class order in every fold
    assert len({tuple(f.edges) for f in folds}) == 3


# ---------------------------------------------------------------------------- odd files, read defensively
def _write(tmp_path, kind: str) -> str:
    """A 40-row table (a, b, y) written the odd way `kind` names."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    frame["y"] = frame["a"] + rng.normal(size=40) * 0.1
    path = tmp_path / "t.csv"
    if kind == "repeated":
        path.write_text("a,a,b,y,y\n" + "".join(f"{r.a},{r.a},{r.b},{r.y},{r.y}\n" for r in frame.itertuples()))
    elif kind == "index":
        frame.sort_values("y").to_csv(path)  # pandas' index, in target order: a perfect leak if kept
    elif kind in ("thousands", "decimal_comma", "ambiguous"):
        values = {"thousands": [f"{v:,}" for v in rng.integers(900, 2_000_000, 40)],
                  "decimal_comma": [f"{v:.2f}".replace(".", ",") for v in rng.normal(size=40)],
                  "ambiguous": [f"{v:,}" for v in rng.integers(1000, 9999, 40)]}[kind]
        frame.assign(c=values).to_csv(path, index=False)
    elif kind == "nested":
        path = tmp_path / "t.parquet"
        frame.assign(c=[[1.0, 2.0]] * 40).to_parquet(path)
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("repeated", "repeated column name(s) 'a', 'y'; give every column its own name"),
    ("ambiguous", "could use ',' as a thousands separator or as a decimal point"),
    ("nested", "column 'c' holds lists or structs"),
])
def test_odd_tables_are_refused_in_one_line(tmp_path, kind, message):
    with pytest.raises(UserError) as err:
        data.load_target(Data(source=_write(tmp_path, kind), target="y"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_saved_index_column_is_dropped_and_said(tmp_path, capsys):
    frame, _, _ = data.load_target(Data(source=_write(tmp_path, "index"), target="y"))
    assert list(frame.columns) == ["a", "b", "y"]
    assert "dropped the unnamed column 1 ('Unnamed: 0')" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["thousands", "decimal_comma"])
def test_numbers_with_separators_are_read_as_numbers(tmp_path, kind):
    path = _write(tmp_path, kind)
    frame, _, _ = data.load_target(Data(source=path, target="y"))
    written = pd.read_csv(path)["c"].iloc[0]
    expected = float(written.replace(",", "") if kind == "thousands" else written.replace(",", "."))
    assert frame["c"].dtype == np.float64 and frame["c"].iloc[0] == expected


def test_a_wide_one_hot_column_is_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "code": [f"k{v}" for v in rng.integers(0, 80, 200)]})
    frame["y"] = frame["a"]
    frame.to_csv(tmp_path / "t.csv", index=False)
    data.prepare_splits(Data(source=str(tmp_path / "t.csv"), target="y", folds="1"), seed=0)
    assert "text column 'code' has" in capsys.readouterr().err


def test_robust_scaling_centres_on_the_median_and_divides_by_the_iqr():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 5.0, 1000.0], "flag": [0.0, 0, 0, 0, 0, 1]})
    pre = data.Preprocessor.fit(frame, robust=True)
    iqr = (np.quantile(frame.a, 0.75) - np.quantile(frame.a, 0.25)) / 1.349
    assert pre.means[0] == pytest.approx(3.5) and pre.stds[0] == pytest.approx(iqr)
    assert pre.stds[1] == pytest.approx(frame.flag.std(ddof=0))  # an IQR of 0: the std instead


def test_robust_scaling_clips_outliers_smoothly_below_three():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 5.0, 1000.0]})
    pre = data.Preprocessor.fit(frame, robust=True)
    z = (frame.a.to_numpy() - pre.means[0]) / pre.stds[0]
    x = pre.transform(frame)[:, 0]
    assert x == pytest.approx(z / np.sqrt(1 + (z / 3) ** 2), rel=1e-6)
    assert np.all(np.abs(x) < 3) and np.all(np.diff(x) > 0)  # bounded, order kept
    assert x[3] == pytest.approx(z[3], rel=0.03)  # near-linear inside +-1


def test_data_scaling_robust_reaches_the_preprocessor(tiny_data):
    cfg = tiny_config(**{"data.scaling": "robust"})
    robust = data.prepare(cfg.data, cfg.seed)
    assert robust.preprocessor.clip and not tiny_data.preprocessor.clip
    assert float(robust.train.x[:, 0].abs().max()) < 3
    assert data.Preprocessor(**dataclasses.asdict(robust.preprocessor)).clip  # what a served model rebuilds


@pytest.mark.parametrize("key, value", [("data.scaling", "rank"), ("data.target_scaling", "robust"),
                                        ("train.lr_schedule", "linear"), ("train.label_smoothing", 1.0)])
def test_unknown_scaling_schedule_or_smoothing_is_refused(key, value):
    with pytest.raises(UserError, match=key.split(".")[1]):
        tiny_config(**{key: value})


def test_quantile_scaling_matches_scikit_learns_normal_output_on_a_continuous_column():
    from sklearn.preprocessing import QuantileTransformer

    frame = pd.DataFrame({"a": np.random.default_rng(0).exponential(size=300)})
    expected = QuantileTransformer(n_quantiles=300, output_distribution="normal").fit_transform(frame.to_numpy())
    got = data.Preprocessor.fit(frame, quantile=True).transform(frame)
    assert got[:, 0] == pytest.approx(expected[:, 0], abs=1e-5)


def test_quantile_scaling_maps_a_binary_column_to_the_middle_of_its_ranks():
    frame = pd.DataFrame({"flag": [0.0] * 6 + [1.0] * 4})
    x = data.Preprocessor.fit(frame, quantile=True).transform(frame)[:, 0]
    assert len(set(x.tolist())) == 2 and -2 < x.min() < 0 < x.max() < 2  # not the +-5.2 bounds
    assert np.all(x[:6] == x.min()) and np.all(x[6:] == x.max())
