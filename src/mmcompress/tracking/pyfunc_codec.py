"""MLflow pyfunc flavour of a saved codec + cascade index (logged as models-from-code).

``predict`` takes a DataFrame with a ``vector`` column (lists of floats) and returns the codes
as lists of ints; with ``params={"k": K}`` it returns the top-K similar item ids instead.
Everything it loads is data (arrays + JSON); nothing is unpickled.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class CodecPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from mmcompress.codecs import load_codec

        self.codec = load_codec(context.artifacts["codec"])
        self.index = None
        if "index" in context.artifacts:
            from mmcompress.index import CascadeIndex

            self.index = CascadeIndex.load(context.artifacts["index"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        X = np.asarray(model_input["vector"].tolist(), dtype=np.float32)
        k = int((params or {}).get("k", 0))
        if k and self.index is not None:
            scores, ids = self.index.search(X, k)
            return pd.DataFrame({"item_ids": list(ids), "scores": list(scores)})
        codes = self.codec.encode(X)
        return pd.DataFrame({"codes": [row.tolist() for row in codes]})


mlflow.models.set_model(CodecPyfunc())
