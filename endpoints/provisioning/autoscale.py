"""How many replicas a version should have: pure functions, no I/O.

A workload size is a concurrency range (Small 4-4, Medium 8-16, Large 16-64) and one
replica carries ``per_replica`` requests at once (the installation's
``REPLICA_CONCURRENCY``, 4, or the config's ``target_concurrency``), so Small is 1
replica, Medium 2-4 and Large 4-16 by default; a config's ``min_replicas`` and
``max_replicas`` replace those bounds. Inside the range the count follows the highest
number of requests in flight the gateways measured: scaling up is immediate, scaling down
waits until the load has stayed low for ``scale_down_after`` seconds, one replica at a
time, so a bursty client does not make replicas come and go. With scale to zero the
minimum is 0: after ``scale_to_zero_after`` quiet seconds the version has no replica, and
a waiting request (a *wake*) brings one back; while awake it keeps ``least`` (1 unless
the config sets ``min_replicas``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from endpoints.models import default_replicas


@dataclass(frozen=True)
class Decision:
    replicas: int
    # Unix time since when the load has wanted fewer replicas (None: it does not).
    low_since: float | None
    reason: str = ""


@dataclass(frozen=True)
class Scaling:
    """The autoscaling one version follows: its config's settings over the defaults."""

    # Replicas while the version is awake (scale to zero may still take it to 0).
    least: int
    most: int
    per_replica: int
    scale_to_zero: bool = False
    scale_down_after: float = 60.0
    scale_to_zero_after: float = 900.0

    @property
    def range(self) -> tuple[int, int]:
        return (0 if self.scale_to_zero else self.least), self.most


def resolve(
    workload_size: str,
    scale_to_zero: bool,
    *,
    per_replica: int,
    max_replicas: int,
    min_wanted: int | None = None,
    max_wanted: int | None = None,
    scale_down_after: float = 60.0,
    scale_to_zero_after: float = 900.0,
) -> Scaling:
    """The size's concurrency range in replicas of ``per_replica`` requests, at most
    ``max_replicas`` (the installation's cap), unless the config asks for its own bounds
    (``min_wanted``, ``max_wanted``). A wanted minimum above the size's maximum raises the
    maximum; a wanted maximum below the size's minimum lowers the minimum."""
    least, most = default_replicas(workload_size, per_replica=per_replica, cap=max_replicas)
    if scale_to_zero:
        least = 1
    if min_wanted is not None:
        least = min(min_wanted, max_replicas)
        most = max(most, least)
    if max_wanted is not None:
        most = min(max_wanted, max_replicas)
        least = min(least, most)
    return Scaling(
        least=max(least, 1),
        most=most,
        per_replica=per_replica,
        scale_to_zero=scale_to_zero,
        scale_down_after=scale_down_after,
        scale_to_zero_after=scale_to_zero_after,
    )


def decide(
    *,
    current: int,
    scaling: Scaling,
    peak_in_flight: int,
    last_activity: float,
    wake: bool,
    low_since: float | None,
    now: float,
) -> Decision:
    """The replica count for the next pass.

    ``last_activity`` is the newest of the last request and the moment the version
    became ready (a version nobody called yet still gets its quiet period)."""
    least, most = scaling.range
    per_replica = scaling.per_replica
    if scaling.scale_to_zero:
        if wake and current == 0:
            return Decision(1, None, "a request is waiting")
        quiet = now - last_activity
        if peak_in_flight == 0 and not wake and quiet >= scaling.scale_to_zero_after:
            return Decision(0, None, f"no request for {quiet:.0f} s")
        least = scaling.least
    wanted = min(max(math.ceil(peak_in_flight / per_replica), least), most)
    if current > most:
        return Decision(most, None, f"the maximum is {most}")
    if wanted >= current:
        by_load = math.ceil(peak_in_flight / per_replica) > current
        reason = f"{peak_in_flight} requests in flight" if by_load else f"the minimum is {least}"
        return Decision(wanted, None, reason if wanted > current else "")
    # Fewer would do: only after the load stayed low for a while, and one at a time.
    since = low_since if low_since is not None else now
    if now - since >= scaling.scale_down_after:
        return Decision(max(current - 1, least), now, f"load low for {now - since:.0f} s")
    return Decision(current, since, "")
