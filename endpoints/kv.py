"""Redis: the one client every process uses, and the name of every key the product keeps.

Keys are built here and nowhere else, so one look shows everything the product stores in
Redis and which part writes it.

The *generation* is one integer that changes whenever routing, tokens or permissions
change. Gateway processes are told of each change by a push (client-side tracking, see
``endpoints.gateway.routing``) and only then read it and rebuild their caches.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

PREFIX = "serving:"
GENERATION_KEY = f"{PREFIX}generation"
RECONCILE_ALL_LOCK_KEY = f"{PREFIX}reconcile-all"


@cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    return _client_for(settings.REDIS_URL)


@cache
def _probe_client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def probe_client() -> redis.Redis:
    """A client with short timeouts, for health checks that must answer quickly."""
    return _probe_client_for(settings.REDIS_URL)


def bump_generation() -> int:
    return int(redis_client().incr(GENERATION_KEY))


def current_generation() -> int:
    value = redis_client().get(GENERATION_KEY)
    return int(value) if value is not None else 0


# --- per endpoint: the reconcile loop ------------------------------------------------------


def reconcile_lock_key(endpoint_pk: int) -> str:
    """Held by the worker reconciling the endpoint."""
    return f"{PREFIX}reconcile:{endpoint_pk}"


def reconcile_dirty_key(endpoint_pk: int) -> str:
    """Set by a trigger that found the lock taken: the holder runs one more pass."""
    return f"{PREFIX}reconcile-dirty:{endpoint_pk}"


def follow_up_key(endpoint_pk: int) -> str:
    """At most one scheduled follow-up pass per endpoint."""
    return f"{PREFIX}follow-up:{endpoint_pk}"


def port_reservation_key(host: str, port: int) -> str:
    """Two workers starting replicas at once never pick the same port."""
    return f"{PREFIX}port:{host}:{port}"


def gpu_reservation_key(host: str, device: int) -> str:
    """Two workers starting replicas at once never give them the same GPU."""
    return f"{PREFIX}gpu:{host}:{device}"


# --- per endpoint version: load, wake-ups, scaling, metrics ----------------------------------


def load_key(version_pk: int) -> str:
    """A hash of in-flight reports, one field per gateway process."""
    return f"{PREFIX}load:{version_pk}"


def last_request_key(version_pk: int) -> str:
    return f"{PREFIX}last-request:{version_pk}"


def wake_key(version_pk: int) -> str:
    """A request waits for a version scaled to zero."""
    return f"{PREFIX}wake:{version_pk}"


def low_since_key(version_pk: int) -> str:
    """Since when the version's load has been low enough to scale down (the autoscaler's timer)."""
    return f"{PREFIX}low-since:{version_pk}"


def gpu_wait_key(version_pk: int) -> str:
    """Since when a replica of the version has been waiting for a free GPU."""
    return f"{PREFIX}gpu-wait:{version_pk}"


def metrics_key(version_pk: int, bucket: int) -> str:
    """One metrics bucket (a hash of counters)."""
    return f"{PREFIX}metrics:{version_pk}:{bucket}"


def metrics_pattern(version_pk: int) -> str:
    return f"{PREFIX}metrics:{version_pk}:*"


def metrics_totals_key(version_pk: int) -> str:
    """A version's counters since the start (requests by code, latency histogram, queue
    rejections, cold starts): what ``/metrics`` exposes. They only ever grow."""
    return f"{PREFIX}metrics-totals:{version_pk}"


# --- the worker and the reconcile loop, for /metrics and /readyz ----------------------------

RECONCILE_TOTALS_KEY = f"{PREFIX}reconcile-totals"
# A sorted set: Celery worker name → the Unix time of its last heartbeat.
WORKER_HEARTBEATS_KEY = f"{PREFIX}worker-heartbeats"


def capture_dropped_key(endpoint: str) -> str:
    """A hash: requests of an endpoint left out of its inference table, by reason (the
    gateways add to it)."""
    return f"{PREFIX}capture-dropped:{endpoint}"
