"""What the access pages show: an endpoint's permissions, a user's tokens and the service
principals."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from endpoints import registry, selectors
from endpoints.models import (
    PermissionLevel,
    ServicePrincipal,
    ServingEndpoint,
)

from .model import model_header


def permissions(
    *,
    model: registry.RegisteredModelInfo,
    user: AbstractBaseUser,
    endpoint: ServingEndpoint,
    form: Any,
) -> dict[str, Any]:
    return {
        **model_header(model=model, user=user, tab="permissions"),
        "form": form,
        "endpoint": endpoint,
        "grants": selectors.endpoint_grants(endpoint),
        "levels": PermissionLevel.choices,
    }


def tokens(*, user: AbstractBaseUser, form: Any, created: dict | None) -> dict[str, Any]:
    return {"form": form, "created": created, "tokens": selectors.unrevoked_tokens(user)}


def principals(
    *, principals: QuerySet[ServicePrincipal], form: Any, created: dict | None
) -> dict[str, Any]:
    rows = [{"principal": p, "tokens": selectors.unrevoked_tokens(p.user)} for p in principals]
    return {"form": form, "rows": rows, "created": created}
