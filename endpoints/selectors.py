"""Reads: the JSON shapes the REST API answers with, shared by the UI, and the queries
behind them.

Reads that are restricted check the caller here, so every interface gets the same answer:
an endpoint the user may not view does not exist, service principals are for admins.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from . import inference, metrics
from .auth import READ_CAPTURED, ROWS_WITHHELD, has_permission, require_admin
from .errors import NotFound, Unavailable
from .models import (
    WORKLOAD_CONCURRENCY,
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    EndpointVersion,
    Event,
    InferenceTable,
    PermissionLevel,
    Replica,
    ReplicaState,
    ServicePrincipal,
    ServiceState,
    ServingEndpoint,
    Stage,
)
from .targets import ALIAS_PREFIX, alias_name, is_alias

# The window get-version-metrics covers when the caller names no start.
DEFAULT_METRICS_WINDOW_MS = 3600 * 1000


def workload_spec_json(config: ComputeConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workload_size_id": config.workload_size,
        "scale_to_zero_enabled": config.scale_to_zero_enabled,
    }
    # Present only when on, so the shape of a config without batching is unchanged.
    if config.batching_enabled:
        spec["batching"] = {
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        }
    return spec


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


def target_json(target: str) -> dict[str, str]:
    """``{"stage": …}`` or, for an MLflow alias, ``{"alias": …}``."""
    return {"alias": alias_name(target)} if is_alias(target) else {"stage": target}


def traffic_splits_json(endpoint: ServingEndpoint) -> list[dict[str, Any]]:
    """Each split target with its versions' shares, largest first."""
    return [
        {
            **target_json(split.target),
            "traffic": [
                {"endpoint_version_name": version, "traffic_percentage": weight}
                for version, weight in sorted(split.weights.items(), key=lambda i: (-i[1], i[0]))
            ],
            "user_id": split.user_id,
            "updated_timestamp": split.updated_timestamp,
        }
        for split in endpoint.traffic_splits.all()
    ]


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


def supported_workload_sizes() -> list[dict[str, Any]]:
    return [
        {"workload_size_id": size, "min_concurrency": low, "max_concurrency": high}
        for size, (low, high) in WORKLOAD_CONCURRENCY.items()
    ]


def endpoints_visible_to(user: AbstractBaseUser) -> list[ServingEndpoint]:
    endpoints = enabled_endpoints().select_related("creator")
    return [e for e in endpoints if has_permission(user, e, PermissionLevel.CAN_VIEW)]


def may_list_users(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Admins and staff granted ``auth.view_user`` see every account in the admin."""
    return bool(
        user.is_authenticated
        and user.is_active
        and (user.is_superuser or (user.is_staff and user.has_perm("auth.view_user")))
    )


def user_named(user_name: str, *, by: AbstractBaseUser | AnonymousUser) -> AbstractBaseUser:
    """The active user ``user_name``, to be granted a permission by ``by``.

    A caller who may not list users gets one answer for a name that does not exist and
    for one that is not an active account, so set-permissions tells them nothing about
    which accounts exist beyond the grants it makes."""
    user = get_user_model().objects.filter(username=user_name).first()
    if user is not None and user.is_active:
        return user
    if user is not None and may_list_users(by):
        raise NotFound(f"User '{user_name}' is deactivated.")
    raise NotFound(f"User '{user_name}' does not exist or is not active.")


def access_control_list_json(endpoint: ServingEndpoint) -> dict[str, Any]:
    """Who holds which level: the creator (inherited CAN_MANAGE) first, then the grants by
    user name. Admins hold CAN_MANAGE everywhere and are not listed."""
    entries = []
    if endpoint.creator is not None:
        entries.append(
            {
                "user_name": endpoint.creator.get_username(),
                "permission_level": PermissionLevel.CAN_MANAGE,
                "inherited": True,
            }
        )
    entries.extend(
        {"user_name": g.user.get_username(), "permission_level": g.level, "inherited": False}
        for g in endpoint_grants(endpoint).order_by("user__username")
    )
    return {"registered_model_name": endpoint.registered_model_name, "access_control_list": entries}


def endpoint_grants(endpoint: ServingEndpoint) -> QuerySet[EndpointPermission]:
    return EndpointPermission.objects.filter(endpoint=endpoint).select_related("user")


def active_tokens(user: AbstractBaseUser) -> QuerySet[AccessToken]:
    """Tokens that work now: neither revoked nor expired."""
    return AccessToken.objects.active().filter(user=user)


def unrevoked_tokens(user: AbstractBaseUser) -> QuerySet[AccessToken]:
    """Tokens not revoked, expired ones included: they are still worth revoking."""
    return AccessToken.objects.filter(user=user, revoked_at__isnull=True)


def service_principals(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[ServicePrincipal]:
    """Every service principal, for admins only."""
    require_admin(user, "manage service principals")
    return ServicePrincipal.objects.select_related("user", "created_by")


def service_principal_named(
    *, user: AbstractBaseUser | AnonymousUser, user_name: str
) -> ServicePrincipal:
    principal = service_principals(user=user).filter(user__username=user_name).first()
    if principal is None:
        raise NotFound(f"Service principal '{user_name}' does not exist.")
    return principal


def inference_table_json(endpoint: ServingEndpoint) -> dict[str, Any]:
    """The endpoint's inference table: whether it captures, how much, where, and how many
    requests the gateways had to leave out (null while Redis is unavailable)."""
    table = InferenceTable.objects.filter(endpoint=endpoint).first()
    name = endpoint.registered_model_name
    try:
        by_reason: dict[str, int] | None = inference.dropped_counts([name])[name]
    except redis.RedisError:
        by_reason = None
    return {
        "enabled": bool(table and table.enabled),
        "sample_rate": table.sample_rate if table else 1.0,
        "retention_days": settings.SERVING["INFERENCE_RETENTION_DAYS"],
        "location": str(inference.table_dir(name)),
        "dropped_requests": sum(by_reason.values()) if by_reason is not None else None,
        "dropped_requests_by_reason": by_reason,
    }


def inference_table_read(
    endpoint: ServingEndpoint, *, user: AbstractBaseUser | AnonymousUser, limit: int
) -> dict[str, Any]:
    """get-inference-table's answer: the settings for whoever may view the endpoint; the
    newest ``limit`` rows, newest first, and the files that could not be read, for those
    who may read captured requests only (``auth.READ_CAPTURED``)."""
    answer: dict[str, Any] = {"inference_table": inference_table_json(endpoint)}
    if not has_permission(user, endpoint, READ_CAPTURED):
        answer["message"] = ROWS_WITHHELD
        return answer
    found = inference.latest_rows(endpoint.registered_model_name, limit)
    answer["rows"] = [
        {**row, "timestamp": int(row["timestamp"].timestamp() * 1000)} for row in found.rows
    ]
    answer["unreadable_files"] = found.unreadable
    if found.unreadable:
        answer["message"] = unreadable_message(found.unreadable)
    return answer


def unreadable_message(files: list[str], shown: int = 5) -> str:
    """What to tell a reader about files of the table that were skipped."""
    count = len(files)
    names = ", ".join(files[:shown]) + (f" and {count - shown} more" if count > shown else "")
    return (
        f"{count} file{'s' if count > 1 else ''} of the inference table could not be read "
        f"and {'were' if count > 1 else 'was'} skipped (the web server's log says why): "
        f"{names}."
    )
