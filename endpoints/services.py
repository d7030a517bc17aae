"""Everything that changes desired state: enable, disable, compute config, transitions,
tokens and permissions.

Views, API views, admin actions and commands all call these functions; none of them
starts a process. Each write records an Event and asks a worker to reconcile once the
transaction has committed (the periodic reconcile would get there anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from . import registry, selectors, triggers
from .auth import can_create_endpoint, has_permission, require_admin
from .errors import (
    AlreadyExists,
    Conflict,
    InvalidParameter,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from .invalidation import invalidate_caches
from .models import (
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    EndpointVersion,
    Event,
    EventType,
    PermissionLevel,
    ServicePrincipal,
    ServiceState,
    ServingEndpoint,
    Stage,
    WorkloadSize,
    hash_token,
)
from .targets import config_target, valid_target

log = logging.getLogger(__name__)

# --- helpers ------------------------------------------------------------------------------


def request_reconcile(endpoint: ServingEndpoint) -> None:
    """Ask a worker to reconcile this endpoint right after the transaction commits."""
    triggers.reconcile_on_commit(endpoint.pk)


def user_label(user: AbstractBaseUser | None) -> str:
    if user is None:
        return ""
    return getattr(user, "email", "") or user.get_username()


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


# --- endpoints ------------------------------------------------------------------------------


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


# --- tokens, principals, permissions ------------------------------------------------------


def token_create(
    *,
    user: AbstractBaseUser,
    name: str = "",
    expires_at: datetime | None = None,
    parent: AccessToken | None = None,
) -> tuple[AccessToken, str]:
    """Create a token and return it with its plaintext, which is never stored or shown again.

    ``parent`` is the token the request creating this one was authenticated with (None
    for a browser session or the command line): the new token expires no later than it
    and is revoked with it, so a leaked token cannot mint one that outlives it."""
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidParameter("The expiry must be in the future.")
    if parent is not None:
        if not parent.is_active:
            raise PermissionDenied("The token used to create this one is no longer valid.")
        if parent.expires_at is not None and (expires_at is None or expires_at > parent.expires_at):
            expires_at = parent.expires_at
    plaintext = AccessToken.generate()
    token = AccessToken.objects.create(
        user=user,
        name=name[:128],
        prefix=plaintext[:12],
        token_hash=hash_token(plaintext),
        expires_at=expires_at,
        parent=parent,
    )
    return token, plaintext


def token_expiry(*, lifetime_seconds: int | None) -> datetime | None:
    """When a token created now with this lifetime expires (None: never)."""
    if lifetime_seconds is None:
        return None
    return timezone.now() + timedelta(seconds=lifetime_seconds)


@transaction.atomic
def token_revoke(*, token_id: int, user: AbstractBaseUser) -> AccessToken:
    token = AccessToken.objects.select_for_update().filter(pk=token_id).first()
    if token is None or (token.user_id != user.pk and not user.is_superuser):
        raise NotFound(f"Token {token_id} does not exist.")
    if token.revoked_at is None:
        # Saving it revokes the tokens created with it and refreshes gateways' caches
        # (``endpoints.invalidation``), as any other write of a revocation does.
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


@transaction.atomic
def service_principal_create(
    *, username: str, display_name: str = "", by: AbstractBaseUser
) -> ServicePrincipal:
    require_admin(by, "create service principals")
    User = get_user_model()
    try:
        principal_user = User.objects.create(username=username)
    except IntegrityError as exc:
        raise AlreadyExists(f"A user named '{username}' already exists.") from exc
    principal_user.set_unusable_password()
    principal_user.save()
    return ServicePrincipal.objects.create(
        user=principal_user, display_name=display_name, created_by=by
    )


@transaction.atomic
def service_principal_token_create(
    *,
    principal: ServicePrincipal,
    by: AbstractBaseUser,
    name: str = "",
    expires_at: datetime | None = None,
    parent: AccessToken | None = None,
) -> tuple[AccessToken, str]:
    """A token for ``principal``, created by an admin; returned with its plaintext.

    Without an expiry it expires after ``SERVICE_PRINCIPAL_TOKEN_DAYS`` (0: never)."""
    require_admin(by, "manage service principals")
    if expires_at is None:
        days = int(settings.SERVING["SERVICE_PRINCIPAL_TOKEN_DAYS"])
        expires_at = timezone.now() + timedelta(days=days) if days > 0 else None
    return token_create(user=principal.user, name=name, expires_at=expires_at, parent=parent)


@transaction.atomic
def permission_set(
    *, endpoint: ServingEndpoint, user: AbstractBaseUser, level: str | None, by: AbstractBaseUser
) -> EndpointPermission | None:
    """Grant ``level`` to ``user`` on ``endpoint``; ``level=None`` removes the grant."""
    if not has_permission(by, endpoint, PermissionLevel.CAN_MANAGE):
        raise PermissionDenied("Changing permissions needs CAN_MANAGE on the endpoint.")
    if level is not None and level not in PermissionLevel.values:
        raise InvalidParameter(
            f"Invalid permission level '{level}': one of {', '.join(PermissionLevel.values)}."
        )
    # Gateways cache who may query what: they must reload once this commits.
    invalidate_caches()
    name = user.get_username()
    if level is None:
        EndpointPermission.objects.filter(endpoint=endpoint, user=user).delete()
        permission = None
        change = f"Permission of {name} removed"
    else:
        permission, _ = EndpointPermission.objects.update_or_create(
            endpoint=endpoint, user=user, defaults={"level": level}
        )
        change = f"{name} granted {level}"
    Event.record(endpoint, EventType.PERMISSIONS_CHANGED, f"{change} by {user_label(by)}.")
    return permission


@transaction.atomic
def access_control_set(
    *, name: str, entries: Iterable[tuple[str, str | None]], by: AbstractBaseUser
) -> ServingEndpoint:
    """Apply (user name, level or None) pairs to endpoint ``name``: all of them, or none."""
    endpoint = get_endpoint_for_user(name, by, PermissionLevel.CAN_MANAGE)
    for user_name, level in entries:
        permission_set(
            endpoint=endpoint, user=selectors.user_named(user_name, by=by), level=level, by=by
        )
    return endpoint
