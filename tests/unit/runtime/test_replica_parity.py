"""The replica's own server answers exactly what MLflow's scoring server answers.

Every request, generated or written out, goes to MLflow's FastAPI app
(``mlflow.pyfunc.scoring_server.init``) and to ``endpoints.runtime.replica_app.ReplicaApp``
wrapped around the same loaded model, in process; status, body and content type must be
identical. The models cover the signature kinds MLflow treats differently: named columns
of doubles (scikit-learn), mixed doubles/longs/strings, a tensor signature, no signature,
and a custom pyfunc with params.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import scoring_server
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from sklearn.linear_model import LogisticRegression

from endpoints.runtime import fastpath
from endpoints.runtime.replica_app import ReplicaApp

JSON_TYPE = "application/json"
# The scikit-learn shortcut ignores this warning process-wide (it predicts from an array
# whose columns it checked by name); pytest restores the warning filters after every test,
# so the tests repeat the shortcut's filter.
pytestmark = [
    pytest.mark.any_database,
    pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning"),
]


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: np.ndarray, params=None):
        return model_input * 2


class Scaled(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        factor = (params or {}).get("factor", 1.0)
        return {"x": (model_input["x"] * factor).tolist(), "mode": (params or {}).get("mode")}


class Gated(mlflow.pyfunc.PythonModel):
    """Blocks until the test lets it go (or a few seconds pass): a request that outlives
    the one-second timeout."""

    def predict(self, context, model_input: np.ndarray, params=None):
        GATE.wait(3)
        return [0]


GATE = threading.Event()

MIXED = Schema([ColSpec("double", "x"), ColSpec("long", "n"), ColSpec("string", "s")])
TENSOR = Schema([TensorSpec(np.dtype(np.float64), (-1, 3))])
PARAMS = ParamSchema([ParamSpec("factor", "double", 1.0), ParamSpec("mode", "string", "a")])


def _save(root: Path, name: str, **kwargs: Any) -> mlflow.pyfunc.PyFuncModel:
    path = root / name
    # Declared requirements: inferring them imports the model in a subprocess (slow).
    kwargs["pip_requirements"] = ["mlflow", "scikit-learn", "pandas"]
    if "sk_model" in kwargs:
        mlflow.sklearn.save_model(path=path, **kwargs)
    else:
        mlflow.pyfunc.save_model(path=path, **kwargs)
    return mlflow.pyfunc.load_model(str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, mlflow.pyfunc.PyFuncModel]:
    root = tmp_path_factory.mktemp("parity-models")
    iris = pd.DataFrame({"a": [5.1, 4.9, 6.2, 5.9, 6.9, 5.5], "b": [3.5, 3.0, 2.9, 3.0, 3.1, 2.5]})
    classifier = LogisticRegression().fit(iris, [0, 0, 1, 1, 1, 0])
    return {
        "columns": _save(
            root,
            "columns",
            sk_model=classifier,
            signature=infer_signature(iris, classifier.predict(iris)),
        ),
        "mixed": _save(root, "mixed", python_model=Echo(), signature=ModelSignature(inputs=MIXED)),
        "tensor": _save(
            root, "tensor", python_model=Doubler(), signature=ModelSignature(inputs=TENSOR)
        ),
        "none": _save(root, "none", python_model=Echo()),
        "params": _save(
            root,
            "params",
            python_model=Scaled(),
            signature=ModelSignature(inputs=Schema([ColSpec("double", "x")]), params=PARAMS),
        ),
    }


@pytest.fixture(scope="module")
def apps(models) -> dict[str, tuple[Any, ReplicaApp]]:
    return {name: (scoring_server.init(model), ReplicaApp(model)) for name, model in models.items()}


# --- an in-process HTTP client for ASGI apps ---------------------------------------------


async def _call(app, method: str, path: str, body: bytes, headers: list[tuple[str, str]]):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "server": ("127.0.0.1", 5000),
        "client": ("127.0.0.1", 40000),
    }
    received = asyncio.Event()

    async def receive():
        if not received.is_set():
            received.set()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects early

    answer: dict[str, Any] = {"body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    # MLflow's app re-raises what it answered 500 for (its server then drops the
    # connection); the answer already sent is what a client sees.
    with contextlib.suppress(Exception):
        await app(scope, receive, send)
    return answer["status"], answer["body"], answer["headers"].get("content-type")


def both(apps, model: str, body: bytes | str, content_type: str | None = JSON_TYPE, **kw):
    """The answers of MLflow's app and ours to the same request: (theirs, ours)."""
    if isinstance(body, str):
        body = body.encode()
    headers = [("content-type", content_type)] if content_type is not None else []
    method, path = kw.get("method", "POST"), kw.get("path", "/invocations")
    theirs, ours = apps[model]
    return (
        _run(_call(theirs, method, path, body, headers)),
        _run(_call(ours, method, path, body, headers)),
    )


