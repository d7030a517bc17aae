"""Token authentication and per-endpoint permission checks.

Tokens arrive as ``Authorization: Bearer <token>`` or as HTTP basic auth with the user
``token`` and the token as password (``curl -u token:$TOKEN``). Only a token's SHA-256 is
stored. Permission levels are ordered CAN_VIEW < CAN_QUERY < CAN_MANAGE; admins and an
endpoint's creator hold CAN_MANAGE.
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone
from rest_framework import authentication, exceptions

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


def token_from_authorization(header: str | None) -> str | None:
    """The token in an Authorization header value, or None when there is none."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return value
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if sep and user == "token" and password:
            return password
    return None


def token_for(raw: str) -> AccessToken | None:
    """The active token row for a plaintext token (None when unknown, revoked or expired)."""
    token = (
        AccessToken.objects.active()
        .select_related("user")
        .filter(token_hash=hash_token(raw), user__is_active=True)
        .first()
    )
    if token is not None:
        touch_last_used(token)
    return token


def touch_last_used(token: AccessToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


def permission_level(
    user: AbstractBaseUser | AnonymousUser, endpoint: ServingEndpoint
) -> str | None:
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser or endpoint.creator_id == user.pk:
        return PermissionLevel.CAN_MANAGE
    row = EndpointPermission.objects.filter(endpoint=endpoint, user=user).only("level").first()
    return row.level if row else None


def has_permission(
    user: AbstractBaseUser | AnonymousUser, endpoint: ServingEndpoint, level: str
) -> bool:
    held = permission_level(user, endpoint)
    return held is not None and PERMISSION_RANK[held] >= PERMISSION_RANK[level]


def can_create_endpoint(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Enabling serving creates compute: it needs the add permission, not just a query one."""
    return bool(
        user.is_authenticated and user.is_active and user.has_perm("endpoints.add_servingendpoint")
    )


def require_admin(user: AbstractBaseUser | AnonymousUser, action: str) -> None:
    """Service principals and other users' tokens are for admins (superusers) only."""
    if not (user.is_authenticated and user.is_active and user.is_superuser):
        raise PermissionDenied(f"Only admins {action}.")


class TokenAuthentication(authentication.BaseAuthentication):
    """DRF authentication with the same tokens as the scoring gateway."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        raw = token_from_authorization(header)
        if raw is None:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Bearer <token>' or basic auth with user "
                "'token' and the token as password."
            )
        token = token_for(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked access token.")
        return (token.user, token)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
