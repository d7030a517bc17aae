"""The front door: one ASGI application on the public port, run under uvicorn. Scoring URLs
are answered on the event loop, so idle, slow or half-open connections hold no thread;
everything else goes to Django's WSGI app in a thread pool once ``whole_body`` has read
the request's body on the loop. Only I/O is async: look-ups come from the in-memory
snapshot, and one that would query the database or Redis runs in a thread
(docs/performance.md, "Choices, and why").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from endpoints.auth import token_from_authorization
from endpoints.errors import NotFound, ServingError

from .admission import HOLD_POLL_SECONDS, fresh_target, request_wake
from .bodies import (
    BodyBudget,
    ClientGone,
    Hold,
    Limit,
    RouteLimits,
    early_refusal,
    read_body,
)
from .browser import has_session
from .capture import close_all as close_captures
from .ops import METRICS_PATH, OPS_PATHS
from .ops import answer as ops_answer
from .routing import Snapshot
from .routing_table import Target
from .scoring import (
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
    translate_answer,
)
from .transport import Header

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How often connections to replicas that left the routing table are closed.
PRUNE_INTERVAL_SECONDS = 1.0
# Django's REST API: bodies up to API_MAX_BODY_BYTES.
API_PREFIX = "/api/"


class FrontDoor:
    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)
        else:
            await self.django_app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = gateway()
        path = origin_path(scope["path"])
        scoring = path.startswith(GATEWAY_PREFIXES)
        limit = body_limit(gw.limits, path)
        extra = gw.transport.headers(gw.transport.is_secure(scope))
        # Judged from the head alone, before a byte of the body is read (or held).
        refusal = early_refusal(scope["headers"], limit, gw.bodies)
        if refusal is None and (scoring or path == METRICS_PATH):
            # Health probes are exempt, as Django exempts paths from its redirect: a
            # probe reaches a process by its address, over plain HTTP.
            refusal = gw.transport.refusal(scope)
        if refusal is not None:
            await respond(send, error_answer(refusal), extra)
        elif scoring:
            await Scoring(gw, scope, path).run(receive, send, extra)
        elif path in OPS_PATHS:
            authorization = _authorization(scope)
            answer = await ops_answer(gw, path, scope["method"], authorization)
            await respond(send, answer, extra)
        else:
            await whole_body(self.django_app, scope, receive, send, limit, gw.bodies)


def body_limit(limits: RouteLimits, path: str) -> Limit:
    """The largest body the route of ``path`` takes."""
    if path.startswith(GATEWAY_PREFIXES):
        return limits.scoring
    if path.startswith(API_PREFIX):
        return limits.api
    return limits.pages


async def whole_body(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    limit: Limit,
    budget: BodyBudget,
) -> None:
    """Runs ``app`` once the request's whole body has been read on the event loop.

    The web pages run as a WSGI app in a thread pool (``serving_ui.asgi``), where reading
    the body would block a thread for as long as a client takes to send it: a few slow
    clients would hold every thread. Read here, a slow body costs a coroutine only. The
    body counts against the process's budget until the page has answered."""
    with budget.hold() as hold:
        try:
            body = await read_body(receive, limit, hold)
        except ClientGone:
            return
        except ServingError as exc:
            await respond(send, error_answer(exc))
            return
        await app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()  # only a disconnect can follow
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


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
            if name in (b"authorization", b"content-type")
        }

    async def run(self, receive: Receive, send: Send, extra: Iterable[Header] = ()) -> None:
        with self.gw.bodies.hold() as hold:
            try:
                answer = await self._answer(receive, hold)
            except ClientGone:
                return
            await respond(send, answer, extra)

    async def _answer(self, receive: Receive, hold: Hold) -> Answer:
        try:
            if self.scope["method"] != "POST":
                raise MethodNotAllowed("Scoring URLs accept POST only.")
            parsed = parse_path(self.path)
            if parsed is None:
                raise NotFound(
                    "Not a scoring URL: use /model-endpoint/<model>/<stage or version>/invocations."
                )
            target = await self._resolve(*parsed)
            body = await read_body(receive, self.gw.limits.scoring, hold)
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
                *await self.gw.upstream_async.forward(
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
            # Requests are answered by now: captured ones still queued go to disk.
            await asyncio.to_thread(close_captures)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _prune_forever() -> None:
    while True:
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
        gw = gateway()
        snapshot = gw.routing.latest
        if snapshot is not None:
            gw.upstream_async.prune(snapshot.table.addresses())
