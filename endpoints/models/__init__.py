"""The product's data, one Django app: desired state (what users asked for) and observed
state (what runs), written by the reconcile loop (``endpoints.provisioning``).

- ``serving``: endpoints, compute configs, versions, routing pointers, replicas;
- ``workloads``: workload sizes and types, and what a compute config may set over them;
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
    ComputeConfig,
    EndpointState,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    Stage,
    StageAlias,
    now_ms,
)
from .traffic import InferenceTable, TrafficSplit
from .workloads import (
    AUTOSCALING_FIELDS,
    FRACTIONAL_FIELDS,
    LIMIT_FIELDS,
    MIN_MEMORY_MB,
    OVERRIDE_FIELDS,
    OVERRIDE_RANGES,
    WORKLOAD_CONCURRENCY,
    WORKLOAD_GPUS,
    WORKLOAD_LIMITS,
    WorkloadSize,
    WorkloadType,
    default_replicas,
    described,
)

__all__ = [
    "AUTOSCALING_FIELDS",
    "FRACTIONAL_FIELDS",
    "LIMIT_FIELDS",
    "MAX_BATCH_SIZE_RANGE",
    "MAX_WAIT_MS_RANGE",
    "MIN_MEMORY_MB",
    "OVERRIDE_FIELDS",
    "OVERRIDE_RANGES",
    "PERMISSION_RANK",
    "TOKEN_PREFIX",
    "WORKLOAD_CONCURRENCY",
    "WORKLOAD_GPUS",
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
    "WorkloadType",
    "default_replicas",
    "described",
    "hash_token",
    "now_ms",
    "unexpired",
]
