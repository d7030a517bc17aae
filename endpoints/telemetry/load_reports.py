"""Load reports from the gateway to the autoscaler, and wake-up requests, through Redis.

Each gateway process keeps per-version counters in memory and flushes them about once a
second with ``report``; the autoscaler reads the sum over processes with ``current``. A
request that finds a scaled-to-zero version calls ``request_wake``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from endpoints import kv, triggers
from endpoints.kv import redis_client

# A report older than this is from a gateway process that is gone.
REPORT_TTL_SECONDS = 15
WAKE_TTL_SECONDS = 300
PROCESS_KEY = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Load:
    # Highest number of requests in flight at once during the last report interval,
    # summed over gateway processes.
    peak_in_flight: int = 0
    in_flight: int = 0
    # Unix time of the newest request any gateway process saw (0: none recorded).
    last_request_at: float = 0.0


def report(version_pk: int, *, in_flight: int, peak_in_flight: int, last_request_at: float) -> None:
    """Called by each gateway process for each version it served recently."""
    client = redis_client()
    value = json.dumps({"in_flight": in_flight, "peak": peak_in_flight, "ts": time.time()})
    pipe = client.pipeline(transaction=False)
    pipe.hset(kv.load_key(version_pk), PROCESS_KEY, value)
    pipe.expire(kv.load_key(version_pk), REPORT_TTL_SECONDS)
    if last_request_at:
        # Keep the newest time only (several processes report).
        pipe.eval(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') "
            "if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end",
            1,
            kv.last_request_key(version_pk),
            repr(last_request_at),
        )
    pipe.execute()


def current(version_pk: int) -> Load:
    client = redis_client()
    reports = client.hgetall(kv.load_key(version_pk))
    now = time.time()
    in_flight = peak = 0
    for raw in reports.values():
        data = json.loads(raw)
        if now - data["ts"] > REPORT_TTL_SECONDS:
            continue
        in_flight += int(data["in_flight"])
        peak += int(data["peak"])
    last = client.get(kv.last_request_key(version_pk))
    return Load(peak_in_flight=peak, in_flight=in_flight, last_request_at=float(last or 0))


def in_flight(version_pks: list[int]) -> dict[int, int]:
    """Requests in flight per version now, summed over the gateway processes that reported
    recently (one round trip for all versions)."""
    pipe = redis_client().pipeline(transaction=False)
    for pk in version_pks:
        pipe.hgetall(kv.load_key(pk))
    now = time.time()
    found = {}
    for pk, reports in zip(version_pks, pipe.execute(), strict=True):
        found[pk] = sum(
            int(data["in_flight"])
            for data in map(json.loads, reports.values())
            if now - data["ts"] <= REPORT_TTL_SECONDS
        )
    return found


def mark_request(version_pk: int, at: float | None = None) -> None:
    """Record activity directly (a wake-up counts as a request for the quiet period)."""
    redis_client().set(kv.last_request_key(version_pk), repr(at or time.time()))


def request_wake(version_pk: int, endpoint_pk: int) -> None:
    """A request is waiting for a version that has no running replica: start one now."""
    mark_request(version_pk)
    # NX: twenty waiting requests enqueue one reconcile, not twenty.
    if redis_client().set(kv.wake_key(version_pk), repr(time.time()), nx=True, ex=WAKE_TTL_SECONDS):
        # A cold start for /metrics: one per wake-up, not one per waiting request.
        redis_client().hincrby(kv.metrics_totals_key(version_pk), "cold_starts", 1)
        triggers.reconcile_soon(endpoint_pk)


def wake_requested(version_pk: int) -> bool:
    return bool(redis_client().exists(kv.wake_key(version_pk)))


def clear_wake(version_pk: int) -> None:
    redis_client().delete(kv.wake_key(version_pk))
