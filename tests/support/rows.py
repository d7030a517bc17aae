"""Rows the gateway routes by, written as the reconcile loop leaves them: a version of an
endpoint (its stage's compute config, its stage alias once READY) and its RUNNING replicas."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    StageAlias,
)


def add_version(
    endpoint: ServingEndpoint,
    version: str,
    stage: str,
    *,
    state: str = ServiceState.READY,
    replicas: Iterable[tuple[str, int]] = (),
    **fields: object,
) -> EndpointVersion:
    """Version ``version`` of ``endpoint`` in ``stage``, as the reconcile loop leaves it:
    served with the stage's newest compute config (a default one if the stage has none), a
    RUNNING replica at each of ``replicas`` and, once READY, the stage's alias on it.
    ``fields`` set other columns of the version."""
    config = endpoint.current_compute_config(stage) or ComputeConfig.objects.create(
        endpoint=endpoint, stage=stage
    )
    ready = state == ServiceState.READY
    row = EndpointVersion.objects.create(
        endpoint=endpoint,
        version=version,
        registry_stage=stage,
        service_state=state,
        service_config=config,
        **{"service_message": "Ready" if ready else "Starting", **fields},
    )
    if ready:
        StageAlias.objects.update_or_create(
            endpoint=endpoint, stage=stage, defaults={"version": row}
        )
    for address in replicas:
        add_replica(row, address)
    return row


def add_replica(version: EndpointVersion, address: tuple[str, int], **fields: object) -> Replica:
    """A RUNNING replica of ``version`` at ``address`` (``fields`` set other columns)."""
    host, port = address
    return Replica.objects.create(
        version=version,
        replica_id=f"r-{uuid.uuid4().hex[:8]}",
        host=host,
        port=port,
        **{"state": ReplicaState.RUNNING, **fields},
    )


def version_on_ports(endpoint, number, stage, state=ServiceState.READY, *, ports=()):
    """Version ``number`` in ``stage`` with RUNNING replicas on loopback ``ports``."""
    addresses = [("127.0.0.1", port) for port in ports]
    return add_version(endpoint, str(number), stage, state=state, replicas=addresses)


def iris_with_two_stages(owner) -> ServingEndpoint:
    """An endpoint ``iris`` with a Production config and a Staging one that scales to zero."""
    endpoint = ServingEndpoint.objects.create(registered_model_name="iris", creator=owner)
    ComputeConfig.objects.create(endpoint=endpoint, stage="Production")
    ComputeConfig.objects.create(endpoint=endpoint, stage="Staging", scale_to_zero_enabled=True)
    return endpoint
