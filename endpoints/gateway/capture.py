"""Capturing scoring requests into inference tables, off the hot path.

A request to an endpoint whose inference table is on is sampled (its rate is in the
routing snapshot, no I/O); a sampled one costs a tuple appended to a bounded in-memory
queue. One writer thread per gateway process empties the queue every
``SERVING_CAPTURE_FLUSH_SECONDS`` into Parquet files (``endpoints.inference``) and adds
the count of requests it had to drop (queue full) to a Redis counter per endpoint. A full
queue, a slow disk or Redis being away never slows or fails a request: the row is dropped
and counted.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import defaultdict, deque
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Case, F, FloatField, Value, When
from redis.exceptions import RedisError

from endpoints import inference, kv

log = logging.getLogger(__name__)

# How often the writer reports dropped requests (and looks at the queue).
TICK_SECONDS = 0.5
# How often old partitions are removed.
PURGE_EVERY_SECONDS = 3600.0


def rate_expression() -> Case:
    """The share of an endpoint's requests to capture, as a query annotation (0: off)."""
    return Case(
        When(inference_table__enabled=True, then=F("inference_table__sample_rate")),
        default=Value(0.0),
        output_field=FloatField(),
    )


class Capture:
    """One per gateway process: the bounded queue and its writer thread."""

    def __init__(self, *, writer: bool = True) -> None:
        """``writer=False``: no writer thread; whoever holds it calls ``flush``."""
        serving = settings.SERVING
        self.capacity = int(serving["CAPTURE_QUEUE_SIZE"])
        self.flush_seconds = float(serving["CAPTURE_FLUSH_SECONDS"])
        self.retention_days = int(serving["INFERENCE_RETENTION_DAYS"])
        self._queue: deque[tuple] = deque()
        # Requests dropped since the last report, by endpoint name (and in total).
        self._dropped: dict[str, int] = defaultdict(int)
        self._dropped_lock = threading.Lock()
        self.dropped_total = 0
        self.written_total = 0
        self._thread: threading.Thread | None = None
        self._pid = 0 if writer else os.getpid()
        self._wake = threading.Event()

    def offer(
        self,
        rate: float,
        *,
        endpoint: str,
        selector: str,
        version: str,
        status: int,
        latency_ms: float,
        token_id: int,
        request: bytes,
        response: bytes,
    ) -> None:
        """Keep this request for the table if it is sampled and the queue has room;
        count it as dropped if it has not. Never raises, never blocks."""
        if rate <= 0.0 or (rate < 1.0 and random.random() >= rate):
            return
        if len(self._queue) >= self.capacity:
            self._count_dropped(endpoint, 1)
            return
        self._queue.append(
            (
                time.time(),
                endpoint,
                selector,
                version,
                status,
                latency_ms,
                token_id,
                request,
                response,
            )
        )
        if self._pid != os.getpid():
            self._start()

    # --- the writer -------------------------------------------------------------------------

    def _start(self) -> None:
        """Start this process's writer (a forked child starts its own)."""
        with _start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        last_write = time.monotonic()
        last_purge = 0.0
        while True:
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            self._report()
            now = time.monotonic()
            if now - last_write >= self.flush_seconds:
                last_write = now
                self.flush()
            if now - last_purge >= PURGE_EVERY_SECONDS:
                last_purge = now
                try:
                    inference.purge(self.retention_days)
                except OSError as exc:
                    log.warning("inference tables: could not remove old days: %s", exc)

    def flush(self) -> int:
        """Write what the queue holds now; the number of rows written."""
        batches: dict[tuple[str, object], list[tuple]] = defaultdict(list)
        taken = 0
        while self._queue:
            row = self._queue.popleft()
            ts, endpoint, selector, version, status, latency, token, request, response = row
            day = datetime.fromtimestamp(ts, UTC).date()
            batches[(endpoint, day)].append(
                (
                    ts,
                    endpoint,
                    selector,
                    version,
                    status,
                    latency,
                    token,
                    _text(request),
                    _text(response),
                )
            )
            taken += 1
        for (endpoint, day), rows in batches.items():
            try:
                inference.write_batch(endpoint, day, rows)
            except Exception as exc:  # a full disk must not stop the writer
                log.warning("inference table of %s: %d rows lost (%s)", endpoint, len(rows), exc)
                self._count_dropped(endpoint, len(rows))
                taken -= len(rows)
        self.written_total += taken
        return taken

    def _count_dropped(self, endpoint: str, count: int) -> None:
        with self._dropped_lock:
            self._dropped[endpoint] += count
            self.dropped_total += count

    def _report(self) -> None:
        if not self._dropped:
            return
        with self._dropped_lock:
            counts, self._dropped = self._dropped, defaultdict(int)
        try:
            pipe = kv.redis_client().pipeline(transaction=False)
            for endpoint, count in counts.items():
                pipe.incrby(kv.capture_dropped_key(endpoint), count)
            pipe.execute()
        except RedisError as exc:
            log.warning("inference tables: could not report dropped requests: %s", exc)
            with self._dropped_lock:
                for endpoint, count in counts.items():
                    self._dropped[endpoint] += count


_start_lock = threading.Lock()


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")
