"""Admission of scoring requests: each version's queue limit in this process, and holding
a request while a version scaled to zero wakes up."""

from __future__ import annotations

import logging
import time

from endpoints import load
from endpoints.errors import NotFound, RateLimited, Unavailable

from .reporting import LoadTracker
from .routing import RoutingCache, Target

log = logging.getLogger(__name__)

# While a request waits for a replica, it looks at the routing table this often (as well
# as whenever another thread rebuilt it).
HOLD_POLL_SECONDS = 0.25


class Admission:
    def __init__(
        self,
        routing: RoutingCache,
        tracker: LoadTracker,
        *,
        per_replica: int,
        cold_start_timeout: float,
    ) -> None:
        self.routing = routing
        self.tracker = tracker
        # Requests one replica may have in flight or queued, from this process.
        self.per_replica = per_replica
        self.cold_start_timeout = cold_start_timeout

    def admit(self, target: Target) -> None:
        """Count one request in flight for ``target``, or raise RateLimited when its queue
        is full (a version without replicas yet queues as much as one with one)."""
        limit = max(1, len(target.replicas)) * self.per_replica
        if not self.tracker.admit(target.version_pk, limit):
            raise RateLimited(
                f"Too many requests waiting for version {target.version} of model "
                f"'{target.model_name}'; retry shortly."
            )

    def await_replica(self, target: Target) -> Target:
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
            fresh = self.routing.wait_for_change(HOLD_POLL_SECONDS).table.lookup(target)
            if fresh is None:
                raise NotFound(f"Version {target.version} of '{target.model_name}' is gone.")
            if fresh.replicas:
                return fresh
        raise Unavailable(
            f"No replica of version {target.version} of model '{target.model_name}' started "
            f"within {self.cold_start_timeout:g} seconds; retry shortly."
        )
