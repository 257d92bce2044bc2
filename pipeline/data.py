"""Data: load a table, validate it, split it (once, or into k cross-fitting folds), fit classes and preprocessing.

`prepare()` splits once (train/val/test) and fits the classes and the preprocessing on the training rows.
`prepare_folds()` makes one split per fold of a stratified k-fold: every row is tested in exactly one fold; the
classes are fitted once on every row (the same in every fold) and the preprocessing on each fold's training rows.
Both return `Prepared`: train/val/test tensors shared by every strategy, the class edges (in target units) and
human-readable class names, the fitted `Preprocessor`, a digest that identifies the data, and a summary of what
was dropped or imputed. Both are the same sequence of steps: `parse_classes`, `load_target`, `class_labels`,
`strata`, `split_rows` or `fold_rows`, `fit_classes`, `select_features`, `build`.
Every user mistake is raised as `UserError` with one line that names the problem and the fix.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
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
    if suffix not in (".parquet", ".pq", ".csv", ".txt", ".tsv"):
        raise UserError(f"data file {path}: unsupported extension '{suffix}'; use .csv or .parquet")
    sep = "\t" if suffix == ".tsv" else ","
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            header = [str(c) for c in frame.columns]
        else:
            header = _csv_header(path, sep)
            frame = pd.read_csv(path, sep=sep)
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") \
            from None
    except Exception as e:  # pandas and pyarrow raise many types for one cause: a file they cannot parse
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read {path}: {first}") from None
    _check_header(path, header)
    if suffix in (".parquet", ".pq"):  # a CSV cell is text: only Parquet has list and struct types
        _check_nested(path, frame)
    return _drop_saved_index(path, frame, header)


def _csv_header(path: Path, sep: str) -> list[str]:
    """The header row as written: pandas renames a repeated name (`a`, `a.1`), which hides the repeat."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f, delimiter=sep), [])


def _check_header(path: Path, header: list[str]) -> None:
    """Refuse repeated column names: pandas would keep both under new names, and a second copy of the target
    would silently become a feature (a perfect, meaningless score)."""
    seen, repeated = set(), []
    for name in header:
        if name.strip() and name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise UserError(f"{path} has repeated column name(s) {', '.join(repr(c) for c in repeated)}; give every "
                        "column its own name (or drop the copies) and run again")


def _check_nested(path: Path, frame: pd.DataFrame) -> None:
    """Refuse list, array and struct values (Parquet's nested types): no feature can be made of them."""
    for col in frame.columns:
        column = frame[col]
        if column.dtype == object and column.map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any():
            raise UserError(f"{path}: column '{col}' holds lists or structs (nested values), which reg2cls cannot use; "
                            "flatten it into plain columns or drop it")


def _drop_saved_index(path: Path, frame: pd.DataFrame, header: list[str]) -> pd.DataFrame:
    """Drop a column without a header name that holds distinct whole numbers: a row index saved with the table
    (pandas' to_csv without index=False, R's row names). Kept, it would be a feature, and it leaks the target
    when the table was sorted by it before saving."""
    for position, name in enumerate(header):
        if name.strip() or position >= frame.shape[1]:
            continue
        col = frame.columns[position]
        values = frame[col]
        if (pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values)
                and values.is_unique and len(values) > 1):
            sys.stderr.write(f"data: {path}: dropped the unnamed column {position + 1} ('{col}'): it holds distinct "
                             "row numbers, a saved index, not a feature (save with index=False)\n")
            return frame.drop(columns=[col])
    return frame


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
    if not 1 <= rows <= 10_000_000 or not 0 <= noise < float("inf") or not 0 <= seed < 2**32:
        raise UserError(f"synthetic:{name}: rows must lie in [1, 10000000], noise be a finite number >= 0 and seed "
                        f"in [0, 2**32), got rows={rows}, noise={noise:g}, seed={seed}")
    make = getattr(datasets, f"make_{name}")
    x, y = make(n_samples=rows, noise=noise, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["target"] = y
    return frame


def read_numbers(frame: pd.DataFrame, skip: tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """Text columns that are numbers with a few stray strings (`?`, `NA`, `-` for missing) as numbers with
    missing values; returns (frame, {column: strings read as missing}). Without this, one `?` makes a numeric
    column categorical, one-hot encoding every distinct number. A column is read as numbers when most of its
    values parse as numbers and the rest are at most 3 distinct strings; `skip` (a label column) stays as is."""
    out, strays = frame, {}
    for col in frame.columns:
        column = frame[col]
        if col in skip or pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column) \
                or pd.api.types.is_datetime64_any_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype):
            continue
        present = column.dropna()
        try:
            written = without_separators(present.astype(str).str.strip())
        except ValueError as e:
            raise UserError(f"column '{col}': {e}") from None
        parsed = pd.to_numeric(written, errors="coerce")
        bad = present[parsed.isna().to_numpy()]
        if len(present) == 0 or len(bad) * 2 >= len(present) or bad.astype(str).nunique() > 3:
            continue
        if out is frame:
            out = frame.copy()
        out[col] = parsed.reindex(column.index).astype("float64")
        if len(bad):
            strays[str(col)] = len(bad)
    return out, strays


