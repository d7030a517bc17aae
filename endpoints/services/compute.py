"""Compute configs: a new one per target (a stage, or an alias as ``@<alias>``), rolled
out by the reconcile loop, and retrying a rollout that failed."""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from endpoints import selectors
from endpoints.errors import (
    Conflict,
    InvalidParameter,
)
from endpoints.models import (
    FRACTIONAL_FIELDS,
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    MIN_MEMORY_MB,
    OVERRIDE_FIELDS,
    OVERRIDE_RANGES,
    WORKLOAD_GPUS,
    ComputeConfig,
    EndpointVersion,
    Event,
    EventType,
    PermissionLevel,
    ServiceState,
    ServingEndpoint,
    Stage,
    WorkloadSize,
    WorkloadType,
)
from endpoints.runtime import runtime_kind
from endpoints.targets import config_target, valid_target

from .endpoints import get_endpoint_for_user, request_reconcile, user_label


def _check_target(target: str) -> str:
    """A stage, or an MLflow alias written ``@<alias>``."""
    if not valid_target(target):
        raise InvalidParameter(
            f"Invalid stage '{target}': must be one of {', '.join(Stage.values)}, "
            "or an alias as @<alias>."
        )
    return target


def _versions_of(endpoint: ServingEndpoint, target: str, **filters: object) -> list[int]:
    """Primary keys of the desired versions whose compute config is ``target``'s."""
    rows = EndpointVersion.objects.filter(endpoint=endpoint, desired=True, **filters)
    return [
        v.pk
        for v in rows.only("pk", "registry_stage", "registry_aliases")
        if config_target(v.registry_stage, v.registry_aliases) == target
    ]


def _check_workload_size(size: str) -> str:
    if size not in WorkloadSize.values:
        raise InvalidParameter(
            f"Invalid workload_size_id '{size}': must be one of {', '.join(WorkloadSize.values)}."
        )
    return size


def _check_batching(max_batch_size: int | None, max_wait_ms: int | None) -> None:
    """Batching is both settings or neither, each within its documented range."""
    if (max_batch_size is None) != (max_wait_ms is None):
        raise InvalidParameter("Batching needs both max_batch_size and max_wait_ms.")
    for name, value, (low, high) in (
        ("max_batch_size", max_batch_size, MAX_BATCH_SIZE_RANGE),
        ("max_wait_ms", max_wait_ms, MAX_WAIT_MS_RANGE),
    ):
        if value is not None and not low <= value <= high:
            raise InvalidParameter(f"Invalid {name} {value}: must be between {low} and {high}.")


def check_overrides(
    *,
    workload_type: str,
    scale_to_zero_enabled: bool,
    overrides: Mapping[str, float | None],
    max_replicas_per_version: int,
    fractional_gpus: bool,
) -> dict[str, float]:
    """The settings a config may be created with (those given), or InvalidParameter naming
    the field: each within its range, min_replicas not above max_replicas, a scale-to-zero
    delay only with scale to zero, GPUs only for a GPU type, fractions of one only where
    the runtime shares GPUs (``fractional_gpus``: Ray)."""
    if workload_type not in WorkloadType.values:
        raise InvalidParameter(
            f"Invalid workload_type '{workload_type}': must be one of "
            f"{', '.join(WorkloadType.values)}."
        )
    given = {name: overrides[name] for name in OVERRIDE_FIELDS if overrides.get(name) is not None}
    for name, value in given.items():
        _check_range(name, value)
    for name in ("min_replicas", "max_replicas"):
        if given.get(name, 0) > max_replicas_per_version:
            raise InvalidParameter(
                f"Invalid {name} {given[name]:g}: this installation runs at most "
                f"{max_replicas_per_version} replicas per version."
            )
    low, high = given.get("min_replicas"), given.get("max_replicas")
    if low is not None and high is not None and low > high:
        raise InvalidParameter(f"Invalid min_replicas {low:g}: above max_replicas {high:g}.")
    if "scale_to_zero_delay_seconds" in given and not scale_to_zero_enabled:
        raise InvalidParameter(
            "Invalid scale_to_zero_delay_seconds: it needs scale_to_zero_enabled true."
        )
    _check_gpus(workload_type, given.get("gpus"), fractional=fractional_gpus)
    return given


def _check_range(name: str, value: float) -> None:
    low, high = OVERRIDE_RANGES[name]
    if name not in FRACTIONAL_FIELDS and value != int(value):
        raise InvalidParameter(f"Invalid {name} {value:g}: must be a whole number.")
    if name == "memory_mb" and value < MIN_MEMORY_MB:
        raise InvalidParameter(
            f"Invalid memory_mb {value:g}: a replica needs at least {MIN_MEMORY_MB} MiB."
        )
    if not low <= value <= high:
        raise InvalidParameter(f"Invalid {name} {value:g}: must be between {low:g} and {high:g}.")


