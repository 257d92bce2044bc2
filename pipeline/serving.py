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
    """`frame` with its `numeric` columns as float64, text and non-finite values made missing; returns
    (frame, how many text values, how many infinities were made missing). A column with no number at all
    among its values is an error: the wrong column, not a few stray strings."""
    out, n_text, n_inf = frame.copy(), 0, 0
    for col in numeric:
        raw = frame[col]
        if pd.api.types.is_numeric_dtype(raw):  # numbers and booleans, as training read them
            values = raw.astype("float64")
        else:
            values = pd.to_numeric(raw.astype(str).str.strip().where(raw.notna()), errors="coerce").astype("float64")
            text = int((values.isna() & raw.notna()).sum())
            if text and text == int(raw.notna().sum()):
                raise ValueError(f"column '{col}' should hold numbers but holds text only "
                                 f"(e.g. {raw.dropna().iloc[0]!r})")
            n_text += text
        inf = np.isinf(values.to_numpy())
        n_inf += int(inf.sum())
        out[col] = values.mask(inf)
    return out, n_text, n_inf


class Champion(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline.data import Preprocessor
        from pipeline.model import load_state, relocated
        from pipeline.tracking import rebuild

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.preprocessor = Preprocessor(**meta["preprocessor"])
        self.class_names = meta["class_names"]
        code = Path(context.artifacts["meta"]).parent.parent / "code"  # the model's code_paths, as MLflow unpacks them
        self.model = load_state(Path(context.artifacts["state"]), lambda arch: rebuild(relocated(arch, code)))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        from pipeline.decision import outputs
        from pipeline.registry import output_frame

        missing = [c for c in self.preprocessor.columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {', '.join(missing)}")
        model_input, _, _ = clean(model_input, self.preprocessor.numeric)
        x = torch.from_numpy(self.preprocessor.transform(model_input))
        # the decision rule fitted on validation travels with the weights (rule.json): label by it, not argmax
        proba, pred = outputs(self.model, x, "cpu", len(self.class_names))
        return output_frame(self.class_names, proba, pred)


mlflow.models.set_model(Champion())