_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(,\d{3})+(\.\d*)?")    # 32,000 and 1,234.5
_DOT_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(\.\d{3})+(,\d*)?")  # 32.000 and 1.234,5
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")                         # 3,14


def without_separators(text: pd.Series) -> pd.Series:
    """Numbers written with thousands separators (`32,000`, `1,234.5`) or decimal commas (`3,14`, `1.234,5`)
    as plain numbers, when the column says unambiguously which it is; other text is returned as it is. A column
    of mostly numbers where every such number could be either (`1,234` alone: 1234 or 1.234) raises ValueError
    with the fix."""
    has_comma = text.str.contains(",", regex=False)
    if not has_comma.any():
        return text
    commas, plain = text[has_comma], text[~has_comma]
    thousands = commas.str.fullmatch(_THOUSANDS)
    decimal = commas.str.fullmatch(_DECIMAL_COMMA) | commas.str.fullmatch(_DOT_THOUSANDS)
    plain_numbers = pd.to_numeric(plain, errors="coerce").notna()
    if not (thousands | decimal).all() or (len(commas) + plain_numbers.sum()) * 2 <= len(text):
        return text  # text that holds commas, not numbers
    dots = commas.str.contains(".", regex=False).any() or plain[plain_numbers].str.contains(".", regex=False).any()
    if thousands.all() and (not decimal.all() or dots):
        return text.str.replace(",", "", regex=False)
    if decimal.all() and not thousands.all() and not plain[plain_numbers].str.contains(".", regex=False).any():
        return text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    raise ValueError(f"numbers such as {commas.iloc[0]!r} could use ',' as a thousands separator or as a decimal "
                     "point; write them without thousands separators and with '.' for decimals (e.g. 1234.5)")


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


@dataclass(frozen=True)
class ClassSpec:
    """A parsed `--classes` value: how target rows become classes. Whatever can be checked without the
    data (the kind, K, the cut points as numbers) is checked when it is parsed."""

    kind: str                     # quantile | thresholds | label
    arg: str                      # the text after the colon, as written: K, the cut points or the label column
    k: int = 0                    # quantile: the number of classes
    cuts: tuple[float, ...] = ()  # thresholds: the cut points, strictly increasing

    @property
    def label_column(self) -> str | None:
        return self.arg if self.kind == "label" else None


def parse_classes(spec: str) -> ClassSpec:
    """`quantile:K`, `thresholds:a,b,...` or `label:COL` -> `ClassSpec`."""
    kind, _, arg = spec.partition(":")
    if kind not in ("quantile", "thresholds", "label") or not arg:
        raise UserError(f"--classes '{spec}' not understood; use quantile:K, thresholds:a,b,... or label:COL")
    if kind == "quantile":
        try:
            k = int(arg)
        except ValueError:
            raise UserError(f"quantile:{arg}: K must be an integer >= 2") from None
        if k < 2:
            raise UserError(f"quantile:{k}: K must be at least 2")
        return ClassSpec(kind, arg, k=k)
    if kind == "thresholds":
        try:
            cuts = tuple(float(v) for v in arg.split(","))
        except ValueError:
            raise UserError(f"thresholds '{arg}' must be numbers separated by commas") from None
        if np.any(np.diff(cuts) <= 0):
            raise UserError(f"thresholds {arg} must be strictly increasing")
        return ClassSpec(kind, arg, cuts=cuts)
    return ClassSpec(kind, arg)


def _check_thresholds(cuts: tuple[float, ...], y: np.ndarray) -> None:
    lo, hi = float(y.min()), float(y.max())
    outside = [e for e in cuts if not lo <= e < hi]
    if outside:
        raise UserError(f"threshold(s) {', '.join(map(str, outside))} outside the target's range [{lo:g}, {hi:g}): "
                        "every class must have rows")


def _quantile_edges(y: np.ndarray, k: int) -> np.ndarray:
    edges = np.quantile(y, np.arange(1, k) / k)
    if np.any(np.diff(edges) <= 0):
        raise UserError(f"quantile:{k} gives repeated class edges (the target has many ties); use fewer classes or "
                        "thresholds:a,b")
    return edges


