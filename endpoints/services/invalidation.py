"""Who may do what changed: every gateway drops its token and permission caches once the
write commits, whoever makes it (a service, the admin, a command, a shell). Signal
receivers on users, tokens, permissions, principals and endpoints bump the cache
generation, connected when the app is ready; writes that change no access (a login, a
token's last use, observed state) bump nothing (docs/security.md, "Revocation").
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from endpoints.kv import bump_generation
from endpoints.models import AccessToken, EndpointPermission, ServicePrincipal, ServingEndpoint

log = logging.getLogger(__name__)

# Fields whose writes never change who may do what.
_USER_NOISE = frozenset({"last_login"})
_TOKEN_NOISE = frozenset({"last_used_at"})
# An endpoint's observed state changes all the time; only these fields change access.
_ENDPOINT_ACCESS = frozenset({"creator", "enabled", "registered_model_name"})


def _bump() -> None:
    try:
        bump_generation()
    except Exception as exc:
        log.warning("could not bump the cache generation: %s", exc)


def invalidate_caches() -> None:
    """Tell gateway processes that routing, tokens or permissions changed (after commit).

    A Redis that is away is logged, not raised: gateways then re-read the database on
    their own (see ``endpoints.gateway.routing``)."""
    transaction.on_commit(_bump)


def _only(update_fields: Any, noise: frozenset[str]) -> bool:
    return update_fields is not None and set(update_fields) <= noise


def _user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if not _only(update_fields, _USER_NOISE):
        invalidate_caches()


def _token_saved(
    sender: Any, instance: AccessToken, update_fields: Any = None, **kwargs: Any
) -> None:
    if _only(update_fields, _TOKEN_NOISE):
        return
    if instance.revoked_at is not None:
        # However it was revoked (the service, the admin, a shell), its children go too.
        AccessToken.revoke_children(instance)
    invalidate_caches()


def _endpoint_saved(
    sender: Any, instance: ServingEndpoint, update_fields: Any = None, **kwargs: Any
) -> None:
    if update_fields is None or set(update_fields) & _ENDPOINT_ACCESS:
        invalidate_caches()


def _changed(sender: Any, **kwargs: Any) -> None:
    invalidate_caches()


def _m2m_changed(sender: Any, action: str, **kwargs: Any) -> None:
    if action.startswith("post_"):
        invalidate_caches()


def connect() -> None:
    """Connect the receivers (idempotent: each has a fixed ``dispatch_uid``)."""
    User = get_user_model()
    post_save.connect(_user_saved, sender=User, dispatch_uid="invalidate-user-saved")
    post_delete.connect(_changed, sender=User, dispatch_uid="invalidate-user-deleted")
    for name in ("groups", "user_permissions"):
        field = getattr(User, name, None)
        if field is not None:
            m2m_changed.connect(
                _m2m_changed, sender=field.through, dispatch_uid=f"invalidate-user-{name}"
            )
    post_save.connect(_token_saved, sender=AccessToken, dispatch_uid="invalidate-token-saved")
    post_save.connect(_endpoint_saved, sender=ServingEndpoint, dispatch_uid="invalidate-endpoint")
    for model in (AccessToken, EndpointPermission, ServicePrincipal):
        post_delete.connect(_changed, sender=model, dispatch_uid=f"invalidate-{model.__name__}-del")
    for model in (EndpointPermission, ServicePrincipal):
        post_save.connect(_changed, sender=model, dispatch_uid=f"invalidate-{model.__name__}-save")
