"""The front door: one ASGI application on the public port, run under uvicorn.

Scoring URLs are answered here, on the event loop: a connection costs a few kilobytes
instead of a thread, so idle, slow or half-open connections cannot stop anything (see
docs/performance.md). Everything else goes to Django (``serving_ui.asgi``: its WSGI app
in a thread pool, behind ``WholeBody``, which reads a request's body on the loop before a
thread is taken).

Only I/O is async: token, permission and routing look-ups are the shared in-memory
snapshot (``routing``); a look-up that would query the database, ask Redis or request a
wake-up runs in a thread (``asyncio.to_thread``), never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from endpoints.auth import token_from_authorization
from endpoints.errors import BadRequest, NotFound, PayloadTooLarge, ServingError

from .admission import HOLD_POLL_SECONDS, fresh_target, request_wake
from .app import (
    GATEWAY_PREFIXES,
    Answer,
    Gateway,
    MethodNotAllowed,
    answered_by,
    capture_rate,
    error_answer,
    gateway,
    normalise_request,
    parse_path,
    too_large_message,
    translate_answer,
)
from .browser import has_session
from .ops import OPS_PATHS
from .ops import answer as ops_answer
from .routing import Snapshot, Target
from .transport import Header

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How often connections to replicas that left the routing table are closed.
PRUNE_INTERVAL_SECONDS = 1.0


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


class FrontDoor:
    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = origin_path(scope["path"])
            if path.startswith(GATEWAY_PREFIXES):
                gw = gateway()
                extra = gw.transport.headers(gw.transport.is_secure(scope))
                refusal = gw.transport.refusal(scope)
                if refusal is not None:
                    await respond(send, error_answer(refusal), extra)
                    return
                await Scoring(gw, scope, path).run(receive, send, extra)
                return
            if path in OPS_PATHS:
                await respond(
                    send, await ops_answer(gateway(), path, scope["method"], _authorization(scope))
                )
                return
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await self.django_app(scope, receive, send)


class WholeBody:
    """Reads a request's whole body on the event loop before the wrapped app runs.

    The web pages run as a WSGI app in a thread pool (``serving_ui.asgi``), where reading
    the body would block a thread for as long as a client takes to send it: a few slow
    clients would hold every thread. Read here, a slow body costs a coroutine only."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, None, self.limit)
        except ClientGone:
            return
        except PayloadTooLarge as exc:
            await respond(send, error_answer(exc))
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # only a disconnect can follow
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


def origin_path(path: str) -> str:
    """The path of an absolute-form request target (``POST http://host/model/…``)."""
    if path.startswith("/"):
        return path
    _, sep, rest = path.partition("://")
    if not sep:
        return path
    return "/" + rest.partition("/")[2]


