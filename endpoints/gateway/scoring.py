"""The scoring path the front door and the UI share: ``<name>/<target>/invocations`` under
``/model-endpoint/`` and ``/model/``, answered by one ``Gateway`` per process. The front door
(``front``) drives it from its event loop; the UI's Send Request without JavaScript calls
``invoke`` from a Django view thread.

A request: the token and CAN_QUERY from the in-memory snapshot (``routing``); the URL's
stage, ``@alias`` or version to a version and its Running replicas; the limits, holding it
while a version wakes (``admission``); the body, unchanged, to the least-loaded replica
(``upstream_async`` or ``upstream_blocking``); the answer, with ``X-Serving-Version``.
Every error of its own is ``{"error_code", "message"}``; docs/architecture.md follows a
request through.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from endpoints.auth import token_from_authorization
from endpoints.errors import (
    BadRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServingError,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from endpoints.models import PermissionLevel

from . import browser
from .admission import Admission
from .bodies import UNREAD_BODY_ERRORS, BodyBudget, RouteLimits
from .capture import Capture
from .reporting import Flusher, LoadTracker, TokenUse, run_each, send_reports
from .routing import CachedToken, RoutingCache, Snapshot
from .routing_table import Target
from .transport import Transport
from .upstream import INVOCATIONS, JSON
from .upstream_async import StreamUpstream
from .upstream_blocking import Upstream

GATEWAY_PREFIXES = ("/model-endpoint/", "/model/")
RETRY_AFTER_SECONDS = "1"
# Names the version whose replica answered (a stage, an alias or a split may have chosen it).
VERSION_HEADER = "X-Serving-Version"


class MethodNotAllowed(ServingError):
    error_code = "BAD_REQUEST"
    status = 405


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def error_answer(exc: ServingError) -> Answer:
    headers: list[tuple[str, str]] = []
    if isinstance(exc, RateLimited | Unavailable):
        headers.append(("Retry-After", RETRY_AFTER_SECONDS))
    elif isinstance(exc, Unauthenticated):
        headers.append(("WWW-Authenticate", 'Bearer realm="model serving"'))
    elif isinstance(exc, MethodNotAllowed):
        headers.append(("Allow", "POST"))
    if isinstance(exc, UNREAD_BODY_ERRORS):
        # The rest of the body is never read: the connection cannot carry another request.
        headers.append(("Connection", "close"))
    return Answer(exc.status, json.dumps(exc.as_json()).encode(), JSON, tuple(headers))


_STATUS_LINES: dict[int, str] = {}


def status_line(code: int) -> str:
    line = _STATUS_LINES.get(code)
    if line is None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[code] = f"{code} {phrase}"
    return line


def parse_path(path_info: str) -> tuple[str, str] | None:
    """``(model name, stage or version)`` of a scoring URL, None when it is not one.

    The name is everything between the prefix and the last segment before
    ``/invocations``; it is only ever compared with the names of enabled endpoints, and the
    request is forwarded to a replica address from the routing table with a fixed path, so
    no part of the URL reaches anything but a known replica."""
    for prefix in GATEWAY_PREFIXES:
        if path_info.startswith(prefix):
            rest = path_info[len(prefix) :]
            break
    else:
        return None
    if rest.endswith("/"):
        rest = rest[:-1]
    if not rest.endswith(INVOCATIONS):
        return None
    name, sep, selector = rest[: -len(INVOCATIONS)].rpartition("/")
    if not sep or not name or not selector:
        return None
    return name, selector


def normalise_request(body: bytes, content_type: str | None) -> tuple[bytes, str]:
    """The body and content type to forward.

    A missing Content-Type means JSON (MLflow's server answers 500 without one). A JSON
    body that is a JSON *string* holding the request (what a Python client sends when it
    encodes a DataFrame's JSON twice: ``requests.request(json=json.dumps(...))``) is
    decoded once."""
    content_type = (content_type or "").strip() or JSON
    if not (content_type.isascii() and content_type.isprintable()):
        raise BadRequest("Invalid Content-Type header.")
    if content_type.split(";", 1)[0].strip().lower() == JSON and body[:64].lstrip()[:1] == b'"':
        try:
            inner = json.loads(body)
        except ValueError:
            return body, content_type
        if isinstance(inner, str):
            return inner.encode(), content_type
    return body, content_type


def capture_rate(snapshot: Snapshot, name: str) -> float:
    """The share of the endpoint's requests its inference table captures (0: off)."""
    routes = snapshot.table.endpoints.get(name)
    return getattr(routes.endpoint, "capture_rate", 0.0) if routes is not None else 0.0


def answered_by(answer: Answer, target: Target) -> Answer:
    """``answer`` naming the version that gave it."""
    return Answer(
        answer.status,
        answer.body,
        answer.content_type,
        (*answer.headers, (VERSION_HEADER, target.version)),
    )


def translate_answer(status: int, content_type: str, data: bytes) -> Answer:
    """The replica's answer as the gateway returns it: unchanged, except that errors which
    are not JSON get the MLflow REST error shape (same status, the replica's text), and
    JSON errors lose MLflow's ``stack_trace`` unless DEBUG is on (only error bodies are
    looked at: a successful answer is passed through untouched)."""
    if status == 504:
        # MLflow's own timeout answer is plain text labelled as JSON.
        return error_answer(Timeout(data.decode(errors="replace") or "Request timed out."))
    if status >= 400 and not content_type.startswith(JSON):
        code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
        text = data.decode(errors="replace").strip()
        return error_answer(ServingError(text, error_code=code, status=status))
    if status >= 400 and STACK_TRACE in data and not settings.DEBUG:
        data = without_stack_trace(data)
    return Answer(status, data, content_type)


STACK_TRACE = b'"stack_trace"'


def without_stack_trace(data: bytes) -> bytes:
    """A replica's JSON error without MLflow's ``stack_trace`` field: the model's code,
    paths and the request's values do not go back to the client (the replica's log keeps
    them). A body that is not a JSON object is replaced by a generic error."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return json.dumps(
            {"error_code": "INTERNAL_ERROR", "message": "The model server failed."}
        ).encode()
    body.pop("stack_trace", None)
    return json.dumps(body).encode()


# --- the gateway -----------------------------------------------------------------------------


class Gateway:
    """One per process: caches, pools, counters and the background flusher."""

    def __init__(self) -> None:
        serving = settings.SERVING
        self.limits = RouteLimits.from_settings()
        self.max_payload = self.limits.scoring.size
        # Bytes of request bodies this process holds at once, whatever their route.
        self.bodies = BodyBudget(int(serving["MAX_BUFFERED_BODY_BYTES"]))
        self.routing = RoutingCache()
        self.load = LoadTracker()
        timeout = float(serving["REQUEST_TIMEOUT_SECONDS"])
        max_response = int(serving["MAX_RESPONSE_BYTES"])
        self.upstream_blocking = Upstream(timeout, max_response)
        self.upstream_async = StreamUpstream(timeout, max_response)
        self.admission = Admission(
            self.routing,
            self.load,
            per_replica=int(serving["REPLICA_CONCURRENCY"]) + int(serving["QUEUE_PER_REPLICA"]),
            per_endpoint=int(serving["MAX_IN_FLIGHT_PER_ENDPOINT"]),
            cold_start_timeout=float(serving["COLD_START_TIMEOUT_SECONDS"]),
        )
        self.token_use = TokenUse()
        self.flusher = Flusher(self.flush)
        self.transport = Transport.from_settings()
        self.capture = Capture()

    # --- who may call what ----------------------------------------------------------------

    def resolve(
        self, snapshot: Snapshot, authorization: str | None, name: str, selector: str
    ) -> Target:
        """The version a request with this Authorization header may score, or a
        ServingError (401, 404, 403, 503)."""
        return self.resolve_caller(snapshot, authorization, name, selector)[0]

    def resolve_caller(
        self, snapshot: Snapshot, authorization: str | None, name: str, selector: str
    ) -> tuple[Target, int]:
        """``resolve``, with the id of the caller's token."""
        token = self._authenticate(snapshot, authorization)
        return self.authorize(snapshot, name, selector, token.user), token.token_pk

    def resolve_session(
        self, snapshot: Snapshot, scope: dict[str, Any], name: str, selector: str
    ) -> tuple[Target, int]:
        """``resolve_caller`` for the web UI's **Send Request**: the browser's session and
        CSRF token instead of a token (``browser``; token id 0). Queries the database."""
        return self.authorize(snapshot, name, selector, browser.session_user(scope)), 0

    def _authenticate(self, snapshot: Snapshot, header: str | None) -> CachedToken:
        raw = token_from_authorization(header)
        if raw is None:
            raise Unauthenticated(
                "Missing or malformed credentials: send 'Authorization: Bearer <token>' or "
                "basic auth with user 'token' and the token as password."
            )
        token = snapshot.user_for(raw)
        if token is None:
            raise Unauthenticated("Invalid, expired or revoked access token.")
        self.token_use.note(token.token_pk)
        return token

    def authorize(
        self, snapshot: Snapshot, name: str, selector: str, user: AbstractBaseUser
    ) -> Target:
        routes = snapshot.table.endpoint(name)
        if not snapshot.may(user, routes, PermissionLevel.CAN_VIEW):
            # As in the API: an endpoint the caller may not even view does not exist for
            # them, so a 403 would tell which names other users serve.
            raise NotFound(f"Serving is not enabled for registered model '{name}'.")
        if not snapshot.may(user, routes, PermissionLevel.CAN_QUERY):
            raise PermissionDenied(f"User does not have CAN_QUERY permission on model '{name}'.")
        return snapshot.table.resolve(name, selector)

    # --- scoring --------------------------------------------------------------------------

    def admit(self, target: Target, body: bytes) -> float:
        """Count one request for ``target``; its start time for ``finish``. Raises
        PayloadTooLarge or RateLimited instead when it may not go on."""
        if len(body) > self.max_payload:
            raise self.limits.scoring.refusal()
        self.flusher.ensure_running()
        self.admission.admit(target)
        return time.perf_counter()

    def finish(self, target: Target, started: float, status: int) -> None:
        # Counted against the admitted target, even if routing replaced it meanwhile.
        self.admission.finish(target, status, (time.perf_counter() - started) * 1000)

    def score(self, target: Target, body: bytes, content_type: str | None) -> Answer:
        """Admit, forward and count one request for ``target``, from a thread.

        Raises PayloadTooLarge or RateLimited before the request is admitted; afterwards
        every outcome is an Answer."""
        started = self.admit(target, body)
        answer = Answer(500, b"")
        try:
            body, content_type = normalise_request(body, content_type)
            serving = self.admission.await_replica(target)
            answer = translate_answer(
                *self.upstream_blocking.forward(
                    serving, body, content_type, load=self.load, refresh=self._fresh
                )
            )
            answer = answered_by(answer, serving)
        except ServingError as exc:
            answer = error_answer(exc)
        finally:
            self.finish(target, started, answer.status)
        return answer

    def _fresh(self, target: Target) -> Target | None:
        return self.routing.current().table.lookup(target)

    def flush(self) -> None:
        """Once a second: refresh an old routing table (and its token and permission
        caches), report load and metrics, close connections to replicas that are gone,
        note token use. Each step runs whatever the others do: Redis being away stops
        the reports, never the refresh."""
        run_each(
            ("refreshing the routing table", self.routing.refresh_if_old),
            ("reporting load and metrics", lambda: send_reports(self.load)),
            ("closing connections to replicas that left", self._prune),
            ("noting token use", self.token_use.flush),
        )

    def _prune(self) -> None:
        snapshot = self.routing.latest
        if snapshot is not None:
            self.upstream_blocking.prune(snapshot.table.addresses())


_gateway: Gateway | None = None
_gateway_pid = 0
_gateway_lock = threading.Lock()


def gateway() -> Gateway:
    """This process's gateway (a forked child builds its own: threads do not survive fork)."""
    global _gateway, _gateway_pid
    if _gateway is None or _gateway_pid != os.getpid():
        with _gateway_lock:
            if _gateway is None or _gateway_pid != os.getpid():
                _gateway = Gateway()
                _gateway_pid = os.getpid()
    return _gateway


# --- for the web UI's request sender without JavaScript ------------------------------------------

# With JavaScript the Serving tab's Send Request goes to the scoring URL (``browser``).
# Without it the form posts to a page, whose thread waits for the model: at most this many
# such requests per process at once, so slow models cannot take the threads pages need.
PAGE_SENDS = 4
page_sends = threading.BoundedSemaphore(PAGE_SENDS)


def invoke(
    *, model_name: str, selector: str, body: bytes, content_type: str, user: AbstractBaseUser
) -> tuple[int, bytes]:
    """Score as ``user`` would over HTTP (the UI's **Send Request** without JavaScript),
    captured into the inference table like a request to the scoring URL (token id 0).

    Raises a ServingError for what the gateway refuses before the request reaches a
    replica: NotFound (unknown model, stage or version, or serving disabled),
    PermissionDenied (no CAN_QUERY), Unavailable (the version is not ready),
    PayloadTooLarge and RateLimited (also when ``PAGE_SENDS`` requests from pages are in
    flight in this process). Once admitted, returns ``(status, body)`` exactly as an HTTP
    client would get them: the replica's answer, or the gateway's JSON error."""
    gw = gateway()
    snapshot = gw.routing.current()
    target = gw.authorize(snapshot, model_name, selector, user)
    if not page_sends.acquire(blocking=False):
        raise RateLimited(
            f"{PAGE_SENDS} requests sent from the Serving tab without JavaScript are already "
            "waiting for their answers here; wait for one, then send again."
        )
    started = time.perf_counter()
    try:
        answer = gw.score(target, body, content_type)
    finally:
        page_sends.release()
    gw.capture.offer(
        capture_rate(snapshot, model_name),
        endpoint=target.model_name,
        selector=selector,
        version=target.version,
        status=answer.status,
        latency_ms=(time.perf_counter() - started) * 1000,
        token_id=0,
        request=body,
        response=answer.body,
    )
    return answer.status, answer.body
