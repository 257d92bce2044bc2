"""Data: load a table, validate it, split it once, fit classes and preprocessing on train only.

`prepare()` is the single entry point. It returns `Prepared`: train/val/test tensors shared by every
strategy, the class edges (in target units) and human-readable class names, the fitted
`Preprocessor`, a digest that identifies the data, and a summary of what was dropped or imputed.
Every user mistake is raised as `UserError` with one line that names the problem and the fix.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd
import torch

from .config import Data, UserError

SYNTHETIC = ("friedman1", "friedman2", "friedman3")


# ---------------------------------------------------------------------------------------- loading
def load(source: str) -> pd.DataFrame:
    """`builtin:diabetes`, `synthetic:friedman1?rows=N&noise=X&seed=S`, or a .csv / .parquet path.

    Built-in and synthetic tables name their target column `target`.
    """
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name != "diabetes":
            raise UserError(f"unknown built-in data set '{name}'; available: builtin:diabetes")
        from sklearn.datasets import load_diabetes  # scikit-learn's bundled copy: no download

        return load_diabetes(as_frame=True).frame
    if source.startswith("synthetic:"):
        return _synthetic(source.split(":", 1)[1])
    path = Path(source)
    if not path.is_file():
        raise UserError(f"data file {path} not found (or use builtin:diabetes / synthetic:friedman1?rows=N)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as e:  # pandas and pyarrow raise many types for one cause: a file they cannot parse
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read {path}: {first}") from None
    raise UserError(f"data file {path}: unsupported extension '{suffix}'; use .csv or .parquet")


def _synthetic(spec: str) -> pd.DataFrame:
    from sklearn import datasets

    name, _, query = spec.partition("?")
    if name not in SYNTHETIC:
        raise UserError(f"unknown synthetic generator '{name}'; available: {', '.join(SYNTHETIC)}")
    args = dict(parse_qsl(query))
    unknown = set(args) - {"rows", "noise", "seed"}
    if unknown:
        raise UserError(f"synthetic:{name}: unknown option(s) {', '.join(sorted(unknown))}; use rows, noise, seed")
    try:
        rows, noise, seed = int(args.get("rows", 1000)), float(args.get("noise", 1.0)), int(args.get("seed", 0))
    except ValueError:
        raise UserError(f"synthetic:{name}: rows and seed must be integers, noise a number") from None
    make = getattr(datasets, f"make_{name}")
    x, y = make(n_samples=rows, noise=noise, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["target"] = y
    return frame


def digest(frame: pd.DataFrame) -> str:
    """Content hash of the table (values and column names): identifies the data for stage reuse."""
    h = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------- classes
def to_classes(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Class index of each target value: class 0 is y <= e1, class k is e_k < y <= e_(k+1)."""
    return np.searchsorted(edges, y, side="left").astype(np.int64)


def class_names(edges: np.ndarray) -> list[str]:
    """`<=120.0`, `120.0-200.0`, `>200.0`: the fewest significant digits (5 or more) that keep the
    cut points distinct."""
    for digits in range(5, 18):
        cuts = [repr(float(f"{float(e):.{digits}g}")) for e in edges]
        if len(set(cuts)) == len(cuts):
            break
    return [f"<={cuts[0]}"] + [f"{a}-{b}" for a, b in zip(cuts, cuts[1:])] + [f">{cuts[-1]}"]


