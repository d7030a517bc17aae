"""The reconcile plan's input as plain values (``provisioning.snapshot``'s views), written
by hand, and reading the actions it returns: no database, Redis, worker or process."""

from __future__ import annotations

from endpoints.models import ReplicaState, ServiceState
from endpoints.provisioning.actions import Action, RecordEvent
from endpoints.provisioning.snapshot import ConfigView, ReplicaView, VersionView

NOW = 1_000_000.0
SMALL = ConfigView(pk=1, workload_size="Small", created_at=NOW - 10_000)


def running(replica_id: str, version: str = "1", **kwargs) -> ReplicaView:
    defaults = {"created_at": NOW - 5_000, "started_at": NOW - 5_000}
    return ReplicaView(replica_id, version, state=ReplicaState.RUNNING, **(defaults | kwargs))


def starting(replica_id: str, version: str = "1", **kwargs) -> ReplicaView:
    return ReplicaView(replica_id, version, state=ReplicaState.PENDING, **kwargs)


def serving(version: str = "1", *replicas: ReplicaView, **kwargs) -> VersionView:
    """A READY version serving SMALL with the given replicas."""
    defaults = {
        "stage": "Production",
        "service_state": ServiceState.READY,
        "service_config": SMALL,
        "ready_at": NOW - 5_000,
        "replicas": replicas or (running(f"v{version}-a", version),),
    }
    return VersionView(version, **(defaults | kwargs))


def of(actions: list[Action], kind: type) -> list:
    return [action for action in actions if isinstance(action, kind)]


def event_types(actions: list[Action]) -> list[str]:
    return [action.type for action in of(actions, RecordEvent)]
