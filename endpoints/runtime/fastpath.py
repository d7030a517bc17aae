"""A shortcut for the commonest scoring request, taken only where it provably changes nothing.

MLflow's path for a one-row ``{"dataframe_split": …}`` builds a DataFrame, casts and checks
it against the signature and hands it to scikit-learn, which converts it back to the numpy
array it computes on: ~90 % of the time. The shortcut hands scikit-learn that array
directly, for the models (``for_model``) and requests (``answer``) where the result is the
same; ``tests/unit/runtime/test_replica_parity.py`` checks the answers against MLflow's app.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

# Estimator families that only ever compute on the validated numeric array.
NUMERIC_FAMILIES = (
    "sklearn.linear_model.",
    "sklearn.tree.",
    "sklearn.ensemble.",
    "sklearn.svm.",
    "sklearn.neighbors.",
    "sklearn.naive_bayes.",
    "sklearn.discriminant_analysis.",
)
# Fallback for batches this large: the work itself dwarfs the bookkeeping saved, and
# MLflow's path runs it off the event loop.
MAX_ROWS = 256


class SklearnFastPath:
    def __init__(self, estimator: Any, columns: list[str]) -> None:
        self.estimator = estimator
        self.columns = columns
        # scikit-learn warns that an array has no feature names; the names were checked
        # against the signature already. A process-wide filter, set once: thread-safe.
        warnings.filterwarnings(
            "ignore", message="X does not have valid feature names", category=UserWarning
        )

    @classmethod
    def for_model(cls, model: Any) -> SklearnFastPath | None:
        """The shortcut for this pyfunc model, or None when it does not qualify: a
        scikit-learn flavor model predicting with ``predict``, no params schema, an
        estimator of a family that computes on the converted array alone (not pipelines or
        column transformers, which may select columns by name), and a signature of
        required ``double`` columns that match the estimator's feature names."""
        metadata = model.metadata
        pyfunc = metadata.flavors.get("python_function", {})
        if pyfunc.get("loader_module") != "mlflow.sklearn":
            return None
        if pyfunc.get("predict_fn", "predict") != "predict":
            return None
        if metadata.get_params_schema() is not None:
            return None
        estimator = getattr(getattr(model, "_model_impl", None), "sklearn_model", None)
        if estimator is None or not type(estimator).__module__.startswith(NUMERIC_FAMILIES):
            return None
        columns = _double_columns(metadata.get_input_schema())
        if columns is None:
            return None
        names = getattr(estimator, "feature_names_in_", None)
        if names is not None and list(names) != columns:
            return None
        return cls(estimator, columns)

    def answer(self, body: bytes, content_type: str | None) -> bytes | None:
        """The response body MLflow's path would give, or None to take MLflow's path (errors
        included): JSON with exactly one key, ``dataframe_split``, whose ``columns`` are the
        signature's in order, no ``index`` or ``params``, every value a JSON float (so the
        DataFrame MLflow would build is all float64 and its schema cast a no-op)."""
        if content_type != "application/json":
            return None
        rows = self._rows(body)
        if rows is None:
            return None
        # Fortran order: the layout scikit-learn gets when it converts a single-block
        # float64 DataFrame, so the arithmetic (and its rounding) is the same.
        array = np.array(rows, dtype=np.float64, order="F")
        if not np.isfinite(array).all():
            return None  # NaN and infinities: MLflow's schema checks decide
        predictions = self.estimator.predict(array)
        if not isinstance(predictions, np.ndarray):
            return None
        return json.dumps({"predictions": predictions.tolist()}).encode()

    def _rows(self, body: bytes) -> list[list[float]] | None:
        try:
            payload = json.loads(body)
        except ValueError:
            return None
        if not isinstance(payload, dict) or len(payload) != 1:
            return None
        split = payload.get("dataframe_split")
        if not isinstance(split, dict) or split.keys() != {"columns", "data"}:
            return None
        if split["columns"] != self.columns:
            return None
        rows = split["data"]
        width = len(self.columns)
        if not isinstance(rows, list) or not 0 < len(rows) <= MAX_ROWS:
            return None
        for row in rows:
            if type(row) is not list or len(row) != width:
                return None
            if any(type(value) is not float for value in row):
                return None
        return rows


def _double_columns(schema: Any) -> list[str] | None:
    """The input names of an all-required-double column signature, else None."""
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    columns = []
    for spec in schema.inputs:
        if not spec.required or getattr(spec.type, "name", None) != "double":
            return None
        columns.append(spec.name)
    return columns
