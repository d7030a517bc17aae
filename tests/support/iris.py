"""The demo iris model's columns and one-row request bodies (``make run`` registers it as
``iris-classifier``; the classifier answers ``[0]`` for ``ROW``)."""

from __future__ import annotations

COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROW = [5.1, 3.5, 1.4, 0.2]
# One row as a pandas "split" frame, the documented request format.
SPLIT = {"dataframe_split": {"columns": COLUMNS, "data": [ROW]}}