def _run(coroutine):
    """``asyncio.run`` without waiting for worker threads: a request that timed out leaves
    its predict running in one, as it does in a real server."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def assert_same(apps, model: str, body, content_type: str | None = JSON_TYPE, **kw):
    theirs, ours = both(apps, model, body, content_type, **kw)
    assert ours == theirs
    return theirs


# --- generated requests ---------------------------------------------------------------------

NAMES = {"columns": ["a", "b"], "mixed": ["x", "n", "s"], "params": ["x"]}
scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-(2**40), 2**40),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
)


@st.composite
def frames(draw, names: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Columns (the signature's, some missing or extra, any order) and rows of values."""
    extra = draw(st.lists(st.sampled_from(["z", "extra"]), max_size=1, unique=True))
    columns = draw(st.permutations(names + extra))
    columns = columns[: draw(st.integers(max(0, len(columns) - 1), len(columns)))]
    # Mostly well-typed numbers, sometimes anything: both paths must agree on both.
    values = draw(st.sampled_from([st.floats(-10, 10, width=32), scalars]))
    rows = draw(
        st.lists(st.lists(values, min_size=len(columns), max_size=len(columns)), max_size=4)
    )
    return columns, rows


@st.composite
def column_payloads(draw, names: list[str]) -> dict[str, Any]:
    columns, rows = draw(frames(names))
    kind = draw(st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs"]))
    if kind == "dataframe_split":
        payload: dict[str, Any] = {kind: {"columns": columns, "data": rows}}
        if draw(st.booleans()):
            payload[kind]["index"] = list(range(len(rows)))
    elif kind in ("dataframe_records", "instances"):
        payload = {kind: [dict(zip(columns, row, strict=True)) for row in rows]}
    else:
        payload = {kind: {c: [row[i] for row in rows] for i, c in enumerate(columns)}}
    if draw(st.integers(0, 4)) == 0:
        payload["params"] = draw(
            st.dictionaries(st.sampled_from(["factor", "mode", "other"]), scalars, max_size=2)
        )
    return payload


tensors = st.lists(
    st.lists(st.floats(-100, 100, width=32), min_size=3, max_size=3), min_size=0, max_size=4
)
tensor_payloads = st.one_of(
    tensors.map(lambda t: {"inputs": t}),
    tensors.map(lambda t: {"instances": t}),
    st.lists(st.lists(scalars, max_size=4), max_size=3).map(lambda t: {"inputs": t}),
    tensors.map(lambda t: {"inputs": {"t": t}}),
)

GENERATED = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("model", ["columns", "mixed", "params", "none"])
@GENERATED
@given(data=st.data())
def test_column_payloads_get_identical_answers(apps, model, data):
    payload = data.draw(column_payloads(NAMES.get(model, ["x", "y"])))
    assert_same(apps, model, json.dumps(payload))


@pytest.mark.parametrize("model", ["tensor", "none", "columns"])
@GENERATED
@given(payload=tensor_payloads)
def test_tensor_payloads_get_identical_answers(apps, model, payload):
    assert_same(apps, model, json.dumps(payload))


# Generated rows put values pandas cannot cast into a typed column: it says so while parsing
# the CSV, in both servers alike, and the answers must still be the same.
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("model", ["columns", "mixed", "none"])
@GENERATED
@given(data=st.data())
def test_csv_payloads_get_identical_answers(apps, model, data):
    columns, rows = data.draw(frames(NAMES.get(model, ["x", "y"])))
    body = pd.DataFrame(rows, columns=columns).to_csv(index=False)
    assert_same(apps, model, body, "text/csv")


@pytest.mark.parametrize("model", ["columns", "tensor"])
@GENERATED
@given(
    body=st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40),
        st.recursive(
            scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=3), inner)
        ).map(json.dumps),
    )
)
def test_arbitrary_bodies_get_identical_answers(apps, model, body):
    assert_same(apps, model, body)


