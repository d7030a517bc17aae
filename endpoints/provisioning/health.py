"""What to do about one replica, given what its process does: a pure function, no I/O. A
Pending replica that answers becomes Running, one that does not within the start timeout
is killed (a failed start); a Running one that fails several probes in a row is replaced;
an exited process is an Error; a Terminating one is waited for, then killed; a row without
a pid adopts its process or expires (docs/provisioning.md, "One pass").
"""

from __future__ import annotations

from endpoints.models import EventType, ReplicaState

from .actions import (
    Action,
    AdoptProcess,
    CountStartFailure,
    FollowUp,
    KillProcess,
    MarkError,
    MarkRunning,
    MarkStopped,
    NoteReplacement,
    PublishRouting,
    RecordEvent,
    SetProbeFailures,
)
from .snapshot import Health, Limits, ReplicaView


def plan_replica(
    *, replica: ReplicaView, health: Health, now: float, limits: Limits
) -> list[Action]:
    if replica.state == ReplicaState.TERMINATING:
        return _terminating(replica, health, now, limits)
    if replica.pid is None:
        return _unstarted(replica, health, now, limits)
    if not health.alive:
        return _exited(replica, now, limits, health.lost_node, health.stop_reason)
    if replica.state == ReplicaState.PENDING:
        return _starting(replica, health, now, limits)
    return _running(replica, health, limits)


def _event(type: str, replica: ReplicaView, message: str) -> RecordEvent:
    return RecordEvent(type, message, version=replica.version, replica_id=replica.replica_id)


def _terminating(replica: ReplicaView, health: Health, now: float, limits: Limits) -> list[Action]:
    actions: list[Action] = []
    if replica.pid and health.alive:
        since = replica.stopped_at if replica.stopped_at is not None else now
        if now - since < limits.terminate_grace:
            return [FollowUp()]  # still finishing its requests
        actions.append(KillProcess(replica.replica_id))
    return [
        *actions,
        MarkStopped(replica.replica_id, replica.message or "Stopped."),
        _event(EventType.REPLICA_STOPPED, replica, f"Replica {replica.replica_id} stopped."),
    ]


def _unstarted(replica: ReplicaView, health: Health, now: float, limits: Limits) -> list[Action]:
    if health.found_pid is not None:
        return [
            AdoptProcess(replica.replica_id, health.found_pid),
            FollowUp(),
            _event(
                EventType.REPLICA_ADOPTED,
                replica,
                f"Replica {replica.replica_id} (pid {health.found_pid}) adopted after a "
                "worker restart.",
            ),
        ]
    if now - replica.created_at > limits.unstarted_row_seconds:
        return [MarkError(replica.replica_id, "The replica process never started.")]
    return [FollowUp()]


def _exited(
    replica: ReplicaView, now: float, limits: Limits, lost_node: str = "", stop_reason: str = ""
) -> list[Action]:
    if lost_node:
        return _lost(replica, lost_node)
    restart = limits.next_restart(replica.restarts, now - (replica.started_at or now))
    if replica.running:
        actions: list[Action] = [PublishRouting(), NoteReplacement(replica.version, restart)]
        message, when = "The model server exited unexpectedly.", "while serving."
    else:
        actions = [CountStartFailure(replica.version)]
        message = "The model server exited while loading the model."
        when = "while loading the model."
    event = f"Replica {replica.replica_id} exited {when}"
    kind = EventType.REPLICA_CRASHED
    if stop_reason.startswith("out of memory"):
        kind = EventType.REPLICA_OUT_OF_MEMORY
    if stop_reason:  # its limits stopped it (the runtime read why): say so first
        message = f"The model server was stopped: {stop_reason}, {when}"
        event = f"Replica {replica.replica_id} was stopped: {stop_reason}, {when}"
    if replica.running:
        delay = limits.restart_delay(restart)
        event += f" A replacement starts in {delay:g} s (restart {restart} in a row)."
    # The output of a replica that never served holds no request: its last lines tell
    # CAN_VIEW readers why the model did not load. A serving replica's output may hold
    # request data a model printed, so it stays in the logs (CAN_MANAGE).
    return [
        *actions,
        MarkError(replica.replica_id, message, with_log_tail=not replica.running),
        _event(kind, replica, event),
    ]


def _lost(replica: ReplicaView, node: str) -> list[Action]:
    """A replica that went with its node: replaced on the nodes left (a lost node says
    nothing about the model, so it never counts as a failed start)."""
    message = f"Node {node} was lost; the replica is replaced on a node that is left."
    return [
        PublishRouting(),
        NoteReplacement(replica.version, replica.restarts + 1),
        MarkError(replica.replica_id, message),
        _event(
            EventType.REPLICA_CRASHED,
            replica,
            f"Replica {replica.replica_id} was lost with node {node}.",
        ),
    ]


def _starting(replica: ReplicaView, health: Health, now: float, limits: Limits) -> list[Action]:
    if health.healthy:
        return [
            MarkRunning(replica.replica_id),
            PublishRouting(),
            _event(
                EventType.REPLICA_READY,
                replica,
                f"Replica {replica.replica_id} is ready on {replica.address}.",
            ),
        ]
    age = now - replica.created_at
    if age < limits.replica_start_timeout:
        return [FollowUp(limits.starting_follow_up)]
    return [
        KillProcess(replica.replica_id),
        CountStartFailure(replica.version),
        MarkError(
            replica.replica_id,
            f"The model server did not answer its health check within {age:.0f} seconds.",
            with_log_tail=True,
        ),
        _event(
            EventType.REPLICA_UNHEALTHY,
            replica,
            f"Replica {replica.replica_id} did not become healthy in time; it was stopped.",
        ),
    ]


def _running(replica: ReplicaView, health: Health, limits: Limits) -> list[Action]:
    if health.healthy:
        return [SetProbeFailures(replica.replica_id, 0)] if replica.probe_failures else []
    failures = replica.probe_failures + 1
    if failures < limits.probe_failures_before_restart:
        return [SetProbeFailures(replica.replica_id, failures), FollowUp()]
    return [
        KillProcess(replica.replica_id),
        MarkError(
            replica.replica_id,
            f"The model server failed {failures} health checks in a row.",
        ),
        PublishRouting(),
        NoteReplacement(replica.version, replica.restarts + 1),
        _event(
            EventType.REPLICA_UNHEALTHY,
            replica,
            f"Replica {replica.replica_id} failed {failures} health checks in a row; it was "
            "stopped and will be replaced.",
        ),
    ]
