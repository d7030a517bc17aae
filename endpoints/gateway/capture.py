"""Capturing scoring requests into inference tables, off the hot path: a sampled request
(its endpoint's rate is in the routing snapshot) joins an in-memory queue bounded in bytes,
and one writer thread per process writes the queue out as Parquet files
(``telemetry.inference_tables``) every ``SERVING_CAPTURE_FLUSH_SECONDS`` and at shutdown
(``close_all``). A request that cannot be kept never slows or fails the request: it is
counted per endpoint and reason, which ``/metrics`` exposes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter, defaultdict, deque
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Case, F, FloatField, Value, When
from redis.exceptions import RedisError

from endpoints.telemetry import inference_tables
from endpoints.telemetry.inference_tables import QUEUE_FULL, SHUTDOWN, WRITE_FAILED

log = logging.getLogger(__name__)

# How often the writer reports dropped requests (and looks at the queue).
TICK_SECONDS = 0.5
# What a queued row costs besides its two bodies: the tuple, its numbers and strings. Also
# what bounds a flood of empty requests.
ROW_OVERHEAD_BYTES = 512
# How long a stopping process waits for its writer's last write. The web server kills a
# worker GRACEFUL_SECONDS + 5 s after asking it to stop, and requests in flight may have
# taken most of that.
CLOSE_SECONDS = 4.0


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
        self.budget = int(serving["CAPTURE_QUEUE_BYTES"])
        self.flush_seconds = float(serving["CAPTURE_FLUSH_SECONDS"])
        # Rows: (size, time, endpoint, selector, version, status, latency, token, request,
        # response).
        self._queue: deque[tuple] = deque()
        self._lock = threading.Lock()
        # Bytes queued or being written: a row counts until its write is done, so the
        # budget bounds what the writer holds too.
        self._bytes = 0
        # The batches the writer has taken and not yet written, by (endpoint, day).
        self._in_hand: dict[tuple[str, object], list[tuple]] = {}
        # Requests left out since the last report, by (endpoint, reason).
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._closed = False
        self.dropped_total = 0
        self.written_total = 0
        self._thread: threading.Thread | None = None
        self._pid = 0 if writer else os.getpid()
        self._stop = threading.Event()

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
        size = len(request) + len(response) + ROW_OVERHEAD_BYTES
        with self._lock:
            if self._closed:
                self._count(endpoint, SHUTDOWN)
                return
            if self._bytes + size > self.budget:
                self._count(endpoint, QUEUE_FULL)
                return
            self._bytes += size
            self._queue.append(
                (
                    size,
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

    @property
    def queued_bytes(self) -> int:
        """What the queue and the batch being written hold, as the budget counts it."""
        return self._bytes

    # --- the writer -------------------------------------------------------------------------

    def _start(self) -> None:
        """Start this process's writer (a forked child starts its own)."""
        with _start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()
            _running.add(self)

    def _run(self) -> None:
        last_write = time.monotonic()
        while not self._stop.wait(TICK_SECONDS):
            self._report()
            if time.monotonic() - last_write >= self.flush_seconds:
                last_write = time.monotonic()
                self.flush()
        self.flush()  # the process is stopping: what is left

    def flush(self) -> int:
        """Write what the queue holds now; the number of rows written."""
        batches: dict[tuple[str, object], list[tuple]] = defaultdict(list)
        for row in self._take():
            day = datetime.fromtimestamp(row[1], UTC).date()
            batches[(row[2], day)].append(row)
        with self._lock:
            self._in_hand.update(batches)
        written = 0
        for (endpoint, day), rows in batches.items():
            try:
                inference_tables.write_batch(endpoint, day, [_columns(row) for row in rows])
            except Exception as exc:  # a full disk, a bad value: the writer must go on
                log.warning("inference table of %s: %d rows lost (%s)", endpoint, len(rows), exc)
                self._settle((endpoint, day), lost=True)
            else:
                self._settle((endpoint, day), lost=False)
                written += len(rows)
        self.written_total += written
        return written

    def _take(self) -> list[tuple]:
        rows = []
        with contextlib.suppress(IndexError):  # emptied by another thread meanwhile
            while self._queue:
                rows.append(self._queue.popleft())
        return rows

    def _settle(self, key: tuple[str, object], *, lost: bool) -> None:
        with self._lock:
            rows = self._in_hand.pop(key, [])
            self._bytes -= sum(row[0] for row in rows)
            if lost:
                self._count(key[0], WRITE_FAILED, len(rows))

    def _count(self, endpoint: str, reason: str, count: int = 1) -> None:
        """Note requests left out (the caller holds the lock)."""
        self._dropped[(endpoint, reason)] += count
        self.dropped_total += count

    def _report(self) -> bool:
        """Add the requests left out since the last report to the counts in Redis; False
        when Redis could not be told (they are kept for the next report)."""
        with self._lock:
            if not self._dropped:
                return True
            counts, self._dropped = self._dropped, Counter()
        try:
            inference_tables.add_dropped(counts)
        except RedisError as exc:
            log.warning("inference tables: could not report dropped requests: %s", exc)
            with self._lock:
                self._dropped.update(counts)
            return False
        return True

    # --- stopping ---------------------------------------------------------------------------

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """The process is stopping: write what the queue holds, and count what cannot be
        written (in ``timeout`` seconds) and whatever is offered afterwards as lost at
        shutdown. Reports the counts before returning."""
        with self._lock:
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)  # it writes what is left, then ends
        if thread is not None and thread.is_alive():  # its write hangs (a stuck disk)
            self._abandon()
        else:
            self.flush()  # left for no writer: none started here, or it ended early
        if not self._report():
            log.error(
                "inference tables: requests left out, not counted (Redis unavailable): %s",
                dict(self._dropped),
            )

    def _abandon(self) -> None:
        """Count what the queue and the writer's hands hold as lost at shutdown."""
        with self._lock:
            held = [row for rows in self._in_hand.values() for row in rows]
            held += self._take()
            for endpoint, count in Counter(row[2] for row in held).items():
                self._count(endpoint, SHUTDOWN, count)
            self._in_hand.clear()
            self._bytes = 0


def _columns(row: tuple) -> tuple:
    """A queued row as the table's columns (``inference_tables.COLUMNS``)."""
    _, ts, endpoint, selector, version, status, latency, token, request, response = row
    return (
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


def close_all(timeout: float = CLOSE_SECONDS) -> None:
    """Close every capture whose writer runs in this process (called once, as the process
    stops)."""
    for capture in list(_running):
        if capture._pid == os.getpid():
            capture.close(timeout)


_start_lock = threading.Lock()
# Captures whose writer this process started: what ``close_all`` closes.
_running: weakref.WeakSet[Capture] = weakref.WeakSet()


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")