# --- written-out requests -------------------------------------------------------------------

SPLIT_ROW = {"dataframe_split": {"columns": ["a", "b"], "data": [[5.1, 3.5]]}}


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (SPLIT_ROW, JSON_TYPE, 200),
        (SPLIT_ROW, "application/json; charset=utf-8", 200),
        (SPLIT_ROW, "application/json; charset=latin-1", 415),
        (SPLIT_ROW, "application/json; format=pandas-split", 415),
        (SPLIT_ROW, "text/html", 415),
        (SPLIT_ROW, None, 500),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[None, 3.5]]}}, JSON_TYPE, 400),
        ({"dataframe_records": [{"a": 1, "b": 2}]}, JSON_TYPE, 200),
        ({"dataframe_records": [{"a": "x", "b": 2.0}]}, JSON_TYPE, 400),
        ({"dataframe_split": SPLIT_ROW["dataframe_split"], "inputs": [1]}, JSON_TYPE, 400),
        ({"inputs": [[5.1, 3.5]]}, JSON_TYPE, 400),
        ({"columns": ["a"], "data": [[1]]}, JSON_TYPE, 400),
        ([1, 2], JSON_TYPE, 400),
        ("just a string", JSON_TYPE, 400),
        (json.dumps(SPLIT_ROW), JSON_TYPE, 400),
    ],
)
def test_documented_cases_get_identical_answers(apps, body, content_type, status):
    theirs = assert_same(apps, "columns", json.dumps(body), content_type)
    assert theirs[0] == status


def test_empty_and_large_batches_get_identical_answers(apps):
    rng = np.random.default_rng(7)
    for rows in (0, 1, 2_000):
        data = rng.normal(5, 1, size=(rows, 2)).round(3).tolist()
        payload = {"dataframe_split": {"columns": ["a", "b"], "data": data}}
        status, body, _ = assert_same(apps, "columns", json.dumps(payload))
        if rows:
            assert status == 200
            assert len(json.loads(body)["predictions"]) == rows


def test_params_reach_the_model_identically(apps):
    payload = {"dataframe_split": {"columns": ["x"], "data": [[1.5], [2.0]]}}
    payload["params"] = {"factor": 3.0, "mode": "b"}
    status, body, _ = assert_same(apps, "params", json.dumps(payload))
    assert (status, json.loads(body)) == (200, {"predictions": {"x": [4.5, 6.0], "mode": "b"}})
    payload["params"] = {"factor": "not a number"}
    assert assert_same(apps, "params", json.dumps(payload))[0] == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ping"),
        ("GET", "/health"),
        ("GET", "/version"),
        ("HEAD", "/ping"),
        ("POST", "/ping"),
        ("GET", "/invocations"),
        ("GET", "/nowhere"),
        ("GET", "/ping/"),
        ("POST", "/invocations/"),
    ],
)
def test_other_routes_get_identical_answers(apps, method, path):
    assert_same(apps, "columns", b"", None, method=method, path=path)


