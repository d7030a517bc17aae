"""Reads: the exact JSON shapes of SPEC §8, shared by the REST API and the UI."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from .auth import has_permission
from .models import (
    WORKLOAD_CONCURRENCY,
    ComputeConfig,
    EndpointVersion,
    Event,
    PermissionLevel,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    Stage,
)


def workload_spec_json(config: ComputeConfig) -> dict[str, Any]:
    return {
        "workload_size_id": config.workload_size,
        "scale_to_zero_enabled": config.scale_to_zero_enabled,
    }


def compute_config_json(config: ComputeConfig | None) -> dict[str, Any] | None:
    if config is None:
        return None
    return {
        "stage": config.stage,
        "creation_timestamp": config.creation_timestamp,
        "user_id": config.user_id,
        "workload_spec": workload_spec_json(config),
    }


def endpoint_status_json(endpoint: ServingEndpoint) -> dict[str, Any]:
    configs = [endpoint.current_compute_config(stage) for stage in Stage.values]
    return {
        "registered_model_name": endpoint.registered_model_name,
        "state": endpoint.state,
        "state_message": endpoint.state_message,
        "compute_config": [compute_config_json(c) for c in configs if c is not None],
    }


def version_status_json(version: EndpointVersion) -> dict[str, Any]:
    config_update: dict[str, Any] = {
        "state": version.config_update_state,
        "message": version.config_update_message,
    }
    if version.target_config_id:
        config_update["config"] = compute_config_json(version.target_config)
    service: dict[str, Any] = {
        "state": version.service_state,
        "message": version.service_message,
    }
    if version.service_config_id:
        service["config"] = compute_config_json(version.service_config)
    return {
        "registered_model_name": version.endpoint.registered_model_name,
        "endpoint_version_name": version.version,
        "service_status": service,
        "config_update_status": config_update,
    }


def served_versions(endpoint: ServingEndpoint) -> QuerySet[EndpointVersion]:
    """Versions that serve or are being brought up (retired ones that still drain included)."""
    return (
        endpoint.versions.exclude(service_state=ServiceState.UNKNOWN)
        .select_related("endpoint", "service_config", "target_config")
        .order_by("-created_at")
    )


def aliases_json(endpoint: ServingEndpoint) -> list[dict[str, str]]:
    return [
        {"alias": a.stage, "endpoint_version_name": a.version.version}
        for a in endpoint.aliases.select_related("version").order_by("stage")
    ]


def sidebar_label(version: EndpointVersion) -> str:
    """The status word the reference UI shows in the version list."""
    if version.config_update_state == ServiceState.PENDING:
        return "Updating"
    if version.config_update_state == ServiceState.FAILED:
        return "Update Failed"
    return {
        ServiceState.READY: "Ready",
        ServiceState.PENDING: "Pending",
        ServiceState.FAILED: "Failed",
        ServiceState.RETRY_REQUESTED: "Pending",
    }.get(version.service_state, "Unknown")


def replica_json(replica: Replica) -> dict[str, Any]:
    return {
        "replica_id": replica.replica_id,
        "state": replica.state,
        "message": replica.state_message,
        "address": replica.address,
        "pid": replica.pid,
        "restarts": replica.restarts,
        "creation_timestamp": int(replica.created_at.timestamp() * 1000),
    }


def live_replicas(version: EndpointVersion) -> QuerySet[Replica]:
    return version.replicas.filter(state__in=[ReplicaState.PENDING, ReplicaState.RUNNING])


def event_json(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = {
        "timestamp": event.timestamp,
        "type": event.type,
        "level": event.level,
        "message": event.message,
    }
    if event.endpoint_version_name:
        data["endpoint_version_name"] = event.endpoint_version_name
    if event.stage:
        data["stage"] = event.stage
    if event.replica_id:
        data["replica_id"] = event.replica_id
    return data


def supported_workload_sizes() -> list[dict[str, Any]]:
    return [
        {"workload_size_id": size, "min_concurrency": low, "max_concurrency": high}
        for size, (low, high) in WORKLOAD_CONCURRENCY.items()
    ]


def endpoints_visible_to(user: AbstractBaseUser) -> list[ServingEndpoint]:
    endpoints = ServingEndpoint.objects.filter(enabled=True).select_related("creator")
    return [e for e in endpoints if has_permission(user, e, PermissionLevel.CAN_VIEW)]
