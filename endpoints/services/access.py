"""Who may call: access tokens (created, revoked), service principals and their tokens,
per-endpoint permissions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from endpoints import selectors
from endpoints.auth import has_permission, require_admin
from endpoints.errors import (
    AlreadyExists,
    InvalidParameter,
    NotFound,
    PermissionDenied,
)
from endpoints.models import (
    AccessToken,
    EndpointPermission,
    Event,
    EventType,
    PermissionLevel,
    ServicePrincipal,
    ServingEndpoint,
    hash_token,
)

from .endpoints import get_endpoint_for_user, user_label
from .invalidation import invalidate_caches


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
        # (``services.invalidation``), as any other write of a revocation does.
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