def _check_gpus(workload_type: str, gpus: float | None, *, fractional: bool) -> None:
    if gpus is None:
        return
    if workload_type == WorkloadType.CPU:
        raise InvalidParameter(
            "Invalid gpus: a CPU workload_type has no GPU; choose a GPU workload_type."
        )
    if gpus != int(gpus) and not fractional:
        raise InvalidParameter(
            f"Invalid gpus {gpus:g}: a fraction of a GPU needs the Ray runtime "
            "(SERVING_RUNTIME=ray); here a replica gets whole GPUs."
        )
    if gpus > 1 and gpus != int(gpus):
        raise InvalidParameter(f"Invalid gpus {gpus:g}: more than one GPU is a whole number.")


def _check_gpus_available(workload_type: str, gpus: float | None) -> None:
    """A GPU type needs GPUs this installation has (read only for GPU types: on Ray the
    question goes to the cluster)."""
    needed = gpus if gpus is not None else WORKLOAD_GPUS.get(workload_type, 0)
    if not needed:
        return
    capacity = selectors.installation_gpus()
    if capacity == 0:
        raise InvalidParameter(
            f"Invalid workload_type {workload_type}: this installation has no GPU "
            f"({selectors.gpu_source()})."
        )
    if needed > capacity:
        raise InvalidParameter(
            f"Invalid workload_type {workload_type}: a replica needs {needed:g} GPUs, "
            f"this installation has {capacity:g}."
        )


def compute_config_update(
    *,
    name: str,
    stage: str,
    workload_size: str,
    scale_to_zero_enabled: bool,
    user: AbstractBaseUser,
    max_batch_size: int | None = None,
    max_wait_ms: int | None = None,
    workload_type: str = WorkloadType.CPU,
    overrides: Mapping[str, float | None] | None = None,
) -> ComputeConfig:
    """A new compute config for ``stage`` (a stage, or an alias as ``@<alias>``); batching
    is on when both of its settings are given (the caller vouches that the model answers
    each row independently). ``overrides`` holds the limits and autoscaling settings it
    sets over its workload size's (``OVERRIDE_FIELDS``; None or absent: the size's)."""
    _check_target(stage)
    _check_workload_size(workload_size)
    _check_batching(max_batch_size, max_wait_ms)
    given = check_overrides(
        workload_type=workload_type,
        scale_to_zero_enabled=scale_to_zero_enabled,
        overrides=overrides or {},
        max_replicas_per_version=settings.SERVING["MAX_REPLICAS_PER_VERSION"],
        fractional_gpus=runtime_kind() == "ray",
    )
    # Whether the GPUs exist is asked before the transaction (on Ray, of the cluster): a
    # transaction held open meanwhile would hold the database's write lock (SQLite takes
    # it up front), and the caller may not learn about GPUs of an endpoint hidden from it.
    get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    _check_gpus_available(workload_type, given.get("gpus"))
    return _create_config(
        name=name,
        stage=stage,
        user=user,
        workload_size=workload_size,
        workload_type=workload_type,
        scale_to_zero_enabled=scale_to_zero_enabled,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        **given,
    )


@transaction.atomic
def _create_config(*, name: str, stage: str, user: AbstractBaseUser, **fields) -> ComputeConfig:
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    in_progress = _versions_of(endpoint, stage, config_update_state=ServiceState.PENDING)
    if in_progress:
        raise Conflict(
            f"A compute config update for {stage} is still rolling out; wait for it to finish."
        )
    config = ComputeConfig.objects.create(
        endpoint=endpoint, stage=stage, user_id=user_label(user), **fields
    )
    size, *extras = config.summary_parts()
    with_extras = f" with {', '.join(extras)}" if extras else ""
    Event.record(
        endpoint,
        EventType.COMPUTE_CONFIG_UPDATED,
        f"{stage} compute config set to {size}{with_extras} by {user_label(user)}.",
    )
    request_reconcile(endpoint)
    return config


@transaction.atomic
def compute_config_restart(*, name: str, stage: str, user: AbstractBaseUser) -> ServingEndpoint:
    """Retry a failed config rollout of ``stage`` (a stage, or an alias as ``@<alias>``)."""
    _check_target(stage)
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    failed = EndpointVersion.objects.filter(
        Q(config_update_state=ServiceState.FAILED) | Q(service_state=ServiceState.FAILED),
        pk__in=_versions_of(endpoint, stage),
    )
    if not failed.exists():
        raise InvalidParameter(f"Nothing failed in {stage}: there is no deployment to restart.")
    failed.update(
        config_update_state=ServiceState.RETRY_REQUESTED,
        config_update_message="Retry requested.",
        start_failures=0,
    )
    request_reconcile(endpoint)
    return endpoint
