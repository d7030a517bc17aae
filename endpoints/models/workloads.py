"""Workload sizes and types: what one replica of each may use (CPUs, memory, processes,
tmpfs, GPUs), the concurrency range autoscaling works in, and what a compute config may set
over them (docs/provisioning.md has the tables)."""

from __future__ import annotations

import math

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class WorkloadSize(models.TextChoices):
    SMALL = "Small"
    MEDIUM = "Medium"
    LARGE = "Large"


# Concurrency (min, max) per workload size: Small 4/4, Medium 8/16, Large 16/64 requests.
# One replica carries a concurrency of settings.SERVING["REPLICA_CONCURRENCY"] (4).
WORKLOAD_CONCURRENCY: dict[str, tuple[int, int]] = {
    WorkloadSize.SMALL: (4, 4),
    WorkloadSize.MEDIUM: (8, 16),
    WorkloadSize.LARGE: (16, 64),
}


def default_replicas(workload_size: str, *, per_replica: int, cap: int) -> tuple[int, int]:
    """A size's (min, max) replicas: its concurrency range over ``per_replica`` requests
    each, at most ``cap`` (the installation's most replicas per version)."""
    low, high = WORKLOAD_CONCURRENCY[workload_size]
    most = max(1, min(math.ceil(high / per_replica), cap))
    return min(math.ceil(low / per_replica), most), most


# What one replica of each workload size may use: CPUs, memory (MiB), processes and the
# size of each tmpfs it gets (MiB). A compute config may override each (docs/provisioning.md).
WORKLOAD_LIMITS: dict[str, dict[str, float]] = {
    WorkloadSize.SMALL: {"cpus": 1, "memory_mb": 4096, "max_processes": 256, "tmp_mb": 1024},
    WorkloadSize.MEDIUM: {"cpus": 2, "memory_mb": 8192, "max_processes": 512, "tmp_mb": 4096},
    WorkloadSize.LARGE: {"cpus": 4, "memory_mb": 16384, "max_processes": 1024, "tmp_mb": 16384},
}


class WorkloadType(models.TextChoices):
    """CPU replicas, or replicas with GPUs (the names the hosted product's API uses)."""

    CPU = "CPU"
    GPU_SMALL = "GPU_SMALL"
    GPU_MEDIUM = "GPU_MEDIUM"
    GPU_LARGE = "GPU_LARGE"
    MULTIGPU_MEDIUM = "MULTIGPU_MEDIUM"


# GPUs one replica of each workload type reserves; a compute config's ``gpus`` overrides it.
WORKLOAD_GPUS: dict[str, int] = {
    WorkloadType.CPU: 0,
    WorkloadType.GPU_SMALL: 1,
    WorkloadType.GPU_MEDIUM: 1,
    WorkloadType.GPU_LARGE: 1,
    WorkloadType.MULTIGPU_MEDIUM: 4,
}

# A compute config's own values over its workload size's (null: the size's): the limits of
# one replica, the GPUs it reserves, and autoscaling. The same names in the API, the
# Compute Settings form and the deployments plugin's config; each with its range.
LIMIT_FIELDS = ("cpus", "memory_mb", "max_processes", "tmp_mb", "gpus")
AUTOSCALING_FIELDS = (
    "min_replicas",
    "max_replicas",
    "target_concurrency",
    "scale_down_delay_seconds",
    "scale_to_zero_delay_seconds",
)
OVERRIDE_FIELDS = (*LIMIT_FIELDS, *AUTOSCALING_FIELDS)
# Fractions allowed (CPU time; GPUs shared on Ray); every other field is a whole number.
FRACTIONAL_FIELDS = ("cpus", "gpus")
# A replica imports MLflow, pandas and its model's libraries before it loads anything:
# below this much memory it cannot start, so a smaller limit is refused.
MIN_MEMORY_MB = 512
OVERRIDE_RANGES: dict[str, tuple[float, float]] = {
    "cpus": (0.1, 256),
    "memory_mb": (MIN_MEMORY_MB, 1024 * 1024),
    # Threads count as processes: a replica runs a few dozen of them.
    "max_processes": (32, 65536),
    "tmp_mb": (16, 1024 * 1024),
    "gpus": (0.01, 16),
    "min_replicas": (1, 1000),
    "max_replicas": (1, 1000),
    "target_concurrency": (1, 1024),
    "scale_down_delay_seconds": (0, 86400),
    "scale_to_zero_delay_seconds": (1, 7 * 86400),
}


def described(name: str, value: float) -> str:
    """One limit in words: "2 CPUs", "0.5 GPU", "8192 MiB memory"."""
    if name in FRACTIONAL_FIELDS:
        unit = name[:-1].upper()
        return f"{value:g} {unit}{'s' if value > 1 else ''}"
    units = {"memory_mb": "MiB memory", "max_processes": "processes", "tmp_mb": "MiB tmpfs"}
    return f"{value:g} {units[name]}"


def range_validators(name: str) -> list:
    low, high = OVERRIDE_RANGES[name]
    return [MinValueValidator(low), MaxValueValidator(high)]
