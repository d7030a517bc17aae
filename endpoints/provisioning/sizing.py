"""Sizing one version: how many replicas it should run and which to start or stop. Pure,
like the rest of the plan (``plan.plan_version`` calls these).

- ``size``: the count from ``autoscale.decide`` (at least one before the version is READY),
  with the scale-down timer and the scaling event;
- ``scale_up`` / ``scale_down``: start the missing replicas (the first one replaces a
  crashed replica, after the restart backoff), stop the extra ones (not-ready ones
  first, then the newest);
- ``scaling``: the config's autoscaling over the size's range and the installation's
  settings;
- ``stale``: replicas that a rollout changing what a replica runs with (batching, limits,
  GPUs) must replace rather than keep.
"""

from __future__ import annotations

from endpoints.models import EventType, ServiceState

from . import autoscale
from .actions import (
    Action,
    AwaitStarted,
    FollowUp,
    RecordEvent,
    SetReplicaTarget,
    SetScaleTimer,
    StartReplica,
    StopReplica,
)
from .snapshot import ConfigView, Limits, LoadView, ReplicaView, VersionView


def size(
    version: VersionView, config: ConfigView, load: LoadView | None, now: float, limits: Limits
) -> tuple[int, list[Action]]:
    """The replica count (``autoscale.decide``) and the actions that record it."""
    current = len(version.replicas)
    if load is None:
        return max(current, 0 if version.ready else 1), []
    decision = autoscale.decide(
        current=current,
        scaling=scaling(config, limits),
        peak_in_flight=load.peak_in_flight,
        last_activity=_last_activity(version, config, load, now),
        wake=load.wake,
        low_since=load.low_since,
        now=now,
    )
    count = decision.replicas if version.ready else max(decision.replicas, 1)
    actions: list[Action] = [SetScaleTimer(version.version, decision.low_since, load.wake)]
    actions += _scaling_event(version, current, count, decision.reason, load.wake)
    return count, [*actions, SetReplicaTarget(version.version, count)]


def scaling(config: ConfigView, limits: Limits) -> autoscale.Scaling:
    """The config's autoscaling settings over its workload size's and the installation's."""
    return autoscale.resolve(
        config.workload_size,
        config.scale_to_zero,
        per_replica=config.target_concurrency or limits.replica_concurrency,
        max_replicas=limits.max_replicas_per_version,
        min_wanted=config.min_replicas,
        max_wanted=config.max_replicas,
        scale_down_after=_or(config.scale_down_after, limits.scale_down_after),
        scale_to_zero_after=_or(config.scale_to_zero_after, limits.scale_to_zero_after),
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _last_activity(version: VersionView, config: ConfigView, load: LoadView, now: float) -> float:
    activity = [load.last_request_at, config.created_at]
    if version.ready_at is not None:
        activity.append(version.ready_at)
    activity += [r.started_at for r in version.replicas if r.started_at is not None]
    if not version.ready or any(not r.running for r in version.replicas):
        activity.append(now)  # never scale to zero something still coming up
    return max(activity)


def _scaling_event(
    version: VersionView, current: int, count: int, reason: str, wake: bool
) -> list[Action]:
    if count == current or not version.ready:
        return []
    if version.replacing and count == current + 1:
        return []  # replacing a failed replica, not scaling
    because = f" ({reason})" if reason else ""
    if count == 0:
        kind, text = EventType.SCALED_TO_ZERO, f"Scaled to zero{because}."
    elif current == 0 and wake:
        kind, text = EventType.WOKEN_FROM_ZERO, "Starting a replica: a request is waiting."
    elif count > current:
        kind, text = EventType.SCALED_UP, f"Scaling up from {current} to {count} replicas{because}."
    else:
        kind = EventType.SCALED_DOWN
        text = f"Scaling down from {current} to {count} replicas{because}."
    return [RecordEvent(kind, text, version=version.version)]


def scale_up(version: VersionView, count: int, limits: Limits, now: float) -> list[Action]:
    missing = count - len(version.replicas)
    if missing <= 0:
        return []
    # The first new replica is the one that replaces a crashed replica: it waits out the
    # restart backoff (a follow-up pass starts it).
    wait = 0.0
    if version.replacing and version.crashed_at is not None:
        wait = limits.restart_delay(version.replacing) - (now - version.crashed_at)
    starts: list[Action] = [
        StartReplica(version.version, version.replacing if i == 0 else 0)
        for i in range(1 if wait > 0 else 0, missing)
    ]
    if wait > 0:
        starts.append(FollowUp(wait))
    if any(isinstance(a, StartReplica) for a in starts) and limits.start_wait > 0:
        starts.append(AwaitStarted(limits.start_wait))
    return starts


def scale_down(version: VersionView, count: int) -> list[Action]:
    extra = len(version.replicas) - count
    if extra <= 0:
        return []
    # Not-yet-ready ones first, then the newest.
    order = sorted(version.replicas, key=lambda r: (r.running, -r.created_at))
    return [StopReplica(r.replica_id, "Scaled down.") for r in order[:extra]]


def stale(version: VersionView) -> list[ReplicaView]:
    """Replicas started before a rollout that changes what a replica itself runs with
    (batching, its limits or GPUs): how many run (the size's range, scale to zero,
    autoscaling) changes without replacing any, but these must be replaced."""
    target, serving = version.target_config, version.service_config
    if version.config_update_state != ServiceState.PENDING or target is None or serving is None:
        return []
    if not replaces_replicas(target, serving):
        return []
    return [r for r in version.replicas if r.created_at < target.created_at]


def replaces_replicas(target: ConfigView, serving: ConfigView | None) -> bool:
    """Whether rolling out ``target`` over ``serving`` starts new replicas."""
    if serving is None:
        return False
    return (target.batching, target.replica_limits) != (serving.batching, serving.replica_limits)
