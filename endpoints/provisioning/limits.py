"""The limits a replica starts with: its workload size's and its workload type's GPUs,
overridden by its compute config."""

from __future__ import annotations

from typing import Any

from endpoints.models import (
    LIMIT_FIELDS,
    WORKLOAD_GPUS,
    WORKLOAD_LIMITS,
    ComputeConfig,
    WorkloadSize,
    WorkloadType,
    described,
)
from endpoints.runtime.base import ReplicaLimits


def replica_limits(config: ComputeConfig | None) -> ReplicaLimits:
    """``config``'s limits; a Small CPU replica's when there is no config yet."""
    size = config.workload_size if config is not None else WorkloadSize.SMALL
    kind = config.workload_type if config is not None else WorkloadType.CPU
    values = {
        **WORKLOAD_LIMITS[size],
        "gpus": WORKLOAD_GPUS[kind],
        **(config.limit_overrides() if config else {}),
    }
    return ReplicaLimits(
        cpus=float(values["cpus"]),
        memory_mb=int(values["memory_mb"]),
        max_processes=int(values["max_processes"]),
        tmp_mb=int(values["tmp_mb"]),
        gpus=float(values["gpus"]),
    )


def view_fields(config: ComputeConfig) -> dict[str, Any]:
    """What the planner's ``ConfigView`` holds of a config's limits and autoscaling."""
    return {
        "replica_limits": replica_limits(config),
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "target_concurrency": config.target_concurrency,
        "scale_down_after": config.scale_down_delay_seconds,
        "scale_to_zero_after": config.scale_to_zero_delay_seconds,
        "summary": config.summary,
    }


def describe_limits(limits: ReplicaLimits) -> str:
    """Its non-zero limits in words: "1 CPU, 4096 MiB memory, 256 processes, …"."""
    values = [(name, getattr(limits, name)) for name in LIMIT_FIELDS]
    return ", ".join(described(name, value) for name, value in values if value)
