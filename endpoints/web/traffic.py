"""The Serving tab's Traffic panel writes: point an MLflow alias at a version, choose
which aliases the endpoint serves, split, promote and roll back a target's traffic, turn
the inference table on or off and download it. Thin: validate, call
``endpoints.services``, redirect back to the panel with a message."""

from __future__ import annotations

from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from endpoints import services
from endpoints.auth import READ_CAPTURED
from endpoints.errors import ServingError
from endpoints.models import PermissionLevel
from endpoints.telemetry import inference_tables

from . import presenters
from .forms import InferenceTableForm, ModelAliasForm, ServedAliasesForm, TrafficSplitForm
from .shortcuts import http_errors, show_error

# How many days of the inference table a download holds.
DOWNLOAD_DAYS = 7


def _back(name: str) -> HttpResponse:
    return redirect(presenters.serving_url(name, tab="traffic"))


@login_required
@require_POST
@http_errors
def alias_set(request: HttpRequest, name: str) -> HttpResponse:
    services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = ModelAliasForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Name an alias (letters, digits, '_' or '-') and a version.")
        return _back(name)
    alias, version = form.cleaned_data["alias"], form.cleaned_data["version"] or None
    try:
        services.model_alias_set(name=name, alias=alias, version=version, user=request.user)
    except ServingError as exc:
        show_error(request, exc)
    else:
        done = f"now points at version {version}" if version else "was removed"
        messages.success(request, f"@{alias} {done}: its URL follows once the version is ready.")
    return _back(name)


@login_required
@require_POST
@http_errors
def served_aliases_update(request: HttpRequest, name: str) -> HttpResponse:
    services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = ServedAliasesForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose every alias, or the aliases to serve.")
        return _back(name)
    data = form.cleaned_data
    aliases = None if data["mode"] == "all" else data["aliases"]
    try:
        services.served_aliases_set(name=name, aliases=aliases, user=request.user)
    except ServingError as exc:
        show_error(request, exc)
    else:
        messages.success(request, "Served aliases saved.")
    return _back(name)


@login_required
@require_POST
@http_errors
def traffic_split(request: HttpRequest, name: str) -> HttpResponse:
    """One form per target: save the weights, promote a version, or roll back."""
    services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = TrafficSplitForm(request.POST)
    if not form.is_valid():
        messages.error(request, form.problem())
        return _back(name)
    data = form.cleaned_data
    target, action = data["target"], data["action"]
    try:
        if action == "rollback":
            services.traffic_split_rollback(name=name, target=target, user=request.user)
            done = f"{target} is back on the version it points at."
        elif action.startswith("promote-"):
            version = action.removeprefix("promote-")
            services.traffic_split_promote(
                name=name, target=target, version=version, user=request.user
            )
            done = f"Version {version} now takes all of {target}'s traffic."
        else:
            services.traffic_split_set(
                name=name, target=target, weights=data["weights"], user=request.user
            )
            done = f"{target} traffic split saved."
    except ServingError as exc:
        show_error(request, exc)
    else:
        messages.success(request, done)
    return _back(name)


@login_required
@require_POST
@http_errors
def inference_update(request: HttpRequest, name: str) -> HttpResponse:
    services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = InferenceTableForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Sampling is a percent, more than 0 and at most 100.")
    else:
        data = form.cleaned_data
        try:
            services.inference_table_update(
                name=name,
                enabled=data["enabled"],
                sample_rate=data["sample_percent"] / 100,
                user=request.user,
            )
        except ServingError as exc:
            show_error(request, exc)
        else:
            messages.success(request, "Inference table settings saved.")
    return redirect(presenters.serving_url(name, tab="inference"))


@login_required
@require_GET
@http_errors
def inference_download(request: HttpRequest, name: str) -> HttpResponseBase:
    """The last days of the endpoint's inference table as one Parquet file, streamed as it
    is produced (a week of captured requests is never held in memory)."""
    endpoint = services.get_endpoint_for_user(name, request.user, READ_CAPTURED)
    response = StreamingHttpResponse(
        inference_tables.download(endpoint.registered_model_name, DOWNLOAD_DAYS),
        content_type="application/vnd.apache.parquet",
    )
    filename = quote(f"{name}-inference.parquet")
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{filename}"
    return response
