"""The models list: a page of the registry at a time, searched by name, optionally only the
models whose serving is enabled.

The registry may hold tens of thousands of models, so nothing here reads them all: MLflow
answers one page (``PAGE_SIZE`` models, with their latest version per stage) and an opaque
token for the next one. Going back needs the tokens of the pages before, so the links
carry them (``prev``), at most ``TRAIL_LIMIT`` of them; "First page" always works.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.models import AbstractBaseUser

from endpoints import registry, selectors
from endpoints.auth import permission_level

from .presenters import badge

PAGE_SIZE = 50
TRAIL_LIMIT = 100
QUERY_MAX_LENGTH = 200


def _query_string(query: str, serving_only: bool, token: str | None, trail: list[str]) -> str:
    params: list[tuple[str, str]] = []
    if query:
        params.append(("q", query))
    if serving_only:
        params.append(("serving", "on"))
    if token:
        params.append(("page_token", token))
        params.extend(("prev", t) for t in trail[-TRAIL_LIMIT:])
    return "?" + urlencode(params) if params else "?"


def _enabled_names(query: str) -> list[str]:
    endpoints = selectors.enabled_endpoints()
    if query:
        endpoints = endpoints.filter(registered_model_name__icontains=query)
    return list(endpoints.values_list("registered_model_name", flat=True))


def _page(query: str, serving_only: bool, token: str | None) -> registry.ModelPage:
    names = _enabled_names(query) if serving_only else None
    return registry.search_models(
        name_contains=query, names=names, max_results=PAGE_SIZE, page_token=token
    )


def _rows(models: list[registry.RegisteredModelInfo], user: AbstractBaseUser) -> list[dict]:
    on_page = [m.name for m in models]
    endpoints = {
        e.registered_model_name: e
        for e in selectors.enabled_endpoints().filter(registered_model_name__in=on_page)
    }
    rows = []
    for model in models:
        endpoint = endpoints.get(model.name)
        level = permission_level(user, endpoint) if endpoint else None
        rows.append({"model": model, "badge": badge(endpoint, level)})
    return rows


def models_list(
    *,
    user: AbstractBaseUser,
    query: str = "",
    serving_only: bool = False,
    page_token: str | None = None,
    trail: list[str] | None = None,
) -> dict[str, Any]:
    """One page of the models list with its search, filter and paging links.

    ``trail`` holds the tokens of the pages before this one ("" for the first), oldest
    first. A token MLflow no longer accepts starts again at the first page."""
    query = query.strip()[:QUERY_MAX_LENGTH]
    trail = list(trail or [])
    try:
        page = _page(query, serving_only, page_token)
    except registry.InvalidPageToken:
        page_token, trail = None, []
        page = _page(query, serving_only, None)
    if not page_token:
        trail = []
    previous = None
    if page_token:
        previous = _query_string(query, serving_only, trail[-1] if trail else None, trail[:-1])
    following = None
    if page.next_page_token:
        following = _query_string(
            query, serving_only, page.next_page_token, [*trail, page_token or ""]
        )
    return {
        "rows": _rows(page.models, user),
        "query": query,
        "serving_only": serving_only,
        "previous_url": previous,
        "next_url": following,
        "first_url": _query_string(query, serving_only, None, []) if page_token else None,
        "filtered": bool(query or serving_only),
        "clear_url": "?",
    }
