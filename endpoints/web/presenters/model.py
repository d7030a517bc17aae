"""What every page of a model shows: its header (name, serving badge, tabs), the badge
the models list shows too, and the Details tab."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from django.contrib.auth.models import AbstractBaseUser
from django.urls import reverse

from endpoints import registry, selectors
from endpoints.auth import permission_level
from endpoints.models import (
    PermissionLevel,
    ServingEndpoint,
)

BADGES = {"PENDING": "Pending", "READY": "Ready", "FAILED": "Failed"}


def serving_url(
    name: str, *, version: str = "", tab: str = "", example: str = "", shown: str = ""
) -> str:
    """The Serving tab of model ``name`` with the given query (empty values left out)."""
    params = {"version": version, "tab": tab, "example": example, "shown": shown}
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items() if v)
    url = reverse("serving", args=[name])
    return f"{url}?{query}" if query else url


def when(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def badge(endpoint: ServingEndpoint | None, level: str | None) -> str:
    """The serving badge of a user whose permission on ``endpoint`` is ``level``."""
    if endpoint is None:
        return "Off"
    if level is None:
        return "Restricted"
    return BADGES.get(endpoint.state, "Pending")


def model_header(
    *, model: registry.RegisteredModelInfo, user: AbstractBaseUser, tab: str
) -> dict[str, Any]:
    """The header every model page shares: name, serving badge and tabs."""
    endpoint = selectors.enabled_endpoint(model.name)
    level = permission_level(user, endpoint) if endpoint else None
    return {
        "model": model,
        "model_tab": tab,
        "badge": badge(endpoint, level),
        "can_manage": level == PermissionLevel.CAN_MANAGE,
    }


def model_detail(*, model: registry.RegisteredModelInfo, user: AbstractBaseUser) -> dict[str, Any]:
    return {
        **model_header(model=model, user=user, tab="details"),
        "stages": registry.ALL_STAGES,
        "version_rows": [
            {"info": v, "created": when(v.creation_timestamp)} for v in reversed(model.versions)
        ],
    }
