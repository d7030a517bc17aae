"""Compute configs: a new one per target (a stage, or an alias as ``@<alias>``), rolled
out by the reconcile loop, and retrying a rollout that failed."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from endpoints.errors import (
    Conflict,
    InvalidParameter,
)
from endpoints.models import (
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    ComputeConfig,
    EndpointVersion,
    Event,
    EventType,
    PermissionLevel,
    ServiceState,
    ServingEndpoint,
    Stage,
    WorkloadSize,
)
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


@transaction.atomic
def compute_config_update(
    *,
    name: str,
    stage: str,
    workload_size: str,
    scale_to_zero_enabled: bool,
    user: AbstractBaseUser,
    max_batch_size: int | None = None,
    max_wait_ms: int | None = None,
) -> ComputeConfig:
    """A new compute config for ``stage`` (a stage, or an alias as ``@<alias>``); batching
    is on when both of its settings are given (the caller vouches that the model answers
    each row independently)."""
    _check_target(stage)
    _check_workload_size(workload_size)
    _check_batching(max_batch_size, max_wait_ms)
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    in_progress = _versions_of(endpoint, stage, config_update_state=ServiceState.PENDING)
    if in_progress:
        raise Conflict(
            f"A compute config update for {stage} is still rolling out; wait for it to finish."
        )
    config = ComputeConfig.objects.create(
        endpoint=endpoint,
        stage=stage,
        workload_size=workload_size,
        scale_to_zero_enabled=scale_to_zero_enabled,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        user_id=user_label(user),
    )
    extras = ["scale to zero"] if scale_to_zero_enabled else []
    if config.batching_enabled:
        extras.append(f"batching up to {max_batch_size} rows / {max_wait_ms} ms")
    with_extras = f" with {' and '.join(extras)}" if extras else ""
    Event.record(
        endpoint,
        EventType.COMPUTE_CONFIG_UPDATED,
        f"{stage} compute config set to {config.workload_size}{with_extras} by {user_label(user)}.",
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
