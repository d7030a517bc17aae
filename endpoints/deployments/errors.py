"""The plugin's one exception: an ``MlflowException`` that MLflow's CLI prints cleanly.

``mlflow deployments …`` is a click program, and click shows a ``ClickException`` as one
``Error: <message>`` line (exit code 1) instead of a traceback; Python callers catch it as
the ``MlflowException`` every MLflow client raises, with MLflow's ``error_code``.
"""

from __future__ import annotations

import click
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2


class ServingUIError(MlflowException, click.ClickException):
    def __init__(self, message: str, error_code: str = "INTERNAL_ERROR") -> None:
        try:
            code = databricks_pb2.ErrorCode.Value(error_code)
        except ValueError:
            code = databricks_pb2.INTERNAL_ERROR
        super().__init__(message, error_code=code)
