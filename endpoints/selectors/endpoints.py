"""Endpoints, their versions, replicas, events and metrics as the API answers them."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from endpoints.auth import has_permission
from endpoints.errors import NotFound, Unavailable
from endpoints.models import (
    EndpointVersion,
    Event,
    PermissionLevel,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    Stage,
)
from endpoints.targets import is_alias
from endpoints.telemetry import metrics

from .compute import alias_config_targets, compute_config_json
from .traffic import traffic_splits_json

# The window get-version-metrics covers when the caller names no start.
DEFAULT_METRICS_WINDOW_MS = 3600 * 1000


def endpoint_status_json(endpoint: ServingEndpoint) -> dict[str, Any]:
    targets = [*Stage.values, *alias_config_targets(endpoint)]
    configs = [endpoint.current_compute_config(target) for target in targets]
    data = {
        "registered_model_name": endpoint.registered_model_name,
        "state": endpoint.state,
        "state_message": endpoint.state_message,
        "compute_config": [compute_config_json(c) for c in configs if c is not None],
    }
    # Present only when the endpoint serves some aliases rather than all of them (the
    # default), or splits some traffic, so the default shape is unchanged.
    if endpoint.served_aliases is not None:
        data["served_aliases"] = endpoint.served_aliases
    splits = traffic_splits_json(endpoint)
    if splits:
        data["traffic_splits"] = splits
    return data


def version_status_json(version: EndpointVersion) -> dict[str, Any]:
    # ``config`` is always present, null until the version has a config of that kind, so
    # clients read one shape whatever the state.
    data = {
        "registered_model_name": version.endpoint.registered_model_name,
        "endpoint_version_name": version.version,
        "service_status": {
            "state": version.service_state,
            "message": version.service_message,
            "config": compute_config_json(version.service_config)
            if version.service_config_id
            else None,
        },
        "config_update_status": {
            "state": version.config_update_state,
            "message": version.config_update_message,
            "config": compute_config_json(version.target_config)
            if version.target_config_id
            else None,
        },
    }
    if version.registry_aliases:
        data["aliases"] = sorted(version.registry_aliases)
    return data


def deployed_versions(endpoint: ServingEndpoint) -> QuerySet[EndpointVersion]:
    """Versions with a deployment: serving, being brought up, or retired and still draining.

    Not the registry's view (which versions *should* serve): a version counts here once the
    worker has started deploying it."""
    return (
        endpoint.versions.exclude(service_state=ServiceState.UNKNOWN)
        .select_related("endpoint", "service_config", "target_config")
        .order_by("-created_at")
    )


def endpoint_version(
    endpoint: ServingEndpoint, name: str, *, deployed_only: bool = False
) -> EndpointVersion:
    """A version of ``endpoint``: any it ever had, or only a deployed one (``deployed_only``)."""
    versions = deployed_versions(endpoint) if deployed_only else endpoint.versions.all()
    version = versions.filter(version=name).first()
    if version is None:
        raise NotFound(
            f"Endpoint version '{name}' of registered model "
            f"'{endpoint.registered_model_name}' does not exist."
        )
    return version


def enabled_endpoints() -> QuerySet[ServingEndpoint]:
    """Every endpoint with serving on, whoever asks: callers check each one's permission."""
    return ServingEndpoint.objects.filter(enabled=True)


def enabled_endpoint(name: str) -> ServingEndpoint | None:
    """The endpoint of model ``name`` if serving is on, whoever asks."""
    return enabled_endpoints().filter(registered_model_name=name).first()


def endpoints_visible_to(user: AbstractBaseUser) -> list[ServingEndpoint]:
    endpoints = enabled_endpoints().select_related("creator")
    return [e for e in endpoints if has_permission(user, e, PermissionLevel.CAN_VIEW)]


def aliases_json(endpoint: ServingEndpoint) -> list[dict[str, str]]:
    """What each stage URL and each served MLflow alias (``@<alias>``) answers with:
    stages first, then aliases by name."""
    rows = sorted(
        endpoint.aliases.select_related("version"),
        key=lambda a: (is_alias(a.stage), a.stage),
    )
    return [{"alias": a.stage, "endpoint_version_name": a.version.version} for a in rows]


def sidebar_label(version: EndpointVersion) -> str:
    """The one status word of a version in the UI's version list."""
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
        "node": replica.node,
        "restarts": replica.restarts,
        "creation_timestamp": int(replica.created_at.timestamp() * 1000),
        # The GPUs it was given on the local runtime (absent: none, or placed by Ray).
        **(
            {"gpu_devices": [int(d) for d in replica.gpu_devices.split(",")]}
            if replica.gpu_devices
            else {}
        ),
    }


def live_replicas(version: EndpointVersion) -> QuerySet[Replica]:
    return version.replicas.filter(state__in=[ReplicaState.PENDING, ReplicaState.RUNNING])


def version_replica(version: EndpointVersion, replica_id: str) -> Replica:
    replica = version.replicas.filter(replica_id=replica_id).first()
    if replica is None:
        raise NotFound(f"Replica '{replica_id}' of version {version.version} does not exist.")
    return replica


def endpoint_events(
    endpoint: ServingEndpoint,
    *,
    limit: int,
    version_name: str = "",
    start_timestamp: int | None = None,
) -> QuerySet[Event]:
    """Newest first; only one version's when ``version_name`` is given."""
    events = endpoint.events.all()
    if version_name:
        events = events.filter(endpoint_version_name=version_name)
    if start_timestamp is not None:
        events = events.filter(timestamp__gte=start_timestamp)
    return events[:limit]


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
    if event.alias:
        data["alias"] = event.alias
    if event.replica_id:
        data["replica_id"] = event.replica_id
    return data


def version_metrics(
    version: EndpointVersion, *, start_timestamp: int | None, end_timestamp: int | None
) -> dict[str, Any]:
    """Metric points between the timestamps (ms; by default the hour up to now) and the
    window's latency percentiles, from the buckets' histograms added up."""
    end = int(time.time() * 1000) if end_timestamp is None else end_timestamp
    start = max(0, end - DEFAULT_METRICS_WINDOW_MS) if start_timestamp is None else start_timestamp
    try:
        found = metrics.buckets(version.pk, start, end)
    except redis.RedisError as exc:
        raise Unavailable(f"Metrics are unavailable: {exc}") from exc
    return {
        "metrics": [metrics.point(b, data) for b, data in found],
        **metrics.window_percentiles([data for _, data in found]),
    }
