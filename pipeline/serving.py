"""The champion as an MLflow pyfunc model: the raw table in, `label` and `proba_<class>` columns out.

Preprocessing travels inside the model (the training split's medians, means, standard deviations and
categories), so the input is the user's own columns: categorical strings and missing values included;
an unseen category is treated like a missing one. The file is logged as MLflow "model from code": it
is executed when the model loads and never unpickled. The network comes back from its state_dict
(`torch.load(weights_only=True)`) and architecture, as everywhere in reg2cls.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd


class Champion(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline.data import Preprocessor
        from pipeline.model import load_state
        from pipeline.tracking import rebuild

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.preprocessor = Preprocessor(**meta["preprocessor"])
        self.class_names = meta["class_names"]
        self.model = load_state(Path(context.artifacts["state"]), rebuild)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        from pipeline.metrics import probabilities
        from pipeline.registry import output_frame

        missing = [c for c in self.preprocessor.columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {', '.join(missing)}")
        x = torch.from_numpy(self.preprocessor.transform(model_input))
        with torch.no_grad():
            proba = probabilities(self.model(x), len(self.class_names))
        return output_frame(self.class_names, proba)


mlflow.models.set_model(Champion())
