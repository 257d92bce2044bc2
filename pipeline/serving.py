"""The champion as an MLflow pyfunc model: the raw table in, `label` and `proba_<class>` columns out.

Preprocessing travels inside the model (the training split's medians, means, standard deviations and
categories), so the input is the user's own columns: categorical strings and missing values included;
an unseen category is treated like a missing one. The file is logged as MLflow "model from code": it
is executed when the model loads and never unpickled. The network comes back from its state_dict
(`torch.load(weights_only=True)`) and architecture, as everywhere in reg2cls. A model brought as
`file.py:Class` travels as code beside this file (registry.register_champion) and is imported from there,
so the champion loads from any working directory. Its decision rule (decision.py: temperature and class
offsets fitted on validation) travels with the weights and picks `label`. Non-finite numbers and text in a
numeric column are missing values (`clean`), as in training, where they are imputed with the training medians.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd


def clean(frame: pd.DataFrame, numeric: list[str]) -> tuple[pd.DataFrame, int, int]:
    """`frame` with its `numeric` columns as float64, as training read them: booleans as 0/1 (a column with an
    empty cell arrives as text), thousands separators and decimal commas read (data.without_separators), text
    and non-finite values made missing; returns (frame, how many text values, how many infinities were made
    missing). A column with no number at all among its values is an error: the wrong column, not a few stray
    strings."""
    from pipeline.data import without_separators

    out, n_text, n_inf = frame.copy(), 0, 0
    for col in numeric:
        raw = frame[col]
        if pd.api.types.is_numeric_dtype(raw):  # numbers and booleans, as training read them
            values = raw.astype("float64")
        else:
            raw = raw.map(_boolean_as_number)
            text = without_separators(raw.astype(str).str.strip()).where(raw.notna())
            values = pd.to_numeric(text, errors="coerce").astype("float64")
            n = int((values.isna() & raw.notna()).sum())
            if n and n == int(raw.notna().sum()):
                raise ValueError(f"column '{col}' should hold numbers but holds text only "
                                 f"(e.g. {raw.dropna().iloc[0]!r})")
            n_text += n
        inf = np.isinf(values.to_numpy())
        n_inf += int(inf.sum())
        out[col] = values.mask(inf)
    return out, n_text, n_inf


def _boolean_as_number(value):
    """True/False (also as text, as JSON and CSV readers leave them) as 1/0; anything else as it is."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    return value


def check_range(x: np.ndarray, frame: pd.DataFrame, numeric: list[str]) -> None:
    """Refuse rows whose features left float32's range once scaled as in training (finite numbers such as
    1e308 or 3.5e38): the network would answer NaN for them. One line naming the rows and a column."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    col = numeric[int(np.flatnonzero(bad[rows[0]])[0])]
    shown = ", ".join(str(frame.index[r]) for r in rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
    raise ValueError(f"row(s) {shown} hold values too large for the model once scaled as in training (e.g. column "
                     f"'{col}' = {frame[col].iloc[rows[0]]:g}); rescale or drop those rows")


class Champion(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline.data import Preprocessor
        from pipeline.model import load_state, relocated
        from pipeline.checkpoint import rebuild

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.preprocessor = Preprocessor(**meta["preprocessor"])
        self.class_names = meta["class_names"]
        code = Path(context.artifacts["meta"]).parent.parent / "code"  # the model's code_paths, as MLflow unpacks them
        self.model = load_state(Path(context.artifacts["state"]), lambda arch: rebuild(relocated(arch, code)))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """The labels and probabilities; input it cannot score is one line (an MlflowException, which the
        scoring server answers with HTTP 400 and that line, no stack trace)."""
        from mlflow.exceptions import MlflowException

        from pipeline.config import first_line

        try:
            return self._predict(model_input)
        except ValueError as e:
            raise MlflowException.invalid_parameter_value(first_line(e)) from None
        except Exception as e:  # a bug, still one line over HTTP: the traceback stays in the server's log
            raise MlflowException(f"{type(e).__name__}: {first_line(e)}") from e

    def _predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        import torch

        from pipeline.decision import outputs
        from pipeline.registry import output_frame

        missing = [c for c in self.preprocessor.columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {', '.join(missing)}")
        k = len(self.class_names)
        if len(model_input) == 0:  # an empty table gets an empty answer, in the same columns
            return output_frame(self.class_names, np.zeros((0, k)), np.zeros(0, dtype=np.int64))
        model_input, _, _ = clean(model_input, self.preprocessor.numeric)
        x = self.preprocessor.transform(model_input)
        check_range(x, model_input, self.preprocessor.numeric)
        # the decision rule fitted on validation travels with the weights (rule.json): label by it, not argmax
        proba, pred = outputs(self.model, torch.from_numpy(x), "cpu", k)
        if not np.isfinite(proba).all():
            rows = np.flatnonzero(~np.isfinite(proba).all(axis=1))
            raise ValueError(f"the model's output for row(s) {', '.join(map(str, model_input.index[rows][:5]))} "
                             "is not a number (inputs far outside what it was trained on); check those rows")
        return output_frame(self.class_names, proba, pred)


mlflow.models.set_model(Champion())
