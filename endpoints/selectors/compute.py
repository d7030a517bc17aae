"""Compute configs, workload sizes and types as the API answers them, a target's shape,
and the GPUs this installation has."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from endpoints.errors import Unavailable
from endpoints.models import (
    WORKLOAD_CONCURRENCY,
    WORKLOAD_GPUS,
    WORKLOAD_LIMITS,
    ComputeConfig,
    ServingEndpoint,
    WorkloadType,
    default_replicas,
)
from endpoints.runtime import gpu_capacity, runtime_kind
from endpoints.targets import ALIAS_PREFIX, alias_name, is_alias


def target_json(target: str) -> dict[str, str]:
    """``{"stage": …}`` or, for an MLflow alias, ``{"alias": …}``."""
    return {"alias": alias_name(target)} if is_alias(target) else {"stage": target}


def workload_spec_json(config: ComputeConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workload_size_id": config.workload_size,
        "scale_to_zero_enabled": config.scale_to_zero_enabled,
    }
    # Present only when on (or set), so the shape of a config without them is unchanged.
    if config.batching_enabled:
        spec["batching"] = {
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        }
    if config.workload_type != WorkloadType.CPU:
        spec["workload_type"] = config.workload_type
    return {**spec, **config.limit_overrides(), **config.autoscaling_overrides()}


def compute_config_json(config: ComputeConfig | None) -> dict[str, Any] | None:
    """A stage's config names its ``stage``; an MLflow alias's names its ``alias``."""
    if config is None:
        return None
    return {
        **target_json(config.stage),
        "creation_timestamp": config.creation_timestamp,
        "user_id": config.user_id,
        "workload_spec": workload_spec_json(config),
    }


def alias_config_targets(endpoint: ServingEndpoint) -> list[str]:
    """``@<alias>`` targets with a compute config, of the aliases the endpoint serves."""
    targets = endpoint.compute_configs.filter(stage__startswith=ALIAS_PREFIX).values_list(
        "stage", flat=True
    )
    return sorted({t for t in targets if endpoint.serves_alias(alias_name(t))})


def supported_workload_sizes() -> list[dict[str, Any]]:
    """Each size's concurrency range, the replicas that makes by default, and the limits
    of one replica."""
    per_replica = settings.SERVING["REPLICA_CONCURRENCY"]
    cap = settings.SERVING["MAX_REPLICAS_PER_VERSION"]
    sizes = []
    for size, (low, high) in WORKLOAD_CONCURRENCY.items():
        least, most = default_replicas(size, per_replica=per_replica, cap=cap)
        sizes.append(
            {
                "workload_size_id": size,
                "min_concurrency": low,
                "max_concurrency": high,
                "min_replicas": least,
                "max_replicas": most,
                **WORKLOAD_LIMITS[size],
            }
        )
    return sizes


def supported_workload_types() -> list[dict[str, Any]]:
    """Each workload type's GPUs per replica and whether this installation can give them."""
    capacity = installation_gpus()
    return [
        {"workload_type": kind, "gpus": gpus, "available": gpus <= capacity}
        for kind, gpus in WORKLOAD_GPUS.items()
    ]


def installation_gpus() -> float:
    """The GPUs replicas can be given: this host's devices, or the Ray cluster's."""
    try:
        return gpu_capacity()
    except (OSError, ConnectionError, RuntimeError) as exc:
        raise Unavailable(f"Could not ask the Ray cluster for its GPUs: {exc}") from exc


def gpu_source() -> str:
    """Where the GPUs are looked for, as an error message names it."""
    if runtime_kind() == "ray":
        return "the Ray cluster declares no GPU resource"
    return "no /dev/nvidia<N> device on the worker's host and no SERVING_GPU_DEVICES"
