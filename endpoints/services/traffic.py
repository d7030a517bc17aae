"""Where traffic goes: which MLflow aliases an endpoint serves, where an alias points,
traffic splits between versions, and inference tables.

The gateway follows the reconcile loop, never these writes: an alias moved here serves its
new version only once that version is READY.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from endpoints import registry
from endpoints.auth import can_create_endpoint, has_permission
from endpoints.errors import InvalidParameter, NotFound, PermissionDenied, Unavailable
from endpoints.models import (
    Event,
    EventType,
    InferenceTable,
    PermissionLevel,
    ServiceState,
    ServingEndpoint,
    TrafficSplit,
    now_ms,
)
from endpoints.targets import alias_name, is_alias, valid_alias, valid_target

from .endpoints import get_endpoint_for_user, request_reconcile, user_label
from .invalidation import invalidate_caches


def _check_alias(alias: str) -> str:
    alias = alias.removeprefix("@")
    if not valid_alias(alias):
        raise InvalidParameter(
            f"Invalid alias '{alias}': letters, digits, '_' and '-' only, at most 255 "
            "characters; 'latest' and 'v<number>' are reserved."
        )
    return alias


@transaction.atomic
def served_aliases_set(
    *, name: str, aliases: Iterable[str] | None, user: AbstractBaseUser
) -> ServingEndpoint:
    """Serve only ``aliases`` of the model (None: every alias, the default)."""
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    chosen = None if aliases is None else sorted({_check_alias(a) for a in aliases})
    endpoint.served_aliases = chosen
    endpoint.save(update_fields=["served_aliases", "updated_at"])
    which = "every alias" if chosen is None else ", ".join(f"@{a}" for a in chosen) or "no alias"
    Event.record(
        endpoint,
        EventType.SERVED_ALIASES_CHANGED,
        f"Serving {which} of the model, set by {user_label(user)}.",
    )
    request_reconcile(endpoint)
    return endpoint


def model_alias_set(
    *, name: str, alias: str, version: str | None, user: AbstractBaseUser
) -> dict[str, str]:
    """Point MLflow alias ``alias`` at ``version`` (None: delete the alias) in the registry;
    serving follows through the reconcile loop, like a stage transition. Returns the
    model's aliases as {alias: version}."""
    alias = _check_alias(alias)
    endpoint = ServingEndpoint.objects.filter(registered_model_name=name, enabled=True).first()
    if endpoint is not None:
        if not has_permission(user, endpoint, PermissionLevel.CAN_MANAGE):
            raise PermissionDenied(f"User does not have CAN_MANAGE permission on '{name}'.")
    elif not can_create_endpoint(user):
        raise PermissionDenied("Setting a model alias needs the manage permission.")
    try:
        if version is None:
            registry.delete_alias(name, alias)
        else:
            registry.set_alias(name, alias, str(version))
        aliases = registry.get_model(name).aliases
    except (registry.ModelNotFound, registry.VersionNotFound) as exc:
        raise NotFound(str(exc)) from exc
    except registry.RegistryError as exc:
        raise Unavailable(f"The model registry is unavailable: {exc}") from exc
    if endpoint is not None:
        with transaction.atomic():
            moved = f"now points at version {version}" if version is not None else "was removed"
            Event.objects.create(
                endpoint=endpoint,
                type=EventType.MODEL_ALIAS_SET,
                level="VERSION" if version is not None else "MODEL",
                message=f"Alias @{alias} {moved} (by {user_label(user)}).",
                endpoint_version_name=str(version or ""),
                alias=alias,
            )
            request_reconcile(endpoint)
    return aliases


# --- traffic splits ----------------------------------------------------------------------------


def _served_target(endpoint: ServingEndpoint, target: str) -> str:
    """``target`` if its URL answers now (it has a pointer), else an error."""
    if not valid_target(target):
        raise InvalidParameter(
            f"Invalid target '{target}': a stage (Staging, Production) or an alias as @<alias>."
        )
    if not endpoint.aliases.filter(stage=target).exists():
        raise InvalidParameter(f"{target} is not served: there is no traffic of it to split.")
    return target


def _ready_versions(endpoint: ServingEndpoint, names: Iterable[str]) -> None:
    names = set(names)
    ready = set(
        endpoint.versions.filter(version__in=names, service_state=ServiceState.READY).values_list(
            "version", flat=True
        )
    )
    if names - ready:
        missing = ", ".join(sorted(names - ready, key=lambda v: (len(v), v)))
        raise InvalidParameter(f"Only READY versions can take traffic; not ready: {missing}.")


