"""Serving on and off for a registered model, and stage transitions; the endpoint a user
may act on, which every other service asks for."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from endpoints import registry, triggers
from endpoints.auth import can_create_endpoint, has_permission
from endpoints.errors import (
    AlreadyExists,
    InvalidParameter,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from endpoints.models import (
    ComputeConfig,
    Event,
    EventType,
    PermissionLevel,
    ServingEndpoint,
    Stage,
)

from .invalidation import invalidate_caches


def request_reconcile(endpoint: ServingEndpoint) -> None:
    """Ask a worker to reconcile this endpoint right after the transaction commits."""
    triggers.reconcile_on_commit(endpoint.pk)


def user_label(user: AbstractBaseUser | None) -> str:
    if user is None:
        return ""
    return getattr(user, "email", "") or user.get_username()


def _registered_model(name: str) -> registry.RegisteredModelInfo:
    if not name:
        raise InvalidParameter("Missing value for required parameter 'registered_model_name'.")
    try:
        return registry.get_model(name)
    except registry.ModelNotFound as exc:
        raise NotFound(str(exc)) from exc
    except registry.RegistryError as exc:
        raise Unavailable(f"The model registry is unavailable: {exc}") from exc


def get_endpoint_for_user(
    name: str, user: AbstractBaseUser, level: str = PermissionLevel.CAN_VIEW
) -> ServingEndpoint:
    """The enabled endpoint ``name`` if ``user`` holds ``level`` on it.

    An endpoint the user may not even view is reported as missing, so names of other
    users' endpoints do not leak."""
    if not name:
        raise InvalidParameter("Missing value for required parameter 'registered_model_name'.")
    endpoint = ServingEndpoint.objects.filter(registered_model_name=name, enabled=True).first()
    if endpoint is None or not has_permission(user, endpoint, PermissionLevel.CAN_VIEW):
        raise NotFound(f"Serving is not enabled for registered model '{name}'.")
    if not has_permission(user, endpoint, level):
        raise PermissionDenied(f"User does not have {level} permission on endpoint '{name}'.")
    return endpoint


@transaction.atomic
def endpoint_enable(*, name: str, user: AbstractBaseUser) -> ServingEndpoint:
    if not can_create_endpoint(user):
        raise PermissionDenied(
            "Enabling serving creates compute: it needs the permission to create endpoints."
        )
    _registered_model(name)
    endpoint, created = ServingEndpoint.objects.select_for_update().get_or_create(
        registered_model_name=name, defaults={"creator": user, "enabled": True}
    )
    if not created:
        if endpoint.enabled:
            raise AlreadyExists(f"Serving is already enabled for registered model '{name}'.")
        endpoint.enabled = True
        endpoint.creator = endpoint.creator or user
    endpoint.state = "PENDING"
    endpoint.state_message = "Serving is being enabled."
    endpoint.save()
    for stage in Stage.values:
        if endpoint.current_compute_config(stage) is None:
            ComputeConfig.objects.create(endpoint=endpoint, stage=stage, user_id=user_label(user))
    Event.record(endpoint, EventType.ENDPOINT_ENABLED, f"Serving enabled by {user_label(user)}.")
    request_reconcile(endpoint)
    return endpoint


@transaction.atomic
def endpoint_disable(*, name: str, user: AbstractBaseUser) -> ServingEndpoint:
    endpoint = get_endpoint_for_user(name, user, PermissionLevel.CAN_MANAGE)
    endpoint.enabled = False
    endpoint.state = "PENDING"
    endpoint.state_message = "Serving is being disabled."
    endpoint.save()
    Event.record(endpoint, EventType.ENDPOINT_DISABLED, f"Serving disabled by {user_label(user)}.")
    invalidate_caches()
    request_reconcile(endpoint)
    return endpoint


def model_version_transition(
    *,
    name: str,
    version: str,
    stage: str,
    archive_existing_versions: bool,
    user: AbstractBaseUser,
    comment: str = "",
) -> registry.ModelVersionInfo:
    """Move a version to a registry stage; serving follows through the reconcile loop."""
    if stage not in registry.ALL_STAGES:
        raise InvalidParameter(
            f"Invalid stage '{stage}': must be one of {', '.join(registry.ALL_STAGES)}."
        )
    _registered_model(name)
    endpoint = ServingEndpoint.objects.filter(registered_model_name=name, enabled=True).first()
    if endpoint is not None:
        if not has_permission(user, endpoint, PermissionLevel.CAN_MANAGE):
            raise PermissionDenied(f"User does not have CAN_MANAGE permission on '{name}'.")
    elif not can_create_endpoint(user):
        raise PermissionDenied("Transitioning a model version needs the manage permission.")
    # Archiving the stage's other versions only means something for an active stage; MLflow
    # refuses the flag otherwise, so it is ignored for None and Archived.
    archive = archive_existing_versions and stage in registry.SERVED_STAGES
    try:
        info = registry.transition_stage(name, version, stage, archive_existing_versions=archive)
    except registry.VersionNotFound as exc:
        raise NotFound(str(exc)) from exc
    except registry.RegistryError as exc:
        raise InvalidParameter(str(exc)) from exc
    if endpoint is not None:
        with transaction.atomic():
            note = f" ({comment})" if comment else ""
            Event.objects.create(
                endpoint=endpoint,
                type=EventType.VERSION_STAGE_CHANGED,
                level="VERSION",
                message=f"Version {version} moved to {stage} by {user_label(user)}{note}.",
                endpoint_version_name=str(version),
                stage=stage if stage in Stage.values else "",
            )
            request_reconcile(endpoint)
    return info
