"""Per-version serving metrics in Redis: 10-second buckets kept for a day (requests, errors,
latency and its histogram, the replica count), and running totals that ``prometheus``
exposes as counters. Gateway processes flush their counters here about once a second;
requests refused for limits or authentication stay out of the buckets. One histogram
(``LATENCY_BOUNDS``) serves both, so the API's percentiles and Prometheus's agree.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from endpoints import kv
from endpoints.kv import redis_client

BUCKET_SECONDS = 10
RETENTION_SECONDS = 24 * 3600
# Upper bounds (seconds) of the latency histogram's buckets; one more bucket is +Inf.
LATENCY_BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_LATENCY_BOUNDS_MS = tuple(b * 1000 for b in LATENCY_BOUNDS)
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def latency_bucket(latency_ms: float) -> int:
    """The index of the histogram bucket a latency falls in (``le``: bound included)."""
    return bisect_left(_LATENCY_BOUNDS_MS, latency_ms)


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BOUNDS) -> float:
    """The ``q`` quantile of a histogram (per-bucket counts, the last one +Inf), estimated
    as Prometheus's ``histogram_quantile`` does: linear within the bucket the rank falls
    in; the highest finite bound when it falls in +Inf. NaN without observations."""
    total = sum(counts)
    if total <= 0:
        return float("nan")
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]


def percentiles_ms(counts: Sequence[int]) -> dict[str, float | None]:
    """``latency_ms_p50``/``p95``/``p99`` of a latency histogram (None without requests)."""
    if not sum(counts):
        return {f"latency_ms_{name}": None for name, _ in PERCENTILES}
    return {f"latency_ms_{name}": round(quantile(q, counts) * 1000, 3) for name, q in PERCENTILES}


def histogram_fields(raw: Mapping[str, float]) -> list[int]:
    """Per-bucket counts from a hash's ``h:<index>`` fields."""
    return [int(raw.get(f"h:{i}", 0)) for i in range(len(LATENCY_BOUNDS) + 1)]


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
    histogram: Mapping[int, int] | None = None,
    codes: Mapping[int, int] | None = None,
    rejected: int = 0,
) -> None:
    """Add one gateway process's counters since its last flush.

    ``requests``, ``errors``, the latency sum and max and ``histogram`` (bucket index →
    count) go into the current bucket; they leave out requests refused for limits or
    authentication. The histogram and latency sum also go into the version's totals, with
    ``codes`` (status code → count, every answered request) and ``rejected`` (refused
    because the version's queue or its endpoint's limit was full)."""
    key = kv.metrics_key(version_pk, _bucket(at))
    totals = kv.metrics_totals_key(version_pk)
    pipe = redis_client().pipeline(transaction=False)
    if requests:
        pipe.hincrby(key, "requests", requests)
        pipe.hincrby(key, "errors", errors)
        pipe.hincrbyfloat(key, "latency_ms_sum", latency_ms_sum)
        pipe.hincrbyfloat(totals, "latency_ms_sum", latency_ms_sum)
        # The maximum over processes: a compare-and-set in Redis.
        pipe.eval(
            "local cur = tonumber(redis.call('HGET', KEYS[1], 'latency_ms_max') or '0') "
            "if tonumber(ARGV[1]) > cur then "
            "redis.call('HSET', KEYS[1], 'latency_ms_max', ARGV[1]) end",
            1,
            key,
            repr(latency_ms_max),
        )
    for index, count in (histogram or {}).items():
        pipe.hincrby(key, f"h:{index}", count)
        pipe.hincrby(totals, f"h:{index}", count)
    for code, count in (codes or {}).items():
        pipe.hincrby(totals, f"code:{code}", count)
    if rejected:
        pipe.hincrby(totals, "rejected", rejected)
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


def totals(version_pks: Sequence[int]) -> dict[int, dict[str, float]]:
    """Each version's totals (only versions that have any)."""
    pipe = redis_client().pipeline(transaction=False)
    for pk in version_pks:
        pipe.hgetall(kv.metrics_totals_key(pk))
    found = {}
    for pk, raw in zip(version_pks, pipe.execute(), strict=True):
        if raw:
            found[pk] = {k.decode(): float(v) for k, v in raw.items()}
    return found


def record_replicas(version_pk: int, count: int, at: float | None = None) -> None:
    key = kv.metrics_key(version_pk, _bucket(at or time.time()))
    pipe = redis_client().pipeline(transaction=False)
    pipe.hset(key, "replicas", count)
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


def buckets(version_pk: int, start_ms: int, end_ms: int) -> list[tuple[int, dict[str, float]]]:
    """``(bucket start in seconds, its fields)`` for each bucket with data between the two
    times (milliseconds), oldest first; at most a day of buckets is read."""
    start = _bucket(start_ms / 1000)
    end = _bucket(end_ms / 1000)
    if end < start:
        return []
    start = max(start, end - RETENTION_SECONDS)
    starts = list(range(start, end + 1, BUCKET_SECONDS))
    pipe = redis_client().pipeline(transaction=False)
    for b in starts:
        pipe.hgetall(kv.metrics_key(version_pk, b))
    return [
        (b, {k.decode(): float(v) for k, v in raw.items()})
        for b, raw in zip(starts, pipe.execute(), strict=True)
        if raw
    ]


def point(start: int, data: Mapping[str, float], seconds: int = BUCKET_SECONDS) -> dict[str, Any]:
    """One metrics point (the API's shape) from a bucket's fields, or from the sum of
    several buckets' fields covering ``seconds``."""
    requests = int(data.get("requests", 0))
    return {
        "timestamp": start * 1000,
        "requests": requests,
        "requests_per_second": round(requests / seconds, 3),
        "errors": int(data.get("errors", 0)),
        "error_rate": round(data.get("errors", 0) / requests, 4) if requests else 0.0,
        "latency_ms_avg": round(data.get("latency_ms_sum", 0) / requests, 3) if requests else None,
        "latency_ms_max": data.get("latency_ms_max"),
        **percentiles_ms(histogram_fields(data)),
        "replicas": int(data["replicas"]) if "replicas" in data else None,
    }


def series(version_pk: int, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """One point per bucket with data between the two times (milliseconds), oldest first."""
    return [point(b, data) for b, data in buckets(version_pk, start_ms, end_ms)]


def window_percentiles(points_data: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Latency percentiles over several buckets: their histograms added up."""
    total = [0] * (len(LATENCY_BOUNDS) + 1)
    for data in points_data:
        for i, count in enumerate(histogram_fields(data)):
            total[i] += count
    return percentiles_ms(total)


# --- the reconcile loop ---------------------------------------------------------------------

# Upper bounds (seconds) of the reconcile pass duration histogram; one more is +Inf.
RECONCILE_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def record_reconcile_pass(seconds: float, *, failed: bool) -> None:
    """One reconcile pass of one endpoint took ``seconds`` (``failed``: it raised)."""
    index = bisect_left(RECONCILE_BOUNDS, seconds)
    pipe = redis_client().pipeline(transaction=False)
    pipe.hincrby(kv.RECONCILE_TOTALS_KEY, f"h:{index}", 1)
    pipe.hincrbyfloat(kv.RECONCILE_TOTALS_KEY, "seconds_sum", seconds)
    if failed:
        pipe.hincrby(kv.RECONCILE_TOTALS_KEY, "failures", 1)
    pipe.execute()


def reconcile_totals() -> dict[str, float]:
    raw = redis_client().hgetall(kv.RECONCILE_TOTALS_KEY)
    return {k.decode(): float(v) for k, v in raw.items()}