def test_a_request_over_the_timeout_gets_the_same_504(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    model = _save(tmp_path, "gated", python_model=Gated())
    apps = {"gated": (scoring_server.init(model), ReplicaApp(model))}
    try:
        theirs, ours = both(apps, "gated", json.dumps({"inputs": [1]}))
    finally:
        GATE.set()
    assert ours == theirs
    assert theirs[0] == 504


# --- the scikit-learn shortcut ------------------------------------------------------------


@pytest.fixture(scope="module")
def estimators(tmp_path_factory) -> dict[str, tuple[Any, ReplicaApp]]:
    """Scikit-learn models of several families, fitted on four named double columns."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = tmp_path_factory.mktemp("parity-sklearn")
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(0, 3, size=(60, 4)), columns=["w", "x", "y", "z"])
    label = (frame["w"] + frame["x"] > 0).astype(int)
    fitted = {
        "logistic": LogisticRegression().fit(frame, label),
        "forest": RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, label),
        "linear": LinearRegression().fit(frame, frame["y"] * 1.5 - frame["z"]),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, label),
    }
    return {
        name: _pair(
            _save(
                root,
                name,
                sk_model=estimator,
                signature=infer_signature(frame, estimator.predict(frame)),
                skops_trusted_types=["sklearn.tree._tree.Tree"] if name == "forest" else None,
            )
        )
        for name, estimator in fitted.items()
    }


def _pair(model) -> tuple[Any, ReplicaApp]:
    return scoring_server.init(model), ReplicaApp(model)


def test_the_shortcut_is_taken_only_by_numeric_estimator_families(estimators):
    taken = {name: ours.fast_path is not None for name, (_, ours) in estimators.items()}
    assert taken == {"logistic": True, "forest": True, "linear": True, "pipeline": False}


@pytest.mark.parametrize("model", ["logistic", "forest", "linear", "pipeline"])
@GENERATED
@given(
    rows=st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_subnormal=False), min_size=4, max_size=4),
        min_size=1,
        max_size=300,
    )
)
def test_shortcut_answers_equal_mlflows(estimators, model, rows):
    payload = json.dumps({"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": rows}})
    status, body, _ = assert_same(estimators, model, payload)
    assert status == 200
    assert len(json.loads(body)["predictions"]) == len(rows)
    shortcut = estimators[model][1].fast_path
    if shortcut is not None:  # small batches: the answer above came from the shortcut
        expected = body if len(rows) <= fastpath.MAX_ROWS else None
        assert shortcut.answer(payload.encode(), JSON_TYPE) == expected


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["x", "w", "y", "z"], "data": [[1.0, 2.0, 3.0, 4.0]]}},
        {"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": [[1, 2.0, 3.0, 4.0]]}},
        {"dataframe_split": {"columns": ["w", "x", "y"], "data": [[1.0, 2.0, 3.0]]}},
        {"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": [[1.0, None, 3.0, 4.0]]}},
        {"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": [[1.0, 2.0, 3.0]]}},
        {"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": []}},
        {"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": [[1.0, 2.0, 3.0, True]]}},
        {
            "dataframe_split": {
                "columns": ["w", "x", "y", "z"],
                "data": [[1.0, 2.0, 3.0, 4.0]],
                "index": [7],
            }
        },
        {
            "dataframe_split": {"columns": ["w", "x", "y", "z"], "data": [[1.0, 2.0, 3.0, 4.0]]},
            "params": {"a": 1},
        },
    ],
)
@pytest.mark.parametrize("model", ["logistic", "forest"])
def test_requests_beside_the_shortcut_get_mlflows_answer(estimators, model, payload):
    assert estimators[model][1].fast_path.answer(json.dumps(payload).encode(), JSON_TYPE) is None
    assert_same(estimators, model, json.dumps(payload))


@pytest.mark.parametrize("model", ["logistic", "forest"])
def test_non_finite_values_get_mlflows_answer(estimators, model):
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = (
            '{"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": [[1.0, %s, 2.0, 3.0]]}}'
        )
        assert_same(estimators, model, body % token)
