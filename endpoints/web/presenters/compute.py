"""The Compute Settings panel's inputs: a stage's limits per replica and autoscaling, each
showing the config's own value or, as a placeholder, what applies without one; and the
workload types with whether this installation has their GPUs."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from endpoints import selectors
from endpoints.errors import ServingError
from endpoints.models import (
    AUTOSCALING_FIELDS,
    FRACTIONAL_FIELDS,
    LIMIT_FIELDS,
    OVERRIDE_RANGES,
    WORKLOAD_GPUS,
    WORKLOAD_LIMITS,
    ComputeConfig,
    WorkloadSize,
    WorkloadType,
    default_replicas,
)

LABELS = {
    "cpus": "CPUs",
    "memory_mb": "Memory (MiB)",
    "max_processes": "Processes",
    "tmp_mb": "tmpfs (MiB)",
    "gpus": "GPUs",
    "min_replicas": "Min replicas",
    "max_replicas": "Max replicas",
    "target_concurrency": "Requests per replica",
    "scale_down_delay_seconds": "Scale-down delay (s)",
    "scale_to_zero_delay_seconds": "Scale-to-zero delay (s)",
}


def defaults(config: ComputeConfig | None) -> dict[str, float]:
    """What applies to each setting the config leaves empty: its size's and type's limits,
    its size's replicas, the installation's concurrency per replica and delays."""
    size = config.workload_size if config else WorkloadSize.SMALL
    kind = config.workload_type if config else WorkloadType.CPU
    serving = settings.SERVING
    per_replica = (config and config.target_concurrency) or serving["REPLICA_CONCURRENCY"]
    least, most = default_replicas(
        size, per_replica=per_replica, cap=serving["MAX_REPLICAS_PER_VERSION"]
    )
    return {
        **WORKLOAD_LIMITS[size],
        "gpus": WORKLOAD_GPUS[kind],
        "min_replicas": 1 if config and config.scale_to_zero_enabled else least,
        "max_replicas": most,
        "target_concurrency": serving["REPLICA_CONCURRENCY"],
        "scale_down_delay_seconds": 60,
        "scale_to_zero_delay_seconds": serving["SCALE_TO_ZERO_AFTER_SECONDS"],
    }


def settings_fields(config: ComputeConfig | None) -> dict[str, Any]:
    """The inputs of a stage's limits and autoscaling, and whether each group is opened
    (it is when the config sets one of its settings)."""
    shown = defaults(config)

    def field(name: str) -> dict[str, Any]:
        value = getattr(config, name, None) if config else None
        low, high = OVERRIDE_RANGES[name]
        return {
            "name": name,
            "label": LABELS[name],
            "value": "" if value is None else f"{value:g}",
            "default": f"{shown[name]:g}",
            "min": f"{low:g}",
            "max": f"{high:g}",
            "step": "any" if name in FRACTIONAL_FIELDS else "1",
        }

    limits = [field(name) for name in LIMIT_FIELDS]
    autoscaling = [field(name) for name in AUTOSCALING_FIELDS]
    return {
        "limits": limits,
        "autoscaling": autoscaling,
        "limits_open": any(f["value"] for f in limits),
        "autoscaling_open": any(f["value"] for f in autoscaling),
    }


def workload_types() -> dict[str, Any]:
    """The workload types to choose from; where the GPUs cannot be counted now (Ray out of
    reach), every type is offered and saving checks again."""
    try:
        return {"types": selectors.supported_workload_types(), "types_note": ""}
    except ServingError as exc:
        types = [
            {"workload_type": kind, "gpus": gpus, "available": True}
            for kind, gpus in WORKLOAD_GPUS.items()
        ]
        return {"types": types, "types_note": exc.message}