def _label_edges(y: np.ndarray, labels: np.ndarray, order: list) -> np.ndarray:
    """Cut points for the `threshold` strategy when classes come from a label column.

    Classes are ordered by their median target; each edge is the cut between two neighbouring classes
    that misclassifies the fewest of the given rows of those two classes.
    """
    edges = []
    for a, b in zip(order, order[1:]):
        ya, yb = np.sort(y[labels == a]), np.sort(y[labels == b])
        cands = np.unique(np.concatenate([ya, yb]))
        errors = (len(ya) - np.searchsorted(ya, cands, side="right")) + np.searchsorted(yb, cands, side="right")
        edges.append(float(cands[int(np.argmin(errors))]))
    edges = np.maximum.accumulate(np.array(edges))  # overlapping classes may not order their cuts
    return edges


def fit_classes(spec: ClassSpec, y: np.ndarray, labels: np.ndarray | None,
                rows: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The classes: (edges (K-1,) in target units, class names, class index of every row).

    Fitted on `rows`: the training rows for a single split, every row for cross-fitting folds (where label
    classes' edges are then refitted on each fold's training rows: `_fold_classes`). Quantile edges
    are quantiles of y[rows]; thresholds are as given; label classes are ordered by their median target on
    `rows`, and their edges are the cuts that best separate neighbouring classes on `rows`.
    """
    y_fit = y[rows]
    if spec.kind == "label":
        labels_fit = labels[rows]
        names = sorted(set(labels), key=lambda v: (np.median(y_fit[labels_fit == v]), v))
        rank = {v: i for i, v in enumerate(names)}
        classes = np.array([rank[v] for v in labels], dtype=np.int64)
        return _label_edges(y_fit, labels_fit, names), names, classes
    edges = _quantile_edges(y_fit, spec.k) if spec.kind == "quantile" else np.array(spec.cuts, dtype=np.float64)
    return edges, class_names(edges), to_classes(y, edges)


def to_model_units(y: np.ndarray, cfg: Data) -> np.ndarray:
    """The target (or class edges) as the regressor learns it: `--target-transform log1p` takes log(1 + y), for a
    skewed positive target such as a price; the classes stay cut in the target's own units (log1p is increasing,
    so every row keeps its class)."""
    if cfg.target_transform == "none":
        return y
    if np.min(y) <= -1:
        raise UserError(f"--target-transform log1p needs a target above -1, but '{cfg.target}' reaches {np.min(y):g}; "
                        "drop the transform or shift the target")
    return np.log1p(y)


# ---------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessor:
    """Fitted on the training rows only: numeric columns median-imputed and standardised, string or
    categorical columns one-hot encoded (an unseen or missing category is all zeros).

    `robust` (data.scaling robust, after RealMLP; Holzmüller et al., 2024): a numeric column is centred on its
    median and divided by its IQR / 1.349 (the std of a normal column; the std where the IQR is 0), then
    smoothly clipped, z / sqrt(1 + (z / 3)^2): near-linear inside +-1, never beyond +-3, so outliers keep their
    order but stop dominating. `clip` records that last step, which `transform` applies.

    `quantile` (data.scaling quantile, scikit-learn's QuantileTransformer with a normal output): a numeric column
    goes through its training quantiles (`quantiles`, at most 1,000 per column) to its rank in [0, 1], then to
    the standard normal's quantile of that rank, bounded at +-5.2 (ranks 1e-7 from 0 and 1), as scikit-learn's
    for a continuous column; tied quantiles (a binary column) map to the middle of their ranks, not to +-5.2."""

    numeric: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]
    categories: dict[str, list[str]] = field(default_factory=dict)
    clip: bool = False  # smooth clipping after scaling (robust)
    quantiles: list[list[float]] = field(default_factory=list)  # per numeric column (quantile); [] = none

    @classmethod
    def fit(cls, frame: pd.DataFrame, standardize: bool = True, robust: bool = False,
            quantile: bool = False) -> Preprocessor:
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        cats = [c for c in frame.columns if c not in numeric]
        values = frame[numeric].astype("float64")
        medians = values.median().fillna(0.0)  # an all-missing column becomes a constant 0
        filled = values.fillna(medians)
        if robust:
            iqr = (filled.quantile(0.75) - filled.quantile(0.25)) / 1.349
            stds = iqr.where(iqr > 0, filled.std(ddof=0)).replace(0.0, 1.0).fillna(1.0).tolist()
            means = filled.median().fillna(0.0).tolist()
        elif standardize:
            means, stds = filled.mean().tolist(), filled.std(ddof=0).replace(0.0, 1.0).fillna(1.0).tolist()
        else:  # the model was trained on raw features: impute, but keep the scale
            means, stds = [0.0] * len(numeric), [1.0] * len(numeric)
        quantiles = []
        if quantile:  # the quantiles replace the scaling: the normal scores are already centred and scaled
            ranks = np.linspace(0, 1, min(1000, max(len(filled), 2)))
            quantiles = [np.quantile(filled[c].to_numpy(), ranks).tolist() for c in numeric]
            means, stds = [0.0] * len(numeric), [1.0] * len(numeric)
        categories = {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in cats}
        return cls(numeric, medians.tolist(), means, stds, categories, clip=robust, quantiles=quantiles)

    @property
    def columns(self) -> list[str]:
        """The input columns the preprocessor needs, in order."""
        return self.numeric + list(self.categories)

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{c}={v}" for c, vals in self.categories.items() for v in vals]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, n_features) float32 array; a value too large for float32 once scaled is inf (callers refuse it)."""
        values = frame[self.numeric].astype("float64").to_numpy()
        values = np.where(np.isnan(values), np.asarray(self.medians), values)
        if self.quantiles:
            values = np.stack([normal_scores(values[:, j], q) for j, q in enumerate(self.quantiles)], axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (values - np.asarray(self.means)) / np.asarray(self.stds)
            parts = [(z / np.sqrt(1 + (z / 3) ** 2) if self.clip else z).astype(np.float32)]
        for col, vals in self.categories.items():
            column = frame[col]
            codes = pd.Index(vals).get_indexer(column.astype(str).where(column.notna(), None))  # -1: unseen/missing
            onehot = np.zeros((len(frame), len(vals)), dtype=np.float32)
            rows = np.flatnonzero(codes >= 0)
            onehot[rows, codes[rows]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)


def normal_scores(x: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """`x`'s rank among the training `quantiles` (interpolated, in [0, 1]; averaged over the two directions so
    tied quantiles give the middle of their ranks), as the standard normal's quantile."""
    from scipy.special import ndtri

    q = np.asarray(quantiles)
    ranks = np.linspace(0, 1, len(q))
    r = 0.5 * (np.interp(x, q, ranks) - np.interp(-x, -q[::-1], -ranks[::-1]))
    return ndtri(np.clip(r, 1e-7, 1 - 1e-7))


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
    example: pd.DataFrame      # the table's first rows as loaded (every column): the champion's raw input example and
                               # the types of the data set MLflow records; the table itself is not kept
    missing: tuple[str, ...]   # the table's columns holding a missing value
    digest: str                # the table's content
    split_key: str             # the table, the data config, the seed (and fold): same key, same splits and classes
    summary: dict[str, object]
    fold: int | None = None    # which cross-fitting fold (prepare_folds); None for the single split
    test_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # the table's rows in `test`
    target_transform: str = "none"  # none | log1p: what the regressor's target is (`edges` are in its units)

    def original_units(self, values: np.ndarray) -> np.ndarray:
        """Values in the regressor's target units (`edges`, its outputs) back in the target's own units."""
        return np.expm1(values) if self.target_transform == "log1p" else np.asarray(values)

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
                            f"{len(values)} rows): one-hot encoding it would only memorise rows; "
                            "leave it out with --features")


WIDE_ONE_HOT = 50  # distinct values of one text column above which its one-hot encoding is worth a warning


def _warn_wide_one_hot(features: pd.DataFrame) -> None:
    """Say which text columns one-hot encoding will turn into many features: usually numbers that did not
    parse, or an identifier-like column, and either way a model that is mostly one column."""
    for col in features.columns:
        values = features[col]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
            continue
        n = values.nunique()
        if WIDE_ONE_HOT < n < 0.9 * len(values):  # above: refused as an identifier (_check_features)
            sys.stderr.write(f"warning: text column '{col}' has {n} distinct values, so one-hot encoding adds up "
                             f"to {n} features (e.g. {values.dropna().iloc[0]!r}); if it holds numbers, write them "
                             "plainly, else leave it out with --features\n")


def _check_class_sizes(strata: np.ndarray, names: list[str], cfg: Data) -> None:
    """Every class needs enough rows for the stratified split to put some in val and test."""
    need = max(3, math.ceil(1 / min(cfg.val_fraction, cfg.test_fraction)))
    for idx, n in enumerate(np.bincount(strata, minlength=len(names))):
        if n < need:
            raise UserError(
                f"class '{names[idx]}' has {n} rows, but a stratified split with val_fraction={cfg.val_fraction} "
                f"and test_fraction={cfg.test_fraction} needs at least {need} per class; use fewer classes or more "
                "data")


def _check_fold_sizes(strata: np.ndarray, names: list[str], cfg: Data, k: int) -> None:
    """Every class needs a row in each of the k test folds, and enough left over for each fold's train and val."""
    if k < 2:
        raise UserError(f"cross-fitting needs at least 2 folds, got {k}")
    train_share = 1 - 1 / k - cfg.val_fraction
    if train_share <= 0:
        raise UserError(f"{k} folds with val_fraction={cfg.val_fraction} leave no training rows; use more folds or a "
                        "smaller val_fraction")
    need = max(3, k, math.ceil(1 / cfg.val_fraction), math.ceil(1 / train_share))
    for idx, n in enumerate(np.bincount(strata, minlength=len(names))):
        if n < need:
            raise UserError(
                f"class '{names[idx]}' has {n} rows, but {k} stratified folds with val_fraction={cfg.val_fraction} "
                f"need at least {need} per class; use fewer folds, fewer classes or more data")


# ------------------------------------------------------------------------------------------ steps
def load_target(cfg: Data) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Load the table and check the target column: present, numeric, finite, not constant.

    Returns (frame with the rows of a missing target dropped and the index reset, target as float64,
    number of rows dropped).
    """
    frame = load(cfg.source)
    if len(frame) == 0:
        raise UserError(f"{cfg.source} has no rows")
    if cfg.target not in frame.columns:
        raise UserError(f"target column '{cfg.target}' not in the data; columns: {', '.join(map(str, frame.columns))}; "
                        "pass --target COL")
    label = parse_classes(cfg.classes).label_column
    frame, strays = read_numbers(frame, skip=(label,) if label else ())
    frame.attrs["strays"] = strays  # counted in build's summary; the target's strays are dropped rows below
    raw_target = frame[cfg.target]
    target = pd.to_numeric(raw_target, errors="coerce")
    bad = raw_target[target.isna() & raw_target.notna()]
    if len(bad):
        raise UserError(f"target column '{cfg.target}' is not numeric (e.g. {bad.iloc[0]!r}); pass a continuous target "
                        "with --target")
    keep = target.notna().to_numpy()
    frame = frame.loc[keep].reset_index(drop=True)
    y = target[keep].to_numpy(dtype=np.float64)
    if len(y) == 0:
        raise UserError(f"target column '{cfg.target}' has no values")
    if not np.all(np.isfinite(y)):
        raise UserError(f"target column '{cfg.target}' has {int((~np.isfinite(y)).sum())} infinite values; drop or "
                        "fix those rows")
    if np.all(y == y[0]):
        raise UserError(f"target column '{cfg.target}' is constant ({y[0]:g}); a regression target must vary")
    return frame, y, int((~keep).sum())


def class_labels(spec: ClassSpec, frame: pd.DataFrame) -> np.ndarray | None:
    """The label column as strings, checked (present, no missing values, two classes or more); None unless
    the classes come from a label column."""
    col = spec.label_column
    if col is None:
        return None
    if col not in frame.columns:
        raise UserError(f"label column '{col}' (from --classes label:{col}) not in the data; columns: "
                        f"{', '.join(map(str, frame.columns))}")
    if frame[col].isna().any():
        raise UserError(f"label column '{col}' has {int(frame[col].isna().sum())} missing values; fill or drop them")
    labels = frame[col].astype(str).to_numpy()
    if len(set(labels)) < 2:
        raise UserError(f"label column '{col}' has a single class; a classifier needs at least two")
    return labels


def strata(spec: ClassSpec, y: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Provisional class index of every row, used only to stratify the split, and the provisional class names.

    Quantile: quantile edges of all rows (the real edges are fitted later); thresholds: the thresholds;
    label: the labels in alphabetical order (the real order is fitted later).
    """
    if spec.kind == "label":
        alphabetical = sorted(set(labels))
        return np.searchsorted(alphabetical, labels), alphabetical
    if spec.kind == "thresholds":
        _check_thresholds(spec.cuts, y)
        edges = np.array(spec.cuts, dtype=np.float64)
    else:
        edges = _quantile_edges(y, spec.k)
    return to_classes(y, edges), class_names(edges)


def split_rows(strata: np.ndarray, cfg: Data, seed: int,
               frame: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions of (train, val, test): two seeded splits, both stratified on `strata`; or with `data.split`
    ordered (the file's row order) or time:COL (ordered by COL), the earliest rows train, the next validate and
    the latest test, so no model is chosen or scored on rows older than those it learned from."""
    from sklearn.model_selection import train_test_split

    if cfg.split != "random":
        order = np.arange(len(strata)) if cfg.split == "ordered" else \
            np.argsort(frame[cfg.split[5:]].to_numpy(), kind="stable")
        n_val, n_test = round(cfg.val_fraction * len(order)), round(cfg.test_fraction * len(order))
        n_train = len(order) - n_val - n_test
        return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]

    holdout = cfg.val_fraction + cfg.test_fraction
    train, rest = train_test_split(np.arange(len(strata)), test_size=holdout, stratify=strata, random_state=seed)
    val, test = train_test_split(rest, test_size=cfg.test_fraction / holdout, stratify=strata[rest], random_state=seed)
    return train, val, test


def fold_rows(strata: np.ndarray, cfg: Data, seed: int, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Row positions of (train, val, test) for each of k folds.

    The test rows are the folds of a seeded stratified k-fold split, so every row is tested exactly once. The
    other rows are split once more, stratified, into train and val; val is `cfg.val_fraction` of the whole
    table. `cfg.test_fraction` plays no part: each test fold is 1/k of the table.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(strata)), strata)
    rows = []
    for rest, test in folds:
        train, val = train_test_split(rest, test_size=cfg.val_fraction / (1 - 1 / k), stratify=strata[rest],
                                      random_state=seed)
        rows.append((train, val, test))
    return rows


def select_features(frame: pd.DataFrame, cfg: Data, label_col: str | None) -> pd.DataFrame:
    """The feature columns: `cfg.features` in that order, or every column but the target and the label column."""
    if cfg.features:
        missing = [c for c in cfg.features if c not in frame.columns]
        if missing:
            raise UserError(f"feature column(s) {', '.join(missing)} not in the data; columns: "
                            f"{', '.join(map(str, frame.columns))}")
        features = frame[list(cfg.features)]
    else:  # nor the column a time-ordered split sorts on
        time_col = cfg.split[5:] if cfg.split.startswith("time:") else None
        features = frame.drop(columns=[c for c in (cfg.target, label_col, time_col) if c is not None])
    if features.shape[1] == 0:
        raise UserError(f"no feature columns left besides the target '{cfg.target}'")
    leaks = [c for c in (cfg.target, label_col) if c is not None and c in features.columns]
    if leaks:  # the model would read the answer off its input: a perfect score that means nothing
        raise UserError(f"--features includes {' and '.join(repr(c) for c in leaks)}, which the classes are made from; "
                        "leave the target (and the label column) out of --features")
    return features


def split_key(table: str, cfg: Data, seed: int, fold: int | None = None, folds: int | None = None) -> str:
    """Identifies the splits and classes: the table's digest, the data config, the seed (and the fold and
    number of folds for cross-fitting). Same key, same splits and classes."""
    parts = [table, asdict(cfg), seed] if fold is None else [table, asdict(cfg), seed, {"fold": fold, "folds": folds}]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def build(cfg: Data, frame: pd.DataFrame, features: pd.DataFrame, y: np.ndarray,
          classes: tuple[np.ndarray, list[str], np.ndarray], rows: tuple[np.ndarray, np.ndarray, np.ndarray], *,
          n_dropped: int, table: str, key: str, fold: int | None = None, folds: int | None = None) -> Prepared:
    """A `Prepared` from the classes (from `fit_classes`) and the (train, val, test) row positions.

    Owns everything fitted on the training rows only: the preprocessor (imputation, standardisation, one-hot)
    and the target's mean and std. Checks that every split has every class, and writes the summary.
    """
    edges, names, classes_all = classes  # classes and their names in the target's own units
    train_idx, val_idx, test_idx = rows
    y, edges = to_model_units(y, cfg), to_model_units(np.asarray(edges, dtype=np.float64), cfg)
    _check_features(features, len(train_idx))
    with np.errstate(over="ignore", invalid="ignore"):  # a huge column's std overflows: refused below, quietly
        pre = Preprocessor.fit(features.iloc[train_idx], standardize=cfg.scaling != "none",
                               robust=cfg.scaling == "robust", quantile=cfg.scaling == "quantile")
    y_mean, y_std = _target_scale(cfg, y, y[train_idx])

    def split(idx: np.ndarray) -> Split:
        return Split(
            x=torch.from_numpy(pre.transform(features.iloc[idx])),
            y=torch.from_numpy(((y[idx] - y_mean) / y_std).astype(np.float32)),
            c=torch.from_numpy(classes_all[idx]),
        )

    train, val, test = split(train_idx), split(val_idx), split(test_idx)
    parts = (("train", train), ("val", val), ("test", test))
    _check_splits(parts, pre, names, fold)
    summary = _summary(frame, features, pre, names, parts, n_dropped)
    if fold is not None:
        summary.update({"fold": fold, "folds": folds})
    missing = tuple(str(c) for c in frame.columns[frame.isna().any().to_numpy()])
    return Prepared(train, val, test, np.asarray(edges, dtype=np.float64), names, y_mean, y_std, pre,
                    frame.head(5).copy(), missing, table, key, summary, fold=fold, test_rows=test_idx,
                    target_transform=cfg.target_transform)


def _target_scale(cfg: Data, y: np.ndarray, y_train: np.ndarray) -> tuple[float, float]:
    """The target's mean and std on the training rows (0 and 1 without `target_scaling`), refused when the
    scaled target would overflow float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        if cfg.target_scaling == "standard":
            y_mean, y_std = float(y_train.mean()), float(y_train.std()) or 1.0
        else:  # the model's output is the target in its own units
            y_mean, y_std = 0.0, 1.0
        # training runs in float32, and MSE squares the scaled target: it must stay well inside float32's range
        scaled = np.abs((y - y_mean) / y_std).max() if np.isfinite(y_std) else float("inf")
    if not np.isfinite(scaled) or scaled > 1e15:
        raise UserError(f"target column '{cfg.target}' reaches {np.abs(y).max():.3g}, which overflows float32 once "
                        + ("standardised" if cfg.target_scaling == "standard" else "squared by the loss")
                        + "; rescale it (divide by a power of ten, or take its log) before converting")
    return y_mean, y_std


def _check_splits(parts: tuple[tuple[str, Split], ...], pre: Preprocessor, names: list[str],
                  fold: int | None) -> None:
    """Every split's features finite in float32, and every class in every split."""
    for name, part in parts:  # huge feature values overflow standardisation (std inf) or float32
        bad = ~torch.isfinite(part.x).all(dim=0)
        bad[:len(pre.stds)] |= ~torch.isfinite(torch.tensor(pre.stds, dtype=torch.float64))
        if bad.any():
            col = pre.feature_names[int(bad.nonzero()[0, 0])]
            raise UserError(f"feature '{col}' does not fit float32 after preprocessing (values too large); rescale it "
                            "or leave it out with --features")
    of_fold = "" if fold is None else f" of fold {fold}"
    for name, part in parts:
        missing = sorted(set(range(len(names))) - set(part.c.tolist()))
        if missing:
            raise UserError(f"the {name} split{of_fold} has no rows of class '{names[missing[0]]}'; use fewer classes "
                            "or more data")


def _summary(frame: pd.DataFrame, features: pd.DataFrame, pre: Preprocessor, names: list[str],
             parts: tuple[tuple[str, Split], ...], n_dropped: int) -> dict[str, object]:
    """The data's summary (logged as the runs' `split.*` params): rows, imputed values, and each split's rows by
    class."""
    summary: dict[str, object] = {
        "rows": len(frame), "rows_dropped_missing_target": n_dropped,
        "features_imputed": int(features[pre.numeric].isna().sum().sum()),
        # of those, text in numeric columns (`?` for missing) read as missing values (read_numbers)
        "strings_as_missing": int(sum(n for c, n in frame.attrs.get("strays", {}).items() if c in pre.numeric)),
        "n_features": parts[0][1].x.shape[1], "n_classes": len(names),
    }
    for name, part in parts:
        summary[f"{name}_rows"] = len(part)
        counts = np.bincount(part.c.numpy(), minlength=len(names))
        summary.update({f"{name}_class_{i}": int(n) for i, n in enumerate(counts)})
    return summary


# ---------------------------------------------------------------------------------------- entries
def prepare(cfg: Data, seed: int, loaded: tuple | None = None) -> Prepared:
    """Load (unless `loaded`: load_target's result), validate, split once (seeded, stratified), fit classes and
    preprocessing on the training rows."""
    spec = parse_classes(cfg.classes)
    frame, y, n_dropped = loaded or load_target(cfg)
    labels = class_labels(spec, frame)
    provisional, names = strata(spec, y, labels)
    _check_class_sizes(provisional, names, cfg)
    rows = split_rows(provisional, cfg, seed, frame)
    classes = fit_classes(spec, y, labels, rows[0])  # on train only: val and test must not shape the classes
    features = select_features(frame, cfg, spec.label_column)
    table = digest(frame)
    return build(cfg, frame, features, y, classes, rows, n_dropped=n_dropped, table=table,
                 key=split_key(table, cfg, seed))


def prepare_folds(cfg: Data, seed: int, k: int, loaded: tuple | None = None) -> list[Prepared]:
    """k `Prepared` for cross-fitting: fold i tests on the i-th of k stratified folds, so every row is in exactly
    one fold's test split (`Prepared.test_rows`). Preprocessing is fitted on each fold's training rows.
    `loaded`: load_target's result, when the caller has it."""
    spec = parse_classes(cfg.classes)
    frame, y, n_dropped = loaded or load_target(cfg)
    labels = class_labels(spec, frame)
    provisional, names = strata(spec, y, labels)
    _check_fold_sizes(provisional, names, cfg, k)
    # The classes are the task definition, not a fitted model: pooled out-of-fold predictions are only comparable
    # if class i means the same thing in every fold, so quantile edges are fitted once, on every row (they define
    # the classes), and label classes keep one order (by median target on every row). Label classes' edges are
    # no definition but threshold's cut points, a fitted model: each fold's come from its own training rows.
    # Preprocessing and target scaling stay fitted on each fold's train rows.
    classes = fit_classes(spec, y, labels, np.arange(len(y)))
    features = select_features(frame, cfg, spec.label_column)
    table = digest(frame)
    folds = fold_rows(provisional, cfg, seed, k)
    return [build(cfg, frame, features, y, _fold_classes(spec, y, labels, classes, rows[0]), rows,
                  n_dropped=n_dropped, table=table, key=split_key(table, cfg, seed, fold=i, folds=k), fold=i, folds=k)
            for i, rows in enumerate(folds)]


def _fold_classes(spec: ClassSpec, y: np.ndarray, labels: np.ndarray | None,
                  classes: tuple[np.ndarray, list[str], np.ndarray],
                  train: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One fold's classes: those of every row (`classes`), with label classes' edges (threshold's cut points)
    refitted on the fold's training rows `train`."""
    if spec.kind != "label":
        return classes
    _, names, codes = classes
    return _label_edges(y[train], labels[train], names), names, codes


def n_folds(folds: str, n_rows: int) -> int:
    """`data.folds` as a number: auto cross-fits tables below 10,000 rows over 5 folds and keeps one split above.
    One split tests on 15% of the rows: below 1,500 test rows a macro-F1 interval is about ±0.03 or wider, too
    wide to tell conversions apart (wine, 4,898 rows: champion vs threshold +0.020 [-0.013, +0.058] on one split,
    +0.031 [+0.019, +0.045] pooled over 5 folds); above, it is narrow enough and K fits would cost K times."""
    if folds == "auto":
        return 5 if n_rows < 10_000 else 1
    return int(folds)


def prepare_splits(cfg: Data, seed: int) -> list[Prepared]:
    """One `Prepared` per outer fold (`data.folds`), or the single split; the table is read once."""
    parse_classes(cfg.classes)  # a bad --classes is refused before the data loads
    loaded = load_target(cfg)
    _warn_wide_one_hot(select_features(loaded[0], cfg, parse_classes(cfg.classes).label_column))
    if cfg.split != "random":
        if cfg.split.startswith("time:") and cfg.split[5:] not in loaded[0].columns:
            raise UserError(f"--split {cfg.split}: no column '{cfg.split[5:]}' in the data; columns: "
                            f"{', '.join(map(str, loaded[0].columns))}")
        if cfg.folds not in ("auto", "1"):
            raise UserError(f"--split {cfg.split} tests on the latest rows once; cross-fitting would train on rows "
                            f"later than those it tests; pass --folds 1 (or auto) instead of --folds {cfg.folds}")
        return [prepare(cfg, seed, loaded)]
    k = n_folds(cfg.folds, len(loaded[1]))
    splits = [prepare(cfg, seed, loaded)] if k == 1 else prepare_folds(cfg, seed, k, loaded)
    share = overlapping_windows(select_features(loaded[0], cfg, parse_classes(cfg.classes).label_column))
    if share > 0.5:  # checks.py turns it into a warning on every run that builds on this split
        for s in splits:
            s.summary["overlapping_windows"] = round(share, 3)
    return splits


def overlapping_windows(features: pd.DataFrame) -> float:
    """The share of consecutive rows where at least two of the previous row's values reappear one column over
    (lag windows over one series: row t holds y[t-1], y[t-2], ... and row t+1 y[t], y[t-1], ...). Only columns of
    mostly distinct numbers count: small codes and one-hot columns repeat by chance."""
    numeric = features.select_dtypes("number")
    x = numeric.loc[:, numeric.nunique() > len(numeric) // 2].to_numpy(dtype=np.float64)
    if x.shape[1] < 3 or len(x) < 10:
        return 0.0
    a, b = x[:-1], x[1:]
    later = np.isclose(b[:, 1:], a[:, :-1]).sum(1) >= 2    # lag1, lag2, ...: values move right
    earlier = np.isclose(b[:, :-1], a[:, 1:]).sum(1) >= 2  # ..., lag2, lag1: values move left
    return float((later | earlier).mean())