def _check_weights(weights: Mapping[str, int]) -> dict[str, int]:
    clean = {}
    for version, weight in weights.items():
        if not str(version).isdigit():
            raise InvalidParameter(f"Invalid version '{version}'.")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise InvalidParameter(f"Invalid traffic_percentage {weight!r}: 0 to 100.")
        if weight:
            clean[str(version)] = weight
    if sum(clean.values()) != 100:
        raise InvalidParameter("The traffic percentages must add up to 100.")
    if len(clean) < 2:
        raise InvalidParameter(
            "A split needs two or more versions with traffic; to send everything to one "
            "version, promote it."
        )
    return clean


def _describe(weights: Mapping[str, int]) -> str:
    return ", ".join(f"version {v} {w} %" for v, w in sorted(weights.items(), key=lambda i: -i[1]))


def _changed(endpoint: ServingEndpoint, target: str, message: str) -> None:
    Event.record(
        endpoint,
        EventType.TRAFFIC_SPLIT_CHANGED,
        message,
        alias=alias_name(target) if is_alias(target) else "",
    )
    invalidate_caches()
    request_reconcile(endpoint)


@transaction.atomic
def traffic_split_set(
    *, name: str, target: str, weights: Mapping[str, int], user: AbstractBaseUser
) -> TrafficSplit:
    """Split ``target``'s requests between READY versions by percent (adding up to 100)."""
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    _served_target(endpoint, target)
    clean = _check_weights(weights)
    _ready_versions(endpoint, clean)
    split, _ = TrafficSplit.objects.update_or_create(
        endpoint=endpoint,
        target=target,
        defaults={"weights": clean, "user_id": user_label(user), "updated_timestamp": now_ms()},
    )
    _changed(endpoint, target, f"{target} split: {_describe(clean)}, by {user_label(user)}.")
    return split


def traffic_split_promote(
    *, name: str, target: str, version: str, user: AbstractBaseUser
) -> TrafficSplit:
    """Send all of ``target``'s requests to ``version`` at once and make it the target's
    version in the registry (the alias moves, or the version takes the stage and the
    stage's other versions are archived). The split ends once the pointer follows."""
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    _served_target(endpoint, target)
    _ready_versions(endpoint, [version])
    try:
        if is_alias(target):
            registry.set_alias(name, alias_name(target), version)
        else:
            registry.transition_stage(name, version, target, archive_existing_versions=True)
    except registry.VersionNotFound as exc:
        raise NotFound(str(exc)) from exc
    except registry.RegistryError as exc:
        raise Unavailable(f"The model registry is unavailable: {exc}") from exc
    with transaction.atomic():
        split, _ = TrafficSplit.objects.update_or_create(
            endpoint=endpoint,
            target=target,
            defaults={
                "weights": {version: 100},
                "user_id": user_label(user),
                "updated_timestamp": now_ms(),
            },
        )
        _changed(endpoint, target, f"Version {version} promoted to {target} by {user_label(user)}.")
    return split


@transaction.atomic
def traffic_split_rollback(*, name: str, target: str, user: AbstractBaseUser) -> ServingEndpoint:
    """End ``target``'s split: all of its requests go back to the version it points at."""
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    deleted, _ = TrafficSplit.objects.filter(endpoint=endpoint, target=target).delete()
    if not deleted:
        raise NotFound(f"{target} has no traffic split.")
    pointer = endpoint.aliases.filter(stage=target).select_related("version").first()
    back = f"version {pointer.version.version}" if pointer else "its version"
    _changed(endpoint, target, f"{target} split rolled back to {back} by {user_label(user)}.")
    return endpoint


# --- inference tables --------------------------------------------------------------------------


@transaction.atomic
def inference_table_update(
    *, name: str, enabled: bool, sample_rate: float = 1.0, user: AbstractBaseUser
) -> InferenceTable:
    """Turn capturing of the endpoint's requests on (``sample_rate``: the share kept, more
    than 0 and at most 1) or off. Gateways follow at once."""
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    if isinstance(sample_rate, bool) or not 0.0 < float(sample_rate) <= 1.0:
        raise InvalidParameter(f"Invalid sample_rate {sample_rate!r}: more than 0, at most 1.")
    table, _ = InferenceTable.objects.update_or_create(
        endpoint=endpoint,
        defaults={
            "enabled": enabled,
            "sample_rate": float(sample_rate),
            "user_id": user_label(user),
            "updated_timestamp": now_ms(),
        },
    )
    state = f"on, capturing {float(sample_rate):.0%} of requests" if enabled else "off"
    Event.record(
        endpoint,
        EventType.INFERENCE_TABLE_CHANGED,
        f"Inference table {state}, set by {user_label(user)}.",
    )
    invalidate_caches()
    return table
