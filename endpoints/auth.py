"""Token and permission rules, shared by the scoring gateway, the API and the UI.

Tokens arrive as ``Authorization: Bearer <token>`` or as HTTP basic auth with the user
``token`` and the token as password (``curl -u token:$TOKEN``). Only a token's SHA-256 is
stored. Permission levels are ordered CAN_VIEW < CAN_QUERY < CAN_MANAGE; admins and an
endpoint's creator hold CAN_MANAGE.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.utils import timezone

from .errors import PermissionDenied
from .models import (
    PERMISSION_RANK,
    AccessToken,
    EndpointPermission,
    PermissionLevel,
    ServingEndpoint,
    hash_token,
)

# last_used_at is informative; writing it on every request would make every scoring call a
# database write, so it is refreshed at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Captured requests and answers (an inference table's rows and its download) are request
# data, as logs are: they are read by those who manage the endpoint. CAN_VIEW reads the
# table's settings only.
READ_CAPTURED = PermissionLevel.CAN_MANAGE
ROWS_WITHHELD = (
    "Captured requests hold request and response bodies: reading them and the download "
    "needs CAN_MANAGE on this endpoint."
)


def token_from_authorization(header: str | None) -> str | None:
    """The token in an Authorization header value, or None when there is none.

    Tokens are ASCII (URL-safe base64): any other credential is malformed, answered like
    a missing one, and never reaches a comparison that only takes ASCII text."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return value if value.isascii() else None
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if sep and user == "token" and password and password.isascii():
            return password
    return None


def active_tokens(digest: str) -> QuerySet[AccessToken]:
    """The token row (with its user) for a token's hash, if it may be used: not revoked,
    not expired, and its user still active."""
    return (
        AccessToken.objects.active()
        .select_related("user")
        .filter(token_hash=digest, user__is_active=True)
    )


def token_for(raw: str) -> AccessToken | None:
    """The active token row for a plaintext token (None when unknown, revoked or expired)."""
    token = active_tokens(hash_token(raw)).first()
    if token is not None:
        now = timezone.now()
        if last_use_due(token.last_used_at, now):
            touch_last_used([token.pk], now=now)
            token.last_used_at = now
    return token


def last_use_due(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a token's use at ``now`` is worth writing down."""
    return last_used_at is None or now - last_used_at > LAST_USED_RESOLUTION


def touch_last_used(token_pks: Collection[int], *, now: datetime | None = None) -> None:
    """Set ``last_used_at`` of these tokens, skipping those written within the resolution
    (another process may just have done it)."""
    now = now or timezone.now()
    AccessToken.objects.filter(pk__in=token_pks).exclude(
        last_used_at__gt=now - LAST_USED_RESOLUTION
    ).update(last_used_at=now)


def permission_level(
    user: AbstractBaseUser | AnonymousUser, endpoint: ServingEndpoint
) -> str | None:
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser or endpoint.creator_id == user.pk:
        return PermissionLevel.CAN_MANAGE
    row = EndpointPermission.objects.filter(endpoint=endpoint, user=user).only("level").first()
    return row.level if row else None


def level_allows(held: str | None, required: str) -> bool:
    """Whether holding ``held`` (None: nothing) grants ``required``: each level includes
    the ones below it."""
    return held is not None and PERMISSION_RANK[held] >= PERMISSION_RANK[required]


def has_permission(
    user: AbstractBaseUser | AnonymousUser, endpoint: ServingEndpoint, level: str
) -> bool:
    return level_allows(permission_level(user, endpoint), level)


def can_create_endpoint(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Enabling serving creates compute: it needs the add permission, not just a query one."""
    return bool(
        user.is_authenticated and user.is_active and user.has_perm("endpoints.add_servingendpoint")
    )


def require_admin(user: AbstractBaseUser | AnonymousUser, action: str) -> None:
    """Service principals and other users' tokens are for admins (superusers) only."""
    if not (user.is_authenticated and user.is_active and user.is_superuser):
        raise PermissionDenied(f"Only admins {action}.")
