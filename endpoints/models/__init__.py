"""The product's data, one Django app: desired state (what users asked for) and observed
state (what runs), written by the reconcile loop (``endpoints.provisioning``).

- ``serving``: endpoints, compute configs, versions, routing pointers, replicas;
- ``events``: the Events tab's rows;
- ``access``: service principals, access tokens, per-endpoint permissions;
- ``traffic``: traffic splits and inference tables.
"""

from .access import (
    PERMISSION_RANK,
    TOKEN_PREFIX,
    AccessToken,
    AccessTokenQuerySet,
    EndpointPermission,
    PermissionLevel,
    ServicePrincipal,
    hash_token,
    unexpired,
)
from .events import Event, EventLevel, EventType
from .serving import (
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    WORKLOAD_CONCURRENCY,
    WORKLOAD_LIMITS,
    ComputeConfig,
    EndpointState,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    Stage,
    StageAlias,
    WorkloadSize,
    now_ms,
)
from .traffic import InferenceTable, TrafficSplit

__all__ = [
    "MAX_BATCH_SIZE_RANGE",
    "MAX_WAIT_MS_RANGE",
    "PERMISSION_RANK",
    "TOKEN_PREFIX",
    "WORKLOAD_CONCURRENCY",
    "WORKLOAD_LIMITS",
    "AccessToken",
    "AccessTokenQuerySet",
    "ComputeConfig",
    "EndpointPermission",
    "EndpointState",
    "EndpointVersion",
    "Event",
    "EventLevel",
    "EventType",
    "InferenceTable",
    "PermissionLevel",
    "Replica",
    "ReplicaState",
    "ServicePrincipal",
    "ServiceState",
    "ServingEndpoint",
    "Stage",
    "StageAlias",
    "TrafficSplit",
    "WorkloadSize",
    "hash_token",
    "now_ms",
    "unexpired",
]
