"""Per-version serving metrics in Redis, in 10-second buckets kept for a day.

The gateway adds request counts, errors and latency per bucket (each process flushes its
own counters about once a second); the reconcile loop records the replica count. Requests
refused for rate limits or failed authentication are not counted: they say nothing about
how the model serves.
"""

from __future__ import annotations

import time
from typing import Any

from . import kv
from .kv import redis_client

BUCKET_SECONDS = 10
RETENTION_SECONDS = 24 * 3600


def _bucket(ts: float) -> int:
    return int(ts) // BUCKET_SECONDS * BUCKET_SECONDS


def record_requests(
    version_pk: int,
    *,
    at: float,
    requests: int,
    errors: int,
    latency_ms_sum: float,
    latency_ms_max: float,
) -> None:
    key = kv.metrics_key(version_pk, _bucket(at))
    pipe = redis_client().pipeline(transaction=False)
    pipe.hincrby(key, "requests", requests)
    pipe.hincrby(key, "errors", errors)
    pipe.hincrbyfloat(key, "latency_ms_sum", latency_ms_sum)
    # The maximum over processes: a compare-and-set in Redis.
    pipe.eval(
        "local cur = tonumber(redis.call('HGET', KEYS[1], 'latency_ms_max') or '0') "
        "if tonumber(ARGV[1]) > cur then "
        "redis.call('HSET', KEYS[1], 'latency_ms_max', ARGV[1]) end",
        1,
        key,
        repr(latency_ms_max),
    )
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


def record_replicas(version_pk: int, count: int, at: float | None = None) -> None:
    key = kv.metrics_key(version_pk, _bucket(at or time.time()))
    pipe = redis_client().pipeline(transaction=False)
    pipe.hset(key, "replicas", count)
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


def series(version_pk: int, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """One point per bucket between the two times (milliseconds), oldest first."""
    start = _bucket(start_ms / 1000)
    end = _bucket(end_ms / 1000)
    if end < start:
        return []
    # Bound the work: at most a day of buckets.
    start = max(start, end - RETENTION_SECONDS)
    buckets = list(range(start, end + 1, BUCKET_SECONDS))
    pipe = redis_client().pipeline(transaction=False)
    for b in buckets:
        pipe.hgetall(kv.metrics_key(version_pk, b))
    points = []
    for b, raw in zip(buckets, pipe.execute(), strict=True):
        if not raw:
            continue
        data = {k.decode(): float(v) for k, v in raw.items()}
        requests = int(data.get("requests", 0))
        points.append(
            {
                "timestamp": b * 1000,
                "requests": requests,
                "requests_per_second": round(requests / BUCKET_SECONDS, 3),
                "errors": int(data.get("errors", 0)),
                "error_rate": round(data.get("errors", 0) / requests, 4) if requests else 0.0,
                "latency_ms_avg": round(data.get("latency_ms_sum", 0) / requests, 3)
                if requests
                else None,
                "latency_ms_max": data.get("latency_ms_max"),
                "replicas": int(data["replicas"]) if "replicas" in data else None,
            }
        )
    return points
