"""Large inputs go as several scoring requests of at most ``chunk_rows`` rows each.

One request per chunk keeps each body well under the gateway's size limit and each replica
call short; the answers are joined back in order into one ``predictions`` list, so the
caller sees the same answer one request would have given. On a terminal a progress bar
counts the rows scored.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import pandas as pd
from mlflow.utils.proto_json_utils import NumpyEncoder, dump_input_data

from .errors import ServingUIError

# The request body keys of MLflow's scoring protocol whose value is a list of rows.
ROW_KEYS = ("dataframe_records", "instances", "inputs")


@dataclass(frozen=True)
class Chunk:
    body: bytes
    rows: int


def _dumps(body: Any) -> bytes:
    return json.dumps(body, cls=NumpyEncoder).encode()


def _slices(length: int, size: int) -> Iterator[slice]:
    for start in range(0, max(length, 1), size):
        yield slice(start, start + size)


def _frame_chunks(frame: pd.DataFrame, size: int) -> list[Chunk]:
    return [
        Chunk(dump_input_data(part).encode(), len(part))
        for part in (frame.iloc[s] for s in _slices(len(frame), size))
    ]


def _split_chunks(split: dict[str, Any], size: int, params: Any) -> list[Chunk]:
    data = split.get("data") or []
    chunks = []
    for s in _slices(len(data), size):
        part = {**split, "data": data[s]}
        if "index" in split:
            part["index"] = split["index"][s]
        chunks.append(Chunk(_dumps(_with_params({"dataframe_split": part}, params)), len(data[s])))
    return chunks


def _with_params(body: dict[str, Any], params: Any) -> dict[str, Any]:
    return body if params is None else {**body, "params": params}


def _body_chunks(body: dict[str, Any], size: int) -> list[Chunk]:
    """A dict that already is a scoring request body, split along its rows if it has any."""
    params = body.get("params")
    if isinstance(body.get("dataframe_split"), dict):
        return _split_chunks(body["dataframe_split"], size, params)
    for key in ROW_KEYS:
        rows = body.get(key)
        if isinstance(rows, list | np.ndarray):
            return [
                Chunk(_dumps(_with_params({key: rows[s]}, params)), len(rows[s]))
                for s in _slices(len(rows), size)
            ]
    return [Chunk(_dumps(body), 1)]


def request_chunks(inputs: Any, size: int) -> list[Chunk]:
    """The request bodies that together score ``inputs``, each of at most ``size`` rows.

    ``inputs`` is what ``predict`` accepts: a DataFrame, a list or array of rows, a dict of
    named tensors, or a dict that is already a scoring request body."""
    if isinstance(inputs, pd.DataFrame):
        return _frame_chunks(inputs, size)
    if isinstance(inputs, dict):
        if any(key in inputs for key in ("dataframe_split", *ROW_KEYS)):
            return _body_chunks(inputs, size)
        return [Chunk(_dumps({"inputs": inputs}), 1)]
    if isinstance(inputs, list | np.ndarray):
        return _body_chunks({"inputs": inputs}, size)
    if isinstance(inputs, str | bytes):
        return [Chunk(inputs.encode() if isinstance(inputs, str) else inputs, 1)]
    raise ServingUIError(
        f"Cannot score inputs of type {type(inputs).__name__}: give a pandas DataFrame, a "
        "list or array of rows, or a dict (named tensors or a scoring request body).",
        "INVALID_PARAMETER_VALUE",
    )


def merge_answers(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer from the answers to consecutive chunks, their predictions in order."""
    if len(answers) == 1:
        return answers[0]
    parts = [answer.get("predictions") for answer in answers]
    if all(isinstance(p, list) for p in parts):
        return {"predictions": [row for part in parts for row in part]}
    if all(isinstance(p, dict) for p in parts) and all(
        isinstance(v, list) for p in parts for v in p.values()
    ):
        keys = list(parts[0])
        return {"predictions": {k: [row for p in parts for row in p.get(k, [])] for k in keys}}
    raise ServingUIError(
        "The model's answers to the chunks cannot be joined (their predictions are not lists "
        "of rows); score fewer rows at once or raise SERVING_UI_CHUNK_ROWS.",
        "INVALID_PARAMETER_VALUE",
    )


@contextlib.contextmanager
def progress(total_rows: int, chunks: int) -> Iterator[Any]:
    """A progress bar over the rows on a terminal (and only for more than one chunk);
    elsewhere an object whose ``update`` does nothing, so logs and pipes stay clean."""
    if chunks > 1 and sys.stderr.isatty():
        with click.progressbar(length=total_rows, label="Scoring", file=sys.stderr) as bar:
            yield bar
    else:
        yield _NoProgress()


class _NoProgress:
    def update(self, n_steps: int) -> None:
        pass
