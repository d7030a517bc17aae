"""What one gateway process counts and reports: requests in flight per version and per
replica, request metrics, and which tokens were used.

Requests only touch counters in memory; one background thread per process sends them on
about once a second: load reports for the autoscaler (``telemetry.load_reports``), metric
buckets (``telemetry.metrics``) and ``last_used_at`` of tokens (``endpoints.auth``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from endpoints.auth import last_use_due, touch_last_used
from endpoints.telemetry import load_reports, metrics
from endpoints.telemetry.metrics import LATENCY_BOUNDS, latency_bucket

from .routing import run_db
from .routing_table import Address

log = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 1.0
# Requests refused for limits or failed authentication are not part of the metrics.
NOT_COUNTED = frozenset({401, 403, 429})
HISTOGRAM_SIZE = len(LATENCY_BOUNDS) + 1


@dataclass
class VersionLoad:
    in_flight: int = 0
    peak: int = 0
    last_request_at: float = 0.0
    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    # For /metrics: answers by status code, the latency histogram (a count per bucket of
    # ``metrics.LATENCY_BOUNDS``, +Inf last), requests refused because the queue was full.
    # A defaultdict and a list: the cheapest increments Python has, under the lock.
    codes: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_SIZE)
    rejected: int = 0


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
    codes: dict[int, int]
    histogram: list[int]
    rejected: int


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
                entry.rejected += 1
                return False
            entry.in_flight += 1
            entry.peak = max(entry.peak, entry.in_flight)
            entry.last_request_at = time.time()
            return True

    def reject(self, version_pk: int) -> None:
        """A request for the version was refused before admission (its endpoint's limit)."""
        with self._lock:
            entry = self._versions.get(version_pk)
            if entry is None:
                entry = self._versions[version_pk] = VersionLoad()
            entry.rejected += 1

    def finish(self, version_pk: int, status: int, latency_ms: float) -> None:
        bucket = latency_bucket(latency_ms)
        with self._lock:
            entry = self._versions[version_pk]
            entry.in_flight -= 1
            entry.codes[status] += 1
            if status in NOT_COUNTED:
                return
            entry.requests += 1
            entry.errors += status >= 400
            entry.latency_ms_sum += latency_ms
            entry.latency_ms_max = max(entry.latency_ms_max, latency_ms)
            entry.histogram[bucket] += 1

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
                        entry.codes,
                        entry.histogram,
                        entry.rejected,
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


def send_reports(tracker: LoadTracker) -> None:
    """Report each version's load for the autoscaler and add its requests to the metrics.

    One version's failing report does not stop the others'; the first failure is raised
    once all were tried (these numbers are for one interval: the next one reports anew)."""
    failure: Exception | None = None
    for report in tracker.take_reports():
        try:
            _send(report)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def _send(report: LoadReport) -> None:
    load_reports.report(
        report.version_pk,
        in_flight=report.in_flight,
        peak_in_flight=report.peak,
        last_request_at=report.last_request_at,
    )
    if report.codes or report.rejected:
        metrics.record_requests(
            report.version_pk,
            at=time.time(),
            requests=report.requests,
            errors=report.errors,
            latency_ms_sum=report.latency_ms_sum,
            latency_ms_max=report.latency_ms_max,
            histogram={i: n for i, n in enumerate(report.histogram) if n},
            codes=report.codes,
            rejected=report.rejected,
        )


def run_each(*steps: tuple[str, Callable[[], object]]) -> list[str]:
    """Run every step, whatever the others do; a failure is logged. The names of the
    steps that failed."""
    failed = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # a Redis or database hiccup is temporary
            log.warning("gateway: %s failed: %s", name, exc)
            failed.append(name)
    return failed


class TokenUse:
    """The tokens that authenticated requests, written to ``last_used_at`` by the flusher
    rather than by requests, so scoring stays free of database writes."""

    def __init__(self) -> None:
        self._used: set[int] = set()
        self._written: dict[int, datetime] = {}

    def note(self, token_pk: int) -> None:
        self._used.add(token_pk)

    def flush(self) -> None:
        used, self._used = self._used, set()
        now = timezone.now()
        # Remembered here too, so a busy token costs no query until its next write is due.
        due = [pk for pk in used if last_use_due(self._written.get(pk), now)]
        if not due:
            return
        run_db(lambda: touch_last_used(due, now=now))
        for pk in due:
            self._written[pk] = now


class Flusher:
    """The one background thread of a process that runs ``flush`` about once a second."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="gateway-flusher", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_SECONDS)
            try:
                self._flush()
            except Exception:  # keep reporting: a Redis or database hiccup is temporary
                log.exception("gateway: flushing load reports failed")
