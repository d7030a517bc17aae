"""The replica's HTTP server: MLflow's scoring protocol on a bare ASGI app.

MLflow's own scoring server wraps its ``invocations`` function in FastAPI; on one-row
requests that framework costs about as much as parsing and predicting together. This app
answers the same four routes with the same status codes, bodies and content types:

- ``/ping`` and ``/health`` (GET): ``200`` with a newline;
- ``/version`` (GET): MLflow's version;
- ``/invocations`` (POST): MLflow's own ``invocations`` (its parsing of the four JSON
  formats, ``params``, CSV and Parquet, its schema enforcement and its JSON encoding), run
  in a worker thread like MLflow runs it, bounded by the same request timeout — except
  where ``fastpath`` proves a shortcut gives the same answer;
- anything else: the ``404``/``405``/``307`` answers FastAPI gives.

``tests/test_replica_parity.py`` sends generated requests to this app and to MLflow's
FastAPI app and requires identical answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from mlflow.environment_variables import (
    _MLFLOW_IS_IN_SERVING_ENVIRONMENT,
    MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT,
)
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from mlflow.pyfunc import scoring_server as mlflow_server
from mlflow.version import VERSION

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
        self, model: PyFuncModel, *, timeout_seconds: float | None = None, fast_path: bool = True
    ) -> None:
        self.model = model
        self.input_schema = model.metadata.get_input_schema()
        self.fast_path = SklearnFastPath.for_model(model) if fast_path else None
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

    def _fast(self, body: bytes, content_type: str | None) -> bytes | None:
        """The shortcut's answer, computed on the event loop: it is bounded to small
        batches of a fast estimator, where a thread hop would cost more than the work."""
        try:
            return self.fast_path.answer(body, content_type)
        except Exception:  # whatever went wrong, MLflow's path decides the answer
            return None


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
    """Load the model the way MLflow's server does (model config from the environment)."""
    model = mlflow_server.load_model_with_mlflow_config(model_path)
    return ReplicaApp(model, timeout_seconds=timeout_seconds)
