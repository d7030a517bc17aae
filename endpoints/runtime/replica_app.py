"""The replica's HTTP server: MLflow's scoring protocol on a bare ASGI app, without the
FastAPI stack that costs MLflow's server about as much per one-row request as parsing and
predicting together. The same routes, status codes and bodies: ``/invocations`` is MLflow's
own ``invocations`` except where ``fastpath`` proves a shortcut equal; with batching on,
mergeable concurrent requests share one predict call (``batching``). The parity tests
(``tests/unit/runtime/``: ``test_replica_parity.py``, ``test_batching.py``) hold it to
MLflow's answers.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import astuple
from io import StringIO
from typing import Any

import numpy as np
import pandas as pd
from mlflow.environment_variables import (
    _MLFLOW_IS_IN_SERVING_ENVIRONMENT,
    MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT,
)
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from mlflow.pyfunc import scoring_server as mlflow_server
from mlflow.version import VERSION

from .batching import BatchSettings, MicroBatcher, Pending, request_shape
from .fastpath import SklearnFastPath

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
ROUTES = {"/ping": "GET", "/health": "GET", "/version": "GET", "/invocations": "POST"}
TIMEOUT_BODY = b"Request processing time exceeded limit"


class Answer:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _detail(status: int, detail: str, *headers: tuple[bytes, bytes]) -> Answer:
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    return Answer(status, body, JSON, headers)


class ReplicaApp:
    """An ASGI application serving one loaded pyfunc model."""

    def __init__(
        self,
        model: PyFuncModel,
        *,
        timeout_seconds: float | None = None,
        fast_path: bool = True,
        batching: BatchSettings | None = None,
    ) -> None:
        self.model = model
        self.input_schema = model.metadata.get_input_schema()
        self.fast_path = SklearnFastPath.for_model(model) if fast_path else None
        self.batcher = MicroBatcher(batching, self._run_batch) if batching else None
        self.predict_takes_params = "params" in inspect.signature(model.predict).parameters
        self.timeout = (
            timeout_seconds
            if timeout_seconds is not None
            else MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
        )
        # Models may behave differently when served (MLflow's app sets this too).
        os.environ[_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name] = "true"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        answer = await self._answer(scope, receive)
        headers = [(b"content-length", str(len(answer.body)).encode()), *answer.headers]
        if answer.content_type:
            headers.append((b"content-type", answer.content_type))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        path, method = scope["path"], scope["method"]
        allowed = ROUTES.get(path)
        if allowed is None:
            return _not_found(scope)
        if method != allowed:
            return _detail(405, "Method Not Allowed", (b"allow", allowed.encode()))
        if path == "/invocations":
            return await self._invocations(scope, receive)
        if path == "/version":
            return Answer(200, VERSION.encode())
        return Answer(200, b"\n")

    async def _invocations(self, scope: Scope, receive: Receive) -> Answer:
        try:
            return await asyncio.wait_for(self._score(scope, receive), timeout=self.timeout)
        except TimeoutError:
            return Answer(504, TIMEOUT_BODY)

    async def _score(self, scope: Scope, receive: Receive) -> Answer:
        body = await _read_body(receive)
        content_type = _header(scope, b"content-type")
        if self.fast_path is not None:
            fast = self._fast(body, content_type)
            if fast is not None:
                return Answer(200, fast)
        if self.batcher is not None:
            shape = request_shape(body, content_type)
            if shape is not None:
                return await self.batcher.submit(shape, body)
        return await self._alone(body, content_type)

    async def _alone(self, body: bytes, content_type: str | None) -> Answer:
        """MLflow's answer to this request on its own."""
        try:
            result = await asyncio.to_thread(
                mlflow_server.invocations, body, content_type, self.model, self.input_schema
            )
        except MlflowException as exc:
            return Answer(exc.get_http_status_code(), exc.serialize_as_json().encode())
        except Exception:
            # MLflow's app lets these escape to the framework, which answers a bare 500.
            log.exception("Exception in /invocations")
            return Answer(500, b"Internal Server Error", TEXT)
        content_type = TEXT if result.mimetype == "text/plain" else result.mimetype.encode()
        return Answer(result.status, result.response.encode(), content_type)

    async def _run_batch(self, items: list[Pending]) -> list[Answer]:
        if len(items) > 1:
            payloads = [item.shape.payload for item in items]
            merged = await asyncio.to_thread(self._predict_merged, payloads)
            if merged is not None:
                return merged
        # One bad request must not fail the others: each gets MLflow's answer for itself.
        content_type = "application/json"
        return list(await asyncio.gather(*(self._alone(i.body, content_type) for i in items)))

    def _predict_merged(self, payloads: list[dict[str, Any]]) -> list[Answer] | None:
        """One predict call for every request, split back; None where that is not proven
        to give each request its own answer."""
        try:
            return self._merged_answers(payloads)
        except Exception:
            # A bad request (or a model that fails on the merged input): each request is
            # then answered on its own, MLflow's way, error included.
            log.debug("a merged batch failed; answering its requests one by one", exc_info=True)
            return None

    def _merged_answers(self, payloads: list[dict[str, Any]]) -> list[Answer] | None:
        # A copy each: MLflow's parser pops ``params`` off the dictionary it is given.
        metadata, schema = self.model.metadata, self.input_schema
        parsed = [mlflow_server._parse_json_data(dict(p), metadata, schema) for p in payloads]
        if any(p.is_unified_llm_input for p in parsed):
            return None
        inputs = [p.data for p in parsed]
        merged = _concat(inputs)
        if merged is None:
            return None
        parts = _split(self._predict(merged, parsed[0].params), [len(i) for i in inputs])
        if parts is None:
            return None
        return [Answer(200, _encode(part)) for part in parts]

    def _predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        """``model.predict`` called the way MLflow's ``invocations`` calls it."""
        if self.predict_takes_params:
            return self.model.predict(data, params=params)
        mlflow_server._log_warning_if_params_not_in_predict_signature(log, params)
        return self.model.predict(data)

    def _fast(self, body: bytes, content_type: str | None) -> bytes | None:
        """The shortcut's answer, computed on the event loop: it is bounded to small
        batches of a fast estimator, where a thread hop would cost more than the work."""
        try:
            return self.fast_path.answer(body, content_type)
        except Exception:  # whatever went wrong, MLflow's path decides the answer
            return None


