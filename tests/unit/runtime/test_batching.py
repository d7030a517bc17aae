"""Micro-batching in the replica's app: concurrent requests merged into one predict call,
each caller answered with exactly what it would have got alone.

Requests are made concurrent without sleeping: all are started in one event-loop turn,
so each reaches the batcher before any batch can leave; a batch then leaves when its rows
reach ``max_size`` (or, where a test says so, when the wait runs out). The models record
the rows of every predict call, so a test sees how requests were merged.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from endpoints.models import ComputeConfig, ServiceState, ServingEndpoint
from endpoints.provisioning import replicas
from endpoints.runtime import ReplicaSpec
from endpoints.runtime.batching import (
    ENV_MAX_SIZE,
    ENV_MAX_WAIT_MS,
    BatchSettings,
    request_shape,
)
from endpoints.runtime.replica_app import TIMEOUT_BODY, ReplicaApp
from tests.support.rows import add_replica, add_version

JSON_TYPE = "application/json"
# Rows of every predict call, in order (the models below append to it).
CALLS: list[int] = []
GATE = threading.Event()


class Scorer(mlflow.pyfunc.PythonModel):
    """Row-independent: each output row depends on its input row only."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        CALLS.append(len(model_input))
        factor = (params or {}).get("factor", 1.0)
        return pd.DataFrame(
            {
                "score": model_input["x"] * factor + model_input["n"],
                "label": np.where(model_input["x"] > 0, "pos", "neg"),
            }
        )


class TensorDoubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: np.ndarray, params=None):
        CALLS.append(len(model_input))
        return model_input * 2


