"""How many replicas a version should have: pure functions, no I/O.

A workload size is a concurrency range (Small 4-4, Medium 8-16, Large 16-64) and one
replica carries ``REPLICA_CONCURRENCY`` (4) requests at once, so Small is 1 replica,
Medium 2-4 and Large 4-16. Inside the range the count follows the highest number of
requests in flight the gateways measured: scaling up is immediate, scaling down waits
until the load has stayed low for ``scale_down_after`` seconds, one replica at a time, so
a bursty client does not make replicas come and go. With scale to zero the minimum is 0:
after ``scale_to_zero_after`` quiet seconds the version has no replica, and a waiting
request (a *wake*) brings one back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from endpoints.models import WORKLOAD_CONCURRENCY


@dataclass(frozen=True)
class Decision:
    replicas: int
    # Unix time since when the load has wanted fewer replicas (None: it does not).
    low_since: float | None
    reason: str = ""


def replica_range(
    workload_size: str, scale_to_zero: bool, *, per_replica: int, max_replicas: int
) -> tuple[int, int]:
    low, high = WORKLOAD_CONCURRENCY[workload_size]
    most = max(1, min(math.ceil(high / per_replica), max_replicas))
    least = 0 if scale_to_zero else min(math.ceil(low / per_replica), most)
    return least, most


def decide(
    *,
    current: int,
    workload_size: str,
    scale_to_zero: bool,
    peak_in_flight: int,
    last_activity: float,
    wake: bool,
    low_since: float | None,
    now: float,
    per_replica: int,
    max_replicas: int,
    scale_to_zero_after: float,
    scale_down_after: float,
) -> Decision:
    """The replica count for the next pass.

    ``last_activity`` is the newest of the last request and the moment the version
    became ready (a version nobody called yet still gets its quiet period)."""
    least, most = replica_range(
        workload_size, scale_to_zero, per_replica=per_replica, max_replicas=max_replicas
    )
    if scale_to_zero:
        if wake and current == 0:
            return Decision(1, None, "a request is waiting")
        quiet = now - last_activity
        if peak_in_flight == 0 and not wake and quiet >= scale_to_zero_after:
            return Decision(0, None, f"no request for {quiet:.0f} s")
        least = max(least, 1)
    wanted = min(max(math.ceil(peak_in_flight / per_replica), least), most)
    if current > most:
        return Decision(most, None, "the workload size allows no more")
    if wanted >= current:
        by_load = math.ceil(peak_in_flight / per_replica) > current
        reason = f"{peak_in_flight} requests in flight" if by_load else "the size's minimum"
        return Decision(wanted, None, reason if wanted > current else "")
    # Fewer would do: only after the load stayed low for a while, and one at a time.
    since = low_since if low_since is not None else now
    if now - since >= scale_down_after:
        return Decision(max(current - 1, least), now, f"load low for {now - since:.0f} s")
    return Decision(current, since, "")
