"""The limits a replica starts with: its workload size's, overridden by its compute config."""

from __future__ import annotations

from endpoints.models import WORKLOAD_LIMITS, ComputeConfig, WorkloadSize
from endpoints.runtime.base import ReplicaLimits


def replica_limits(config: ComputeConfig | None) -> ReplicaLimits:
    """``config``'s limits; a Small replica's when there is no config yet."""
    size = config.workload_size if config is not None else WorkloadSize.SMALL
    values = {**WORKLOAD_LIMITS[size], **(config.limit_overrides() if config else {})}
    return ReplicaLimits(
        cpus=float(values["cpus"]),
        memory_mb=int(values["memory_mb"]),
        max_processes=int(values["max_processes"]),
        tmp_mb=int(values["tmp_mb"]),
    )