class Counter(mlflow.pyfunc.PythonModel):
    """Not row-independent: one answer for the whole input."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        CALLS.append(len(model_input))
        return [len(model_input)]


class Gated(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        GATE.wait(5)
        return [0] * len(model_input)


COLUMNS = Schema([ColSpec("double", "x"), ColSpec("long", "n")])
PARAMS = ParamSchema([ParamSpec("factor", "double", 1.0)])


def _save(root: Path, name: str, model: Any, signature: ModelSignature | None):
    path = root / name
    # Declared requirements: inferring them imports the model in a subprocess (slow).
    mlflow.pyfunc.save_model(
        path=path, python_model=model, signature=signature, pip_requirements=["mlflow", "pandas"]
    )
    return mlflow.pyfunc.load_model(str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, mlflow.pyfunc.PyFuncModel]:
    root = tmp_path_factory.mktemp("batching-models")
    tensor = Schema([TensorSpec(np.dtype(np.float64), (-1, 2))])
    return {
        "scorer": _save(root, "scorer", Scorer(), ModelSignature(COLUMNS, params=PARAMS)),
        "tensor": _save(root, "tensor", TensorDoubler(), ModelSignature(tensor)),
        "unsigned": _save(root, "unsigned", Scorer(), None),
        "counter": _save(root, "counter", Counter(), ModelSignature(COLUMNS)),
        "gated": _save(root, "gated", Gated(), ModelSignature(COLUMNS)),
    }


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()


def batching_app(model, max_size: int, max_wait_ms: int = 100, **kw) -> ReplicaApp:
    return ReplicaApp(model, batching=BatchSettings(max_size, max_wait_ms), **kw)


# --- requests -------------------------------------------------------------------------------


def split(*rows: tuple[float, int], **extra: Any) -> bytes:
    return json.dumps(
        {"dataframe_split": {"columns": ["x", "n"], "data": [list(r) for r in rows]}, **extra}
    ).encode()


def records(*rows: tuple[float, int]) -> bytes:
    return json.dumps({"dataframe_records": [{"x": x, "n": n} for x, n in rows]}).encode()


async def call(app, body: bytes, content_type: str = JSON_TYPE) -> tuple[int, bytes, str]:
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode())],
        "server": ("127.0.0.1", 5000),
    }
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # the client never disconnects early
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    answer: dict[str, Any] = {"body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["type"] = dict(message["headers"]).get(b"content-type", b"").decode()
        else:
            answer["body"] += message["body"]

    await app(scope, receive, send)
    return answer["status"], answer["body"], answer["type"]


def together(app, bodies: list[bytes], content_type: str = JSON_TYPE) -> list[tuple]:
    """Every request started in the same event-loop turn; their answers in order."""

    async def run():
        return await asyncio.gather(*(call(app, b, content_type) for b in bodies))

    return asyncio.run(run())


def one_by_one(app, bodies: list[bytes]) -> list[tuple]:
    return [asyncio.run(call(app, body)) for body in bodies]


def predictions(answer: tuple) -> Any:
    return json.loads(answer[1])["predictions"]


# --- merging -----------------------------------------------------------------------------


def test_concurrent_requests_are_one_predict_call_and_each_gets_its_rows(models):
    bodies = [split((1.0, 1)), split((2.0, 2), (3.0, 3)), split((-4.0, 4), (5.0, 5), (6.0, 6))]
    answers = together(batching_app(models["scorer"], max_size=6), bodies)
    assert CALLS == [6]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [[p["score"] for p in predictions(a)] for a in answers] == [
        [2.0],
        [4.0, 6.0],
        [0.0, 10.0, 12.0],
    ]
    assert predictions(answers[2])[0]["label"] == "neg"


@pytest.mark.parametrize(
    ("model", "bodies"),
    [
        (
            "scorer",
            [
                split((1.5, 1)),
                split((2.25, -3), (0.1, 7), (-9.0, 0)),
                split((3.0, 2), params={"factor": 2.5}),
                split((1.0, 1), (2.0, 2), params={"factor": 2.5}),
                records((0.3, 1), (0.7, 2)),
                records((-1.0, 5)),
            ],
        ),
        (
            "tensor",
            [
                json.dumps({"inputs": [[1.0, 2.0], [3.5, -1.0]]}).encode(),
                json.dumps({"inputs": [[0.1, 0.2]]}).encode(),
                json.dumps({"instances": [[5.0, 6.0]]}).encode(),
                json.dumps({"instances": [[7.0, 8.0], [9.0, 1.0]]}).encode(),
            ],
        ),
    ],
)
def test_batched_answers_are_byte_identical_to_unbatched_ones(models, model, bodies):
    alone = one_by_one(ReplicaApp(models[model]), bodies)
    CALLS.clear()
    batched = together(batching_app(models[model], max_size=64, max_wait_ms=1), bodies)
    assert batched == alone
    # Merged by format (and params), so fewer predict calls than requests.
    assert len(CALLS) < len(bodies)
    assert sum(CALLS) == sum(len(predictions(a)) for a in alone)


def test_a_bad_request_gets_its_own_error_and_the_others_their_answers(models):
    good = [split((1.0, 1)), split((2.0, 2), (3.0, 3))]
    bad = split((1.0, "not a number"))
    bodies = [good[0], bad, good[1]]
    alone = one_by_one(ReplicaApp(models["scorer"]), bodies)
    assert [a[0] for a in alone] == [200, 400, 200]
    batched = together(batching_app(models["scorer"], max_size=4), bodies)
    assert batched == alone


def test_a_model_without_one_output_row_per_input_row_is_answered_per_request(models):
    bodies = [split((1.0, 1)), split((2.0, 2), (3.0, 3))]
    batched = together(batching_app(models["counter"], max_size=3), bodies)
    assert [predictions(a) for a in batched] == [[1], [2]]
    # The merged call's answer had one row for three: each request ran again on its own.
    assert CALLS[0] == 3
    assert sorted(CALLS[1:]) == [1, 2]


def test_requests_that_cannot_merge_are_not_merged(models):
    swapped = json.dumps({"dataframe_split": {"columns": ["n", "x"], "data": [[1, 2.0]]}})
    indexed = json.dumps(
        {"dataframe_split": {"columns": ["x", "n"], "data": [[1.0, 1]], "index": [7]}}
    )
    bodies = [
        split((1.0, 1)),
        swapped.encode(),  # other columns
        indexed.encode(),  # an index
        split((1.0, 1), params={"factor": 3.0}),  # other params
        records((1.0, 1)),  # another format
    ]
    app = batching_app(models["scorer"], max_size=64, max_wait_ms=1)
    assert together(app, bodies) == one_by_one(ReplicaApp(models["scorer"]), bodies)
    # Each request predicted alone: batched, then for the comparison.
    assert len(CALLS) == 2 * len(bodies)


def test_frames_of_different_dtypes_are_predicted_apart(models):
    # Without a signature nothing casts the frames: concatenating an integer column with
    # a float one would turn the integers into floats, and the answer would change.
    bodies = [split((1, 1)), split((2.5, 2)), split((3, 3))]
    alone = one_by_one(ReplicaApp(models["unsigned"]), bodies)
    CALLS.clear()
    batched = together(batching_app(models["unsigned"], max_size=3), bodies)
    assert batched == alone
    assert predictions(batched[0]) == [{"score": 2, "label": "pos"}]
    assert CALLS == [1, 1, 1]
    CALLS.clear()
    together(batching_app(models["unsigned"], max_size=2), [bodies[0], bodies[2]])
    assert CALLS == [2]  # frames of one dtype do merge


def test_other_content_types_go_mlflows_way(models):
    app = batching_app(models["scorer"], max_size=2)
    csv = together(app, [b"x,n\n1.0,1\n", b"x,n\n2.0,2\n"], content_type="text/csv")
    assert [a[0] for a in csv] == [200, 200]
    assert CALLS == [1, 1]


# --- when a batch leaves -----------------------------------------------------------------------


def test_a_batch_leaves_when_it_reaches_max_size(models):
    bodies = [split((float(i), i)) for i in range(6)]
    answers = together(batching_app(models["scorer"], max_size=4, max_wait_ms=1), bodies)
    assert [predictions(a)[0]["score"] for a in answers] == [float(2 * i) for i in range(6)]
    assert sorted(CALLS) == [2, 4]  # the two batches predict in threads of their own


def test_a_request_that_would_overflow_the_batch_starts_the_next_one(models):
    bodies = [split((1.0, 1), (2.0, 2), (3.0, 3)), split((4.0, 4), (5.0, 5))]
    together(batching_app(models["scorer"], max_size=4, max_wait_ms=1), bodies)
    assert sorted(CALLS) == [2, 3]


def test_a_batch_leaves_after_max_wait_without_reaching_max_size(models):
    bodies = [split((1.0, 1)), split((2.0, 2)), split((3.0, 3))]
    answers = together(batching_app(models["scorer"], max_size=256, max_wait_ms=5), bodies)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert CALLS == [3]


def test_a_request_past_the_timeout_gets_the_timeout_answer(models):
    GATE.clear()
    app = batching_app(models["gated"], max_size=2, timeout_seconds=0.2)
    try:
        answers = together(app, [split((1.0, 1)), split((2.0, 2))])
    finally:
        GATE.set()
    assert answers == [(504, TIMEOUT_BODY, JSON_TYPE)] * 2


# --- settings and shapes -----------------------------------------------------------------------


def test_settings_travel_through_the_environment():
    settings = BatchSettings(32, 5)
    assert settings.env() == {ENV_MAX_SIZE: "32", ENV_MAX_WAIT_MS: "5"}
    assert BatchSettings.from_env(settings.env()) == settings
    assert BatchSettings.from_env({}) is None
    for broken in ({ENV_MAX_SIZE: "32"}, {ENV_MAX_SIZE: "0", ENV_MAX_WAIT_MS: "1"}):
        with pytest.raises(ValueError):
            BatchSettings.from_env(broken)


@pytest.mark.parametrize(
    ("body", "content_type", "rows"),
    [
        (split((1.0, 1), (2.0, 2)), JSON_TYPE, 2),
        (records((1.0, 1)), JSON_TYPE, 1),
        (b'{"inputs": [[1, 2], [3, 4], [5, 6]]}', JSON_TYPE, 3),
        (b'{"instances": [[1, 2]], "params": {"a": 1}}', JSON_TYPE, 1),
        (split((1.0, 1)), "application/json; charset=utf-8", None),
        (b'{"inputs": {"t": [1]}}', JSON_TYPE, None),
        (b'{"inputs": []}', JSON_TYPE, None),
        (b'{"inputs": [[1]], "instances": [[1]]}', JSON_TYPE, None),
        (b'{"messages": []}', JSON_TYPE, None),
        (b"[1, 2]", JSON_TYPE, None),
        (b"{not json", JSON_TYPE, None),
        (split(*[(1.0, 1)] * 10_000), JSON_TYPE, None),  # too large to look at
    ],
)
def test_request_shape_says_what_may_merge(body, content_type, rows):
    shape = request_shape(body, content_type)
    assert (shape.rows if shape else None) == rows


class RecordingRuntime:
    def __init__(self) -> None:
        self.specs: list[ReplicaSpec] = []

    def start(self, spec: ReplicaSpec) -> int:
        self.specs.append(spec)
        return 4242

    def placement(self, replica_id: str) -> None:
        return None  # where the spec said


@pytest.mark.django_db
def test_replicas_start_with_the_batching_of_their_config():
    endpoint = ServingEndpoint.objects.create(registered_model_name="batched")
    ComputeConfig.objects.create(endpoint=endpoint, stage="Staging")
    plain = add_version(endpoint, "1", "Staging")
    batched = ComputeConfig.objects.create(
        endpoint=endpoint, stage="Staging", max_batch_size=32, max_wait_ms=2
    )
    runtime = RecordingRuntime()
    replicas.launch(runtime, add_replica(plain, ("127.0.0.1", 20001)))
    # A rollout to the batching config: replicas started for it batch.
    plain.config_update_state, plain.target_config = ServiceState.PENDING, batched
    replicas.launch(runtime, add_replica(plain, ("127.0.0.1", 20002)))
    # A first deployment (no config yet): the stage's newest.
    first = add_version(endpoint, "2", "Staging", state=ServiceState.PENDING)
    first.service_config = None
    replicas.launch(runtime, add_replica(first, ("127.0.0.1", 20003)))
    assert [BatchSettings.from_env(s.extra_env) for s in runtime.specs] == [
        None,
        BatchSettings(32, 2),
        BatchSettings(32, 2),
    ]
