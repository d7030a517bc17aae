"""The front door's operational paths, answered on the event loop without Django:

- ``/healthz``: the process answers (no I/O at all);
- ``/readyz``: the database, Redis and a live Celery worker (``endpoints.telemetry.readiness``),
  checked in a thread at most once a second per process;
- ``/metrics``: the Prometheus exposition (``endpoints.telemetry.prometheus``), for an admin's
  access token or the ``METRICS_TOKEN``; with ``METRICS_LISTEN`` set it is served on that
  address instead (``metrics_wsgi_app``, run by ``server``) and the public port says 404.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from endpoints.auth import token_from_authorization
from endpoints.errors import NotFound, PermissionDenied, ServingError, Unauthenticated
from endpoints.telemetry import prometheus, readiness

from .routing import run_db
from .scoring import JSON, Answer, Gateway, error_answer

METRICS_PATH = "/metrics"
OPS_PATHS = frozenset({"/healthz", "/readyz", METRICS_PATH})
READY_CACHE_SECONDS = 1.0
HEALTHY = Answer(200, b'{"status": "ok"}')


class MethodNotAllowed(ServingError):
    error_code = "BAD_REQUEST"
    status = 405


class ReadinessCache:
    """The last readiness result of this process, reused for ``READY_CACHE_SECONDS``: a
    probe storm costs one round of checks per second."""

    def __init__(self) -> None:
        self._value: readiness.Readiness | None = None
        self._at = 0.0
        self._lock: asyncio.Lock | None = None

    async def get(self) -> readiness.Readiness:
        if self._fresh():
            return self._value  # type: ignore[return-value]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._fresh():
                self._value = await asyncio.to_thread(readiness.readiness)
                self._at = time.monotonic()
        return self._value  # type: ignore[return-value]

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._at < READY_CACHE_SECONDS


_ready = ReadinessCache()


async def answer(gw: Gateway, path: str, method: str, authorization: str | None) -> Answer:
    try:
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{path} accepts GET only.")
        if path == "/healthz":
            return HEALTHY
        if path == "/readyz":
            result = await _ready.get()
            body = json.dumps(result.as_json()).encode()
            return Answer(200 if result.ready else 503, body, JSON)
        return await _metrics(gw, authorization)
    except ServingError as exc:
        answer = error_answer(exc)
        if isinstance(exc, MethodNotAllowed):
            return Answer(answer.status, answer.body, JSON, (("Allow", "GET, HEAD"),))
        return answer


async def _metrics(gw: Gateway, authorization: str | None) -> Answer:
    if settings.METRICS["LISTEN"]:
        raise NotFound("/metrics is served on its own address (METRICS_LISTEN).")
    raw = token_from_authorization(authorization)
    if raw is None:
        raise Unauthenticated(
            "/metrics needs 'Authorization: Bearer <token>': an admin's access token or "
            "the METRICS_TOKEN."
        )
    if not prometheus.scrape_allowed(raw, is_admin=False):
        token = await asyncio.to_thread(lambda: gw.routing.current().user_for(raw))
        if token is None:
            raise Unauthenticated("Invalid, expired or revoked access token.")
        if not await asyncio.to_thread(run_db, lambda: token.user.is_superuser):
            raise PermissionDenied("Only admins and the METRICS_TOKEN may read /metrics.")
    body = await asyncio.to_thread(run_db, prometheus.render)
    return Answer(200, body, prometheus.CONTENT_TYPE)


def metrics_wsgi_app(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``/metrics`` without a token, for ``METRICS_LISTEN`` (an address only the scraper
    reaches)."""
    if environ.get("PATH_INFO") != "/metrics":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found: the metrics are at /metrics.\n"]
    body = run_db(prometheus.render)
    start_response(
        "200 OK", [("Content-Type", prometheus.CONTENT_TYPE), ("Content-Length", str(len(body)))]
    )
    return [body]
