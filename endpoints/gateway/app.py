"""The scoring gateway: ``/model-endpoint/<name>/<stage|version>/invocations`` and
``/model/<name>/<stage|version>/invocations``.

A plain WSGI callable placed in front of Django (see serving_ui/wsgi.py): scoring requests
never pay for Django's middleware, request objects or SQL. Per request the gateway

1. authenticates the token and checks CAN_QUERY from caches in memory (``routing``),
2. resolves the URL to a version and its Running replicas (same snapshot; Redis pushes
   changes, so usually no round trip),
3. admits the request against the version's queue limit (per process), holding it while
   a scaled-to-zero version wakes up,
4. forwards the body unchanged (MLflow's scoring server parses the four JSON formats and
   CSV) over pooled keep-alive connections to the least-loaded replica, retrying once on
   another replica when a connection fails, and
5. returns the replica's answer; every error of its own is ``{"error_code", "message"}``.

Each process counts in-flight requests per version; a background thread (one per process)
reports them for the autoscaler and records metrics about once a second.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from endpoints import errors, load, metrics
from endpoints.auth import LAST_USED_RESOLUTION, token_from_authorization
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
from endpoints.models import AccessToken, PermissionLevel

from .routing import Address, RoutingCache, Snapshot, Target, run_db

log = logging.getLogger(__name__)

GATEWAY_PREFIXES = ("/model-endpoint/", "/model/")
INVOCATIONS = "/invocations"
JSON = "application/json"
CONNECT_TIMEOUT_SECONDS = 2.0
# While a request waits for a replica, it looks at the routing table this often (as well
# as whenever another thread rebuilt it).
HOLD_POLL_SECONDS = 0.25
FLUSH_INTERVAL_SECONDS = 1.0
RETRY_AFTER_SECONDS = "1"
# An oversized body is read and dropped up to this multiple of the limit, then the
# connection is closed instead.
DRAIN_FACTOR = 4
# Idle connections kept per replica; a burst above it opens extra ones that are closed.
POOL_CONNECTIONS = 32
# Requests refused for limits or failed authentication are not part of the metrics.
NOT_COUNTED = frozenset({401, 403, 429})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PayloadTooLarge(errors.PayloadTooLarge):
    def __init__(self, message: str, *, close_connection: bool = False) -> None:
        super().__init__(message)
        self.close_connection = close_connection


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
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, RateLimited | Unavailable):
        headers = (("Retry-After", RETRY_AFTER_SECONDS),)
    elif isinstance(exc, Unauthenticated):
        headers = (("WWW-Authenticate", 'Bearer realm="model serving"'),)
    elif isinstance(exc, MethodNotAllowed):
        headers = (("Allow", "POST"),)
    elif getattr(exc, "close_connection", False):
        # The rest of a huge body is not worth reading to keep the connection.
        headers = (("Connection", "close"),)
    return Answer(exc.status, json.dumps(exc.as_json()).encode(), JSON, headers)


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


# --- the WSGI application ------------------------------------------------------------------


class GatewayApplication:
    def __init__(self, django_app: WSGIApp) -> None:
        self.django_app = django_app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").startswith(GATEWAY_PREFIXES):
            return self.django_app(environ, start_response)
        answer = gateway().handle(environ)
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            *answer.headers,
        ]
        start_response(status_line(answer.status), headers)
        return [answer.body]


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
    # WSGI passes the path as latin-1 decoded bytes; names are UTF-8.
    try:
        rest = rest.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None
    if rest.endswith("/"):
        rest = rest[:-1]
    if not rest.endswith(INVOCATIONS):
        return None
    name, sep, selector = rest[: -len(INVOCATIONS)].rpartition("/")
    if not sep or not name or not selector:
        return None
    return name, selector


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (also without Content-Length).

    The rest of an oversized body is read and dropped (up to a bound) before the 413 goes
    out: most HTTP clients only look for an answer once they have sent everything, and
    would see a reset connection instead of the 413."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            expected = int(length)
        except ValueError:
            raise BadRequest("Invalid Content-Length header.") from None
        if expected > limit:
            raise _too_large(stream, limit)
        return stream.read(expected)
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(65536):
        total += len(chunk)
        if total > limit:
            raise _too_large(stream, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(stream: Any, limit: int) -> PayloadTooLarge:
    drained = 0
    while chunk := stream.read(65536):
        drained += len(chunk)
        if drained > DRAIN_FACTOR * limit:
            return PayloadTooLarge(_too_large_message(limit), close_connection=True)
    return PayloadTooLarge(_too_large_message(limit))


def _too_large_message(limit: int) -> str:
    return f"The request body exceeds the limit of {limit // (1024 * 1024)} MB."


def normalise_request(body: bytes, content_type: str | None) -> tuple[bytes, str]:
    """The body and content type to forward.

    A missing Content-Type means JSON (MLflow's server answers 500 without one). A JSON
    body that is a JSON *string* holding the request (what the reference Python client
    sends for DataFrames: ``requests.request(json=json.dumps(...))``) is decoded once."""
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


def translate_answer(status: int, content_type: str, data: bytes) -> Answer:
    """The replica's answer as the gateway returns it: unchanged, except that errors which
    are not JSON get the MLflow REST error shape (same status, the replica's text)."""
    if status == 504:
        # MLflow's own timeout answer is plain text labelled as JSON.
        return error_answer(Timeout(data.decode(errors="replace") or "Request timed out."))
    if status >= 400 and not content_type.startswith(JSON):
        code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
        text = data.decode(errors="replace").strip()
        return error_answer(ServingError(text, error_code=code, status=status))
    return Answer(status, data, content_type)


# --- forwarding -------------------------------------------------------------------------------


class ReplicaUnreachable(Exception):
    pass


class ReplicaTimeout(Exception):
    pass


class ReplicaConnection:
    """One keep-alive HTTP/1.1 connection to a replica.

    A deliberately small client: it only ever sends ``POST /invocations`` to MLflow's
    scoring server and reads one answer (Content-Length or chunked). It costs a fraction of
    a general-purpose client per request, which is most of what the gateway adds (see
    docs/performance.md)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_SECONDS)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.used = False

    def idle_and_open(self) -> bool:
        """False when the replica closed this kept connection (or sent something unasked)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        self.sock.close()

    def exchange(self, head: bytes, body: bytes, timeout: float) -> tuple[int, str, bytes, bool]:
        """Send one request, return ``(status, content type, body, keep-alive)``."""
        deadline = time.monotonic() + timeout
        self.used = True
        if len(body) <= 65536:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_ANSWER_HEAD:
                raise ReplicaUnreachable("oversized answer headers")
            self._receive(deadline)
        status, headers = _parse_head(self.buffer[:end])
        self.buffer = self.buffer[end + 4 :]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = self._read_chunked(deadline)
        elif "content-length" in headers:
            data = self._read_exactly(int(headers["content-length"]), deadline)
        else:
            data = self._read_to_close(deadline)
            headers["connection"] = "close"
        keep = headers.get("connection", "").lower() != "close"
        return status, headers.get("content-type", JSON), data, keep

    def _receive(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the replica did not answer in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ReplicaUnreachable("the replica closed the connection")
        self.buffer += chunk

    def _read_exactly(self, length: int, deadline: float) -> bytes:
        while len(self.buffer) < length:
            self._receive(deadline)
        data, self.buffer = self.buffer[:length], self.buffer[length:]
        return data

    def _read_line(self, deadline: float) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._receive(deadline)
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    def _read_chunked(self, deadline: float) -> bytes:
        parts = []
        while size := int(self._read_line(deadline).split(b";", 1)[0], 16):
            parts.append(self._read_exactly(size, deadline))
            self._read_line(deadline)
        while self._read_line(deadline):  # trailers, up to the empty line
            pass
        return b"".join(parts)

    def _read_to_close(self, deadline: float) -> bytes:
        try:
            while True:
                self._receive(deadline)
        except ReplicaUnreachable:
            data, self.buffer = self.buffer, b""
            return data


MAX_ANSWER_HEAD = 65536


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ReplicaUnreachable(f"malformed answer from the replica: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class Upstream:
    """Keep-alive connections to replicas, shared by the threads of one process."""

    def __init__(self, read_timeout: float) -> None:
        self._idle: dict[Address, list[ReplicaConnection]] = {}
        self._lock = threading.Lock()
        self._read_timeout = read_timeout

    def post(self, address: Address, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        # Built from scratch: the caller's Authorization and cookies never go on.
        head = (
            f"POST {INVOCATIONS} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        conn = self._checkout(address)
        try:
            status, answer_type, data, keep = conn.exchange(head, body, self._read_timeout)
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            conn.close()
            raise ReplicaTimeout(str(exc)) from exc
        except (ReplicaUnreachable, OSError, ValueError) as exc:
            conn.close()
            raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        return status, answer_type, data

    def _checkout(self, address: Address) -> ReplicaConnection:
        while True:
            with self._lock:
                idle = self._idle.get(address)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.idle_and_open():
                return conn
            conn.close()
        try:
            return ReplicaConnection(address)
        except OSError as exc:
            raise ReplicaUnreachable(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc

    def _checkin(self, conn: ReplicaConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.address, [])
            if len(idle) < POOL_CONNECTIONS:
                idle.append(conn)
                return
        conn.close()

    def prune(self, keep: set[Address]) -> None:
        """Close the connections to replicas that are gone (their ports may be reused)."""
        with self._lock:
            gone = [a for a in self._idle if a not in keep]
            closing = [conn for a in gone for conn in self._idle.pop(a)]
        for conn in closing:
            conn.close()


# --- load ------------------------------------------------------------------------------------


@dataclass
class VersionLoad:
    in_flight: int = 0
    peak: int = 0
    last_request_at: float = 0.0
    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0


@dataclass(frozen=True)
class LoadReport:
    version_pk: int
    in_flight: int
    peak: int
    last_request_at: float
    requests: int
    errors: int
    latency_ms_sum: float
    latency_ms_max: float


class LoadTracker:
    """In-flight requests per version and per replica in this process, and the counters
    the flusher sends to Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[int, VersionLoad] = {}
        self._replicas: dict[Address, int] = {}
        self._turn = 0

    def admit(self, version_pk: int, limit: int) -> bool:
        with self._lock:
            entry = self._versions.get(version_pk)
            if entry is None:
                entry = self._versions[version_pk] = VersionLoad()
            if entry.in_flight >= limit:
                return False
            entry.in_flight += 1
            entry.peak = max(entry.peak, entry.in_flight)
            entry.last_request_at = time.time()
            return True

    def finish(self, version_pk: int, status: int, latency_ms: float) -> None:
        with self._lock:
            entry = self._versions[version_pk]
            entry.in_flight -= 1
            if status in NOT_COUNTED:
                return
            entry.requests += 1
            entry.errors += status >= 400
            entry.latency_ms_sum += latency_ms
            entry.latency_ms_max = max(entry.latency_ms_max, latency_ms)

    def in_flight(self, version_pk: int) -> int:
        with self._lock:
            entry = self._versions.get(version_pk)
            return entry.in_flight if entry else 0

    def pick(self, replicas: tuple[Address, ...], avoid: set[Address]) -> Address:
        """The replica with the fewest requests in flight from this process (ties take
        turns), preferring those not in ``avoid``."""
        candidates = [a for a in replicas if a not in avoid] or list(replicas)
        with self._lock:
            self._turn += 1
            count = len(candidates)
            order = [candidates[(self._turn + i) % count] for i in range(count)]
            address = min(order, key=lambda a: self._replicas.get(a, 0))
            self._replicas[address] = self._replicas.get(address, 0) + 1
        return address

    def release(self, address: Address) -> None:
        with self._lock:
            left = self._replicas.get(address, 1) - 1
            if left > 0:
                self._replicas[address] = left
            else:
                self._replicas.pop(address, None)

    def take_reports(self) -> list[LoadReport]:
        """One report per version seen since the last call; counters start again.

        A version idle for a whole interval is reported once more (with zeros, so the
        autoscaler does not keep an old peak) and then forgotten."""
        reports = []
        with self._lock:
            for version_pk, entry in list(self._versions.items()):
                reports.append(
                    LoadReport(
                        version_pk,
                        entry.in_flight,
                        entry.peak,
                        entry.last_request_at,
                        entry.requests,
                        entry.errors,
                        entry.latency_ms_sum,
                        entry.latency_ms_max,
                    )
                )
                if entry.peak == 0 and entry.in_flight == 0:
                    del self._versions[version_pk]
                    continue
                self._versions[version_pk] = VersionLoad(
                    in_flight=entry.in_flight,
                    peak=entry.in_flight,
                    last_request_at=entry.last_request_at,
                )
        return reports


# --- the gateway -----------------------------------------------------------------------------


class Gateway:
    """One per process: caches, pools, counters and the background flusher."""

    def __init__(self) -> None:
        serving = settings.SERVING
        self.request_timeout = float(serving["REQUEST_TIMEOUT_SECONDS"])
        self.max_payload = int(serving["MAX_PAYLOAD_BYTES"])
        self.per_replica = int(serving["REPLICA_CONCURRENCY"]) + int(serving["QUEUE_PER_REPLICA"])
        self.cold_start_timeout = float(serving["COLD_START_TIMEOUT_SECONDS"])
        self.routing = RoutingCache()
        self.load = LoadTracker()
        self.upstream = Upstream(self.request_timeout)
        self._used_tokens: dict[int, float] = {}
        self._touched_tokens: dict[int, float] = {}
        self._flusher: threading.Thread | None = None
        self._flusher_lock = threading.Lock()

    # --- HTTP -----------------------------------------------------------------------------

    def handle(self, environ: dict[str, Any]) -> Answer:
        try:
            if environ.get("REQUEST_METHOD") != "POST":
                raise MethodNotAllowed("Scoring URLs accept POST only.")
            parsed = parse_path(environ.get("PATH_INFO", ""))
            if parsed is None:
                raise NotFound(
                    "Not a scoring URL: use /model-endpoint/<model>/<stage or version>/invocations."
                )
            snapshot = self.routing.current()
            user = self._authenticate(snapshot, environ.get("HTTP_AUTHORIZATION"))
            target = self.authorize(snapshot, parsed[0], parsed[1], user)
            body = read_body(environ, self.max_payload)
            return self.score(target, body, environ.get("CONTENT_TYPE"))
        except ServingError as exc:
            return error_answer(exc)

    def _authenticate(self, snapshot: Snapshot, header: str | None) -> AbstractBaseUser:
        raw = token_from_authorization(header)
        if raw is None:
            raise Unauthenticated(
                "Missing or malformed credentials: send 'Authorization: Bearer <token>' or "
                "basic auth with user 'token' and the token as password."
            )
        token = snapshot.user_for(raw)
        if token is None:
            raise Unauthenticated("Invalid, expired or revoked access token.")
        self._used_tokens[token.token_pk] = time.time()
        return token.user

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

    def score(self, target: Target, body: bytes, content_type: str | None) -> Answer:
        """Admit, forward and count one request for ``target``.

        Raises PayloadTooLarge or RateLimited before the request is admitted; afterwards
        every outcome is an Answer."""
        if len(body) > self.max_payload:
            raise PayloadTooLarge(_too_large_message(self.max_payload))
        self._ensure_flusher()
        limit = max(1, len(target.replicas)) * self.per_replica
        if not self.load.admit(target.version_pk, limit):
            raise RateLimited(
                f"Too many requests waiting for version {target.version} of model "
                f"'{target.model_name}'; retry shortly."
            )
        started = time.perf_counter()
        answer = Answer(500, b"")
        try:
            body, content_type = normalise_request(body, content_type)
            answer = self._forward(target, body, content_type)
        except ServingError as exc:
            answer = error_answer(exc)
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            self.load.finish(target.version_pk, answer.status, latency_ms)
        return answer

    def _forward(self, target: Target, body: bytes, content_type: str) -> Answer:
        target = self._await_replica(target)
        tried: set[Address] = set()
        while True:
            address = self.load.pick(target.replicas, tried)
            try:
                status, answer_type, data = self.upstream.post(address, body, content_type)
            except ReplicaTimeout as exc:
                raise Timeout(
                    f"The model did not answer within {self.request_timeout:g} seconds."
                ) from exc
            except ReplicaUnreachable as exc:
                if tried:
                    raise Unavailable(
                        f"Version {target.version} of model '{target.model_name}' could not "
                        "be reached; retry shortly."
                    ) from exc
                tried.add(address)
                target = self._re_resolve(target)
                continue
            finally:
                self.load.release(address)
            return translate_answer(status, answer_type, data)

    def _re_resolve(self, target: Target) -> Target:
        """The target from the newest routing (a replica may just have been replaced)."""
        fresh = self._lookup(self.routing.current(), target)
        return fresh if fresh is not None and fresh.replicas else target

    @staticmethod
    def _lookup(snapshot: Snapshot, target: Target) -> Target | None:
        routes = snapshot.table.endpoints.get(target.model_name)
        return routes.versions.get(target.version) if routes else None

    def _await_replica(self, target: Target) -> Target:
        """``target`` with at least one Running replica: a version scaled to zero is woken
        and the request waits (bounded) until the routing table shows a replica."""
        if target.replicas:
            return target
        if target.scale_to_zero:
            try:
                load.request_wake(target.version_pk, target.endpoint_pk)
            except Exception as exc:  # Redis or the broker away: the reconcile loop wakes it
                log.warning("gateway: could not request a wake-up: %s", exc)
        deadline = time.monotonic() + self.cold_start_timeout
        while time.monotonic() < deadline:
            fresh = self._lookup(self.routing.wait_for_change(HOLD_POLL_SECONDS), target)
            if fresh is None:
                raise NotFound(f"Version {target.version} of '{target.model_name}' is gone.")
            if fresh.replicas:
                return fresh
        raise Unavailable(
            f"No replica of version {target.version} of model '{target.model_name}' started "
            f"within {self.cold_start_timeout:g} seconds; retry shortly."
        )

    # --- background flusher ---------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        thread = self._flusher
        if thread is not None and thread.is_alive():
            return
        with self._flusher_lock:
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="gateway-flusher", daemon=True
                )
                self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_SECONDS)
            try:
                self.flush()
            except Exception:  # keep reporting: a Redis or database hiccup is temporary
                log.exception("gateway: flushing load reports failed")

    def flush(self) -> None:
        """Report load and metrics, refresh an old routing table, note token use."""
        for report in self.load.take_reports():
            load.report(
                report.version_pk,
                in_flight=report.in_flight,
                peak_in_flight=report.peak,
                last_request_at=report.last_request_at,
            )
            if report.requests:
                metrics.record_requests(
                    report.version_pk,
                    at=time.time(),
                    requests=report.requests,
                    errors=report.errors,
                    latency_ms_sum=report.latency_ms_sum,
                    latency_ms_max=report.latency_ms_max,
                )
        self.routing.refresh_if_old()
        self.upstream.prune(self.routing.current().table.addresses())
        self._touch_tokens()

    def _touch_tokens(self) -> None:
        """Write ``last_used_at`` at most once per LAST_USED_RESOLUTION per token, from here
        rather than from requests, so scoring stays free of database writes."""
        used, self._used_tokens = self._used_tokens, {}
        now = time.time()
        resolution = LAST_USED_RESOLUTION.total_seconds()
        due = [pk for pk in used if now - self._touched_tokens.get(pk, 0.0) > resolution]
        if not due:
            return
        cutoff = timezone.now() - timedelta(seconds=resolution)
        run_db(
            lambda: (
                AccessToken.objects.filter(pk__in=due)
                .exclude(last_used_at__gt=cutoff)
                .update(last_used_at=timezone.now())
            )
        )
        for pk in due:
            self._touched_tokens[pk] = now


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


# --- for the web UI's request sender ---------------------------------------------------------


def invoke(
    *, model_name: str, selector: str, body: bytes, content_type: str, user: AbstractBaseUser
) -> tuple[int, bytes]:
    """Score as ``user`` would over HTTP (the UI's **Send Request**).

    Raises a ServingError for what the gateway refuses before the request reaches a
    replica: NotFound (unknown model, stage or version, or serving disabled),
    PermissionDenied (no CAN_QUERY), Unavailable (the version is not ready),
    PayloadTooLarge and RateLimited. Once admitted, returns ``(status, body)`` exactly as
    an HTTP client would get them: the replica's answer, or the gateway's JSON error for a
    timeout (504) or an unreachable replica (503)."""
    gw = gateway()
    snapshot = gw.routing.current()
    target = gw.authorize(snapshot, model_name, selector, user)
    answer = gw.score(target, body, content_type)
    return answer.status, answer.body
