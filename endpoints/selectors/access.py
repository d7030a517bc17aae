"""Who may call: users to grant to, grants, tokens and service principals."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from endpoints.auth import require_admin
from endpoints.errors import NotFound
from endpoints.models import (
    AccessToken,
    EndpointPermission,
    PermissionLevel,
    ServicePrincipal,
    ServingEndpoint,
)


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