class Scoring:
    """One scoring request on the event loop."""

    capture_rate = 0.0  # set by ``_resolve``: the share of requests to capture
    token_pk = 0
    selector = ""

    def __init__(self, gw: Gateway, scope: Scope, path: str) -> None:
        self.gw = gw
        self.scope = scope
        self.path = path
        self.headers = {
            name: value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"authorization", b"content-type", b"content-length")
        }

    async def run(self, receive: Receive, send: Send, extra: Iterable[Header] = ()) -> None:
        try:
            answer = await self._answer(receive)
        except ClientGone:
            return
        await respond(send, answer, extra)

    async def _answer(self, receive: Receive) -> Answer:
        try:
            if self.scope["method"] != "POST":
                raise MethodNotAllowed("Scoring URLs accept POST only.")
            parsed = parse_path(self.path)
            if parsed is None:
                raise NotFound(
                    "Not a scoring URL: use /model-endpoint/<model>/<stage or version>/invocations."
                )
            target = await self._resolve(*parsed)
            body = await read_body(
                receive, self.headers.get(b"content-length"), self.gw.max_payload
            )
            return await self._score(target, body)
        except ServingError as exc:
            return error_answer(exc)

    async def _resolve(self, name: str, selector: str) -> Target:
        snapshot = await current_snapshot(self.gw)
        authorization = self.headers.get(b"authorization")
        resolve = functools.partial(self.gw.resolve_caller, snapshot, authorization, name, selector)
        if authorization is None and has_session(self.scope["headers"]):
            # The web UI's Send Request: its session is in the database.
            target, self.token_pk = await asyncio.to_thread(
                self.gw.resolve_session, snapshot, self.scope, name, selector
            )
        elif snapshot.needs_db(token_from_authorization(authorization), name):
            target, self.token_pk = await asyncio.to_thread(resolve)
        else:
            target, self.token_pk = resolve()
        self.selector = selector
        self.capture_rate = capture_rate(snapshot, name)
        return target

    async def _score(self, target: Target, body: bytes) -> Answer:
        started = self.gw.admit(target, body)
        answer = Answer(500, b"")
        try:
            body, content_type = normalise_request(body, self.headers.get(b"content-type"))
            serving = await await_replica(self.gw, target)
            answer = translate_answer(
                *await self.gw.streams.forward(
                    serving,
                    body,
                    content_type,
                    load=self.gw.load,
                    refresh=functools.partial(refreshed, self.gw),
                )
            )
            answer = answered_by(answer, serving)
        except ServingError as exc:
            answer = error_answer(exc)
        finally:
            self.gw.finish(target, started, answer.status)
        if self.capture_rate:
            self.gw.capture.offer(
                self.capture_rate,
                endpoint=target.model_name,
                selector=self.selector,
                version=target.version,
                status=answer.status,
                latency_ms=(time.perf_counter() - started) * 1000,
                token_id=self.token_pk,
                request=body,
                response=answer.body,
            )
        return answer


async def current_snapshot(gw: Gateway) -> Snapshot:
    """The current snapshot: from memory when nothing changed, else from a thread (a
    Redis round trip, perhaps a rebuild from the database)."""
    return gw.routing.peek() or await asyncio.to_thread(gw.routing.current)


async def refreshed(gw: Gateway, target: Target) -> Target | None:
    return (await current_snapshot(gw)).table.lookup(target)


async def await_replica(gw: Gateway, target: Target) -> Target:
    """``target`` with at least one Running replica: a version scaled to zero is woken
    and the request waits (bounded, without a thread) until routing shows a replica."""
    if target.replicas:
        return target
    await asyncio.to_thread(request_wake, target)
    deadline = time.monotonic() + gw.admission.cold_start_timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(HOLD_POLL_SECONDS)
        fresh = fresh_target(await current_snapshot(gw), target)
        if fresh.replicas:
            return fresh
    raise gw.admission.gave_up(target)


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (also without Content-Length).

    An oversized body is refused as soon as that is known and the rest is never read: the
    413 goes out with ``Connection: close`` and the server closes the connection."""
    if content_length is not None:
        try:
            expected = int(content_length)
        except ValueError:
            raise BadRequest("Invalid Content-Length header.") from None
        if expected > limit:
            raise PayloadTooLarge(too_large_message(limit))
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(too_large_message(limit))
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Send, answer: Answer, extra: Iterable[Header] = ()) -> None:
    headers = [
        (b"content-type", answer.content_type.encode("latin-1")),
        (b"content-length", str(len(answer.body)).encode()),
        *((name.lower().encode(), value.encode("latin-1")) for name, value in answer.headers),
        *extra,
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Start-up and shutdown of one server process: a task that closes connections to
    replicas that left the routing table (pooled streams belong to this loop)."""
    pruner: asyncio.Task | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            pruner = asyncio.create_task(_prune_forever())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if pruner is not None:
                pruner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruner
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _prune_forever() -> None:
    while True:
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
        gw = gateway()
        snapshot = gw.routing.latest
        if snapshot is not None:
            gw.streams.prune(snapshot.table.addresses())