def _concat(frames: list[Any]) -> Any:
    """The requests' inputs as one, when they line up exactly: then every row is the
    value it was alone. None otherwise."""
    if all(isinstance(f, pd.DataFrame) for f in frames):
        return _concat_frames(frames)
    if all(isinstance(f, np.ndarray) for f in frames):
        return _concat_arrays(frames)
    return None


def _concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    # Equal dtypes: concatenating would otherwise promote a column (int to float, say).
    first = frames[0]
    for frame in frames[1:]:
        if list(frame.columns) != list(first.columns) or not frame.dtypes.equals(first.dtypes):
            return None
    return pd.concat(frames, ignore_index=True)


def _concat_arrays(arrays: list[np.ndarray]) -> np.ndarray | None:
    first = arrays[0]
    if first.ndim == 0:
        return None
    for array in arrays[1:]:
        if array.dtype != first.dtype or array.shape[1:] != first.shape[1:]:
            return None
    return np.concatenate(arrays)


def _split(predictions: Any, counts: list[int]) -> list[Any] | None:
    """The predictions of each request, when there is one per input row."""
    if not isinstance(predictions, pd.DataFrame | pd.Series | np.ndarray | list):
        return None
    if len(predictions) != sum(counts):
        return None
    parts, start = [], 0
    for count in counts:
        if isinstance(predictions, pd.DataFrame | pd.Series):
            parts.append(predictions.iloc[start : start + count].reset_index(drop=True))
        else:
            parts.append(predictions[start : start + count])
        start += count
    return parts


def _encode(predictions: Any) -> bytes:
    out = StringIO()
    mlflow_server.predictions_to_json(predictions, out)
    return out.getvalue().encode()


def _not_found(scope: Scope) -> Answer:
    path = scope["path"]
    # FastAPI redirects a known route written with a trailing slash to the route, with an
    # absolute URL and no content type.
    if path.endswith("/") and path.rstrip("/") in ROUTES:
        location = f"{scope.get('scheme', 'http')}://{_host(scope)}{path.rstrip('/')}"
        if scope.get("query_string"):
            location += "?" + scope["query_string"].decode("latin-1")
        return Answer(307, b"", b"", ((b"location", location.encode("latin-1")),))
    return _detail(404, "Not Found")


def _host(scope: Scope) -> str:
    host = _header(scope, b"host")
    if host:
        return host
    name, port = scope["server"]
    default = {"http": 80, "https": 443}.get(scope.get("scheme", "http"))
    return name if port == default else f"{name}:{port}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes:
    """The whole request body; pieces are joined once (linear in the body's size)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    pieces = [body]
    while message.get("more_body", False):
        message = await receive()
        pieces.append(message.get("body", b""))
    return b"".join(pieces)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def load_app(model_path: str, *, timeout_seconds: float | None = None) -> ReplicaApp:
    """Load the model the way MLflow's server does (model config from the environment);
    batching as the environment sets it (provisioning passes the stage's settings)."""
    model = mlflow_server.load_model_with_mlflow_config(model_path)
    batching = BatchSettings.from_env(os.environ)
    if batching is not None:
        log.info("batching up to %s rows, waiting up to %s ms", *astuple(batching))
    return ReplicaApp(model, timeout_seconds=timeout_seconds, batching=batching)
