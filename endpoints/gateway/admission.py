"""Admission of scoring requests: each endpoint's and each version's limit in this
process, and holding a request while a version scaled to zero wakes up.

The checks are plain in-memory counters shared by the front door's event loop and the web
UI's request sender (threads); only the waiting differs, so it is split into steps each
side drives: ``request_wake``, ``fresh_target`` and ``gave_up``.
"""

from __future__ import annotations

import logging
import threading
import time

from endpoints.errors import NotFound, RateLimited, Unavailable
from endpoints.telemetry import load_reports

from .reporting import LoadTracker
from .routing import RoutingCache, Snapshot
from .routing_table import Target

log = logging.getLogger(__name__)

# While a request waits for a replica, it looks at the routing table this often (as well
# as whenever another thread rebuilt it).
HOLD_POLL_SECONDS = 0.25


class EndpointLimit:
    """Requests in flight per endpoint, so one busy endpoint cannot take all of a
    process's upstream connections and event-loop time from the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, endpoint_pk: int) -> bool:
        with self._lock:
            count = self._in_flight.get(endpoint_pk, 0)
            if count >= self.limit:
                return False
            self._in_flight[endpoint_pk] = count + 1
            return True

    def release(self, endpoint_pk: int) -> None:
        with self._lock:
            left = self._in_flight[endpoint_pk] - 1
            if left:
                self._in_flight[endpoint_pk] = left
            else:
                del self._in_flight[endpoint_pk]


class Admission:
    def __init__(
        self,
        routing: RoutingCache,
        tracker: LoadTracker,
        *,
        per_replica: int,
        per_endpoint: int,
        cold_start_timeout: float,
    ) -> None:
        self.routing = routing
        self.tracker = tracker
        # Requests one replica may have in flight or queued, from this process.
        self.per_replica = per_replica
        self.endpoints = EndpointLimit(per_endpoint)
        self.cold_start_timeout = cold_start_timeout

    def admit(self, target: Target) -> None:
        """Count one request in flight for ``target``, or raise RateLimited when its
        endpoint or its version's queue is full (a version without replicas yet queues as
        much as one with one)."""
        if not self.endpoints.acquire(target.endpoint_pk):
            self.tracker.reject(target.version_pk)
            raise RateLimited(
                f"Too many requests in flight for model '{target.model_name}'; retry shortly."
            )
        limit = max(1, len(target.replicas)) * self.per_replica
        if not self.tracker.admit(target.version_pk, limit):
            self.endpoints.release(target.endpoint_pk)
            raise RateLimited(
                f"Too many requests waiting for version {target.version} of model "
                f"'{target.model_name}'; retry shortly."
            )

    def finish(self, target: Target, status: int, latency_ms: float) -> None:
        self.endpoints.release(target.endpoint_pk)
        self.tracker.finish(target.version_pk, status, latency_ms)

    def await_replica(self, target: Target) -> Target:
        """``target`` with at least one Running replica: a version scaled to zero is woken
        and the request waits (bounded) until the routing table shows a replica."""
        if target.replicas:
            return target
        request_wake(target)
        deadline = time.monotonic() + self.cold_start_timeout
        while time.monotonic() < deadline:
            fresh = fresh_target(self.routing.wait_for_change(HOLD_POLL_SECONDS), target)
            if fresh.replicas:
                return fresh
        raise self.gave_up(target)

    def gave_up(self, target: Target) -> Unavailable:
        return Unavailable(
            f"No replica of version {target.version} of model '{target.model_name}' started "
            f"within {self.cold_start_timeout:g} seconds; retry shortly."
        )


def request_wake(target: Target) -> None:
    """Ask for a replica of a version scaled to zero (Redis; may block briefly)."""
    if not target.scale_to_zero:
        return
    try:
        load_reports.request_wake(target.version_pk, target.endpoint_pk)
    except Exception as exc:  # Redis or the broker away: the reconcile loop wakes it
        log.warning("gateway: could not request a wake-up: %s", exc)


def fresh_target(snapshot: Snapshot, target: Target) -> Target:
    """``target`` as ``snapshot`` has it; NotFound when its version is gone meanwhile."""
    fresh = snapshot.table.lookup(target)
    if fresh is None:
        raise NotFound(f"Version {target.version} of '{target.model_name}' is gone.")
    return fresh