def _parse_classes(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in ("quantile", "thresholds", "label") or not arg:
        raise UserError(f"--classes '{spec}' not understood; use quantile:K, thresholds:a,b,... or label:COL")
    return kind, arg


def _thresholds(arg: str, y: np.ndarray) -> np.ndarray:
    try:
        edges = np.array([float(v) for v in arg.split(",")], dtype=np.float64)
    except ValueError:
        raise UserError(f"thresholds '{arg}' must be numbers separated by commas") from None
    if np.any(np.diff(edges) <= 0):
        raise UserError(f"thresholds {arg} must be strictly increasing")
    lo, hi = float(y.min()), float(y.max())
    outside = [e for e in edges if not lo <= e < hi]
    if outside:
        raise UserError(f"threshold(s) {', '.join(map(str, outside))} outside the target's range [{lo:g}, {hi:g}): every class must have rows")
    return edges


def _quantile_edges(y: np.ndarray, k: int) -> np.ndarray:
    edges = np.quantile(y, np.arange(1, k) / k)
    if np.any(np.diff(edges) <= 0):
        raise UserError(f"quantile:{k} gives repeated class edges (the target has many ties); use fewer classes or thresholds:a,b")
    return edges


def _label_edges(y: np.ndarray, labels: np.ndarray, order: list) -> np.ndarray:
    """Cut points for the `threshold` strategy when classes come from a label column.

    Classes are ordered by their median target; each edge is the cut between two neighbouring classes
    that misclassifies the fewest training rows of those two classes.
    """
    edges = []
    for a, b in zip(order, order[1:]):
        ya, yb = np.sort(y[labels == a]), np.sort(y[labels == b])
        cands = np.unique(np.concatenate([ya, yb]))
        errors = (len(ya) - np.searchsorted(ya, cands, side="right")) + np.searchsorted(yb, cands, side="right")
        edges.append(float(cands[int(np.argmin(errors))]))
    edges = np.maximum.accumulate(np.array(edges))  # overlapping classes may not order their cuts
    return edges


# ---------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessor:
    """Fitted on the training rows only: numeric columns median-imputed and standardised, string or
    categorical columns one-hot encoded (an unseen or missing category is all zeros)."""

    numeric: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame, standardize: bool = True) -> Preprocessor:
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        cats = [c for c in frame.columns if c not in numeric]
        values = frame[numeric].astype("float64")
        medians = values.median().fillna(0.0)  # an all-missing column becomes a constant 0
        filled = values.fillna(medians)
        if standardize:
            means, stds = filled.mean().tolist(), filled.std(ddof=0).replace(0.0, 1.0).fillna(1.0).tolist()
        else:  # the model was trained on raw features: impute, but keep the scale
            means, stds = [0.0] * len(numeric), [1.0] * len(numeric)
        categories = {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in cats}
        return cls(numeric, medians.tolist(), means, stds, categories)

    @property
    def columns(self) -> list[str]:
        """The input columns the preprocessor needs, in order."""
        return self.numeric + list(self.categories)

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{c}={v}" for c, vals in self.categories.items() for v in vals]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, n_features) float32 array."""
        values = frame[self.numeric].astype("float64").to_numpy()
        values = np.where(np.isnan(values), np.asarray(self.medians), values)
        parts = [(values - np.asarray(self.means)) / np.asarray(self.stds)]
        for col, vals in self.categories.items():
            column = frame[col]
            codes = pd.Index(vals).get_indexer(column.astype(str).where(column.notna(), None))  # -1: unseen/missing
            onehot = np.zeros((len(frame), len(vals)))
            rows = np.flatnonzero(codes >= 0)
            onehot[rows, codes[rows]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------ split
@dataclass
class Split:
    x: torch.Tensor  # (N, F) float32 features
    y: torch.Tensor  # (N,) float32 target in the model's output units: standardised with the training
                     # mean and std, or raw with target_scaling none
    c: torch.Tensor  # (N,) int64 class index

    def __len__(self) -> int:
        return len(self.c)


@dataclass
class Prepared:
    train: Split
    val: Split
    test: Split
    edges: np.ndarray          # (K-1,) class edges in target units (cut points of `threshold`)
    class_names: list[str]
    y_mean: float
    y_std: float
    preprocessor: Preprocessor
    frame: pd.DataFrame        # the table as loaded, rows with a missing target dropped
    digest: str                # the table's content
    split_key: str             # the table, the data config and the seed: same key, same splits and classes
    summary: dict[str, object]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return self.train.x.shape[1]


def _check_features(features: pd.DataFrame, n_train: int) -> None:
    """Refuse columns that would become garbage features: infinities, dates, identifiers."""
    for col in features.columns:
        values = features[col]
        if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
            raise UserError(f"feature column '{col}' holds dates/times, which reg2cls does not encode; derive numbers "
                            "from it or leave it out with --features")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            if np.isinf(values.astype("float64")).any():
                raise UserError(f"feature column '{col}' has infinite values; drop or fix those rows")
        elif n_train >= 20 and values.nunique() >= 0.9 * len(values):
            raise UserError(f"feature column '{col}' looks like an identifier ({values.nunique()} distinct values in "
                            f"{len(values)} rows): one-hot encoding it would only memorise rows; leave it out with --features")


def _check_class_sizes(counts: pd.Series, names: list[str], cfg: Data) -> None:
    need = max(3, math.ceil(1 / min(cfg.val_fraction, cfg.test_fraction)))
    for idx, n in counts.items():
        if n < need:
            raise UserError(
                f"class '{names[idx]}' has {n} rows, but a stratified split with val_fraction={cfg.val_fraction} "
                f"and test_fraction={cfg.test_fraction} needs at least {need} per class; use fewer classes or more data")


def prepare(cfg: Data, seed: int) -> Prepared:
    """Load, validate, split (seeded, stratified), fit classes and preprocessing on train."""
    from sklearn.model_selection import train_test_split

    kind, arg = _parse_classes(cfg.classes)
    frame = load(cfg.source)
    if cfg.target not in frame.columns:
        raise UserError(f"target column '{cfg.target}' not in the data; columns: {', '.join(map(str, frame.columns))}; pass --target COL")
    raw_target = frame[cfg.target]
    target = pd.to_numeric(raw_target, errors="coerce")
    bad = raw_target[target.isna() & raw_target.notna()]
    if len(bad):
        raise UserError(f"target column '{cfg.target}' is not numeric (e.g. {bad.iloc[0]!r}); pass a continuous target with --target")
    keep = target.notna().to_numpy()
    n_dropped = int((~keep).sum())
    frame = frame.loc[keep].reset_index(drop=True)
    y_all = target[keep].to_numpy(dtype=np.float64)
    if len(y_all) == 0:
        raise UserError(f"target column '{cfg.target}' has no values")
    if not np.all(np.isfinite(y_all)):
        raise UserError(f"target column '{cfg.target}' has {int((~np.isfinite(y_all)).sum())} infinite values; drop or fix those rows")
    if np.all(y_all == y_all[0]):
        raise UserError(f"target column '{cfg.target}' is constant ({y_all[0]:g}); a regression target must vary")

    label_col = None
    if kind == "label":
        label_col = arg
        if label_col not in frame.columns:
            raise UserError(f"label column '{label_col}' (from --classes label:{label_col}) not in the data; columns: {', '.join(map(str, frame.columns))}")
        if frame[label_col].isna().any():
            raise UserError(f"label column '{label_col}' has {int(frame[label_col].isna().sum())} missing values; fill or drop them")
        labels_all = frame[label_col].astype(str).to_numpy()
        alphabetical = sorted(set(labels_all))  # for stratifying only; classes are ordered on train below
        if len(alphabetical) < 2:
            raise UserError(f"label column '{label_col}' has a single class; a classifier needs at least two")
        strata = np.searchsorted(alphabetical, labels_all)
        _check_class_sizes(pd.Series(strata).value_counts().sort_index(), alphabetical, cfg)
    elif kind == "thresholds":
        edges = _thresholds(arg, y_all)
        strata = to_classes(y_all, edges)
        _check_class_sizes(pd.Series(strata).value_counts().reindex(range(len(edges) + 1), fill_value=0), class_names(edges), cfg)
    else:
        try:
            k = int(arg)
        except ValueError:
            raise UserError(f"quantile:{arg}: K must be an integer >= 2") from None
        if k < 2:
            raise UserError(f"quantile:{k}: K must be at least 2")
        provisional = _quantile_edges(y_all, k)  # for stratifying the split only; edges are refit on train
        strata = to_classes(y_all, provisional)
        _check_class_sizes(pd.Series(strata).value_counts().reindex(range(k), fill_value=0), class_names(provisional), cfg)

    idx = np.arange(len(frame))
    holdout = cfg.val_fraction + cfg.test_fraction
    train_idx, rest = train_test_split(idx, test_size=holdout, stratify=strata, random_state=seed)
    val_idx, test_idx = train_test_split(rest, test_size=cfg.test_fraction / holdout, stratify=strata[rest], random_state=seed)

    y_train = y_all[train_idx]
    if kind == "label":  # classes ordered by their median target on the training rows
        labels_train = labels_all[train_idx]
        names = sorted(alphabetical, key=lambda v: (np.median(y_train[labels_train == v]), v))
        rank = {v: i for i, v in enumerate(names)}
        classes_all = np.array([rank[v] for v in labels_all], dtype=np.int64)
        edges = _label_edges(y_train, labels_train, names)
    else:
        if kind == "quantile":
            edges = _quantile_edges(y_train, k)
        names = class_names(edges)
        classes_all = to_classes(y_all, edges)

    if cfg.features:
        missing = [c for c in cfg.features if c not in frame.columns]
        if missing:
            raise UserError(f"feature column(s) {', '.join(missing)} not in the data; columns: {', '.join(map(str, frame.columns))}")
        features = frame[list(cfg.features)]
    else:
        features = frame.drop(columns=[c for c in (cfg.target, label_col) if c is not None])
    if features.shape[1] == 0:
        raise UserError(f"no feature columns left besides the target '{cfg.target}'")
    _check_features(features, len(train_idx))
    pre = Preprocessor.fit(features.iloc[train_idx], standardize=cfg.scaling == "standard")
    if cfg.target_scaling == "standard":
        y_mean, y_std = float(y_train.mean()), float(y_train.std()) or 1.0
    else:  # the model's output is the target in its own units
        y_mean, y_std = 0.0, 1.0

    def split(rows: np.ndarray) -> Split:
        return Split(
            x=torch.from_numpy(pre.transform(features.iloc[rows])),
            y=torch.from_numpy(((y_all[rows] - y_mean) / y_std).astype(np.float32)),
            c=torch.from_numpy(classes_all[rows]),
        )

    train, val, test = split(train_idx), split(val_idx), split(test_idx)
    for part, name in ((train, "train"), (val, "val"), (test, "test")):
        missing = sorted(set(range(len(names))) - set(part.c.tolist()))
        if missing:
            raise UserError(f"the {name} split has no rows of class '{names[missing[0]]}'; use fewer classes or more data")
    n_imputed = int(features[pre.numeric].isna().sum().sum())
    summary: dict[str, object] = {
        "rows": len(frame), "rows_dropped_missing_target": n_dropped, "features_imputed": n_imputed,
        "n_features": train.x.shape[1], "n_classes": len(names),
    }
    for part, name in ((train, "train"), (val, "val"), (test, "test")):
        summary[f"{name}_rows"] = len(part)
        counts = np.bincount(part.c.numpy(), minlength=len(names))
        summary.update({f"{name}_class_{i}": int(n) for i, n in enumerate(counts)})
    table = digest(frame)
    split_key = hashlib.sha256(json.dumps([table, asdict(cfg), seed], sort_keys=True).encode()).hexdigest()[:16]
    return Prepared(train, val, test, np.asarray(edges, dtype=np.float64), names, y_mean, y_std, pre,
                    frame, table, split_key, summary)
