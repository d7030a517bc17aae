"""The web UI's model pages: the models list, a model's details and its Serving tab.

Views are thin: they parse the request, read through selectors and presenters, write
through services and render. A ServingError from a service is shown in the page with its
status. Each page works without JavaScript; htmx only swaps named regions of the same
templates. Permissions, tokens and service principals are in ``access``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRefresh

from endpoints import registry, selectors, services
from endpoints.errors import PermissionDenied, ServingError
from endpoints.gateway import scoring
from endpoints.models import PermissionLevel, ServingEndpoint

from . import listing, presenters
from .forms import ComputeConfigForm, InvokeForm, StageForm, TransitionForm
from .shortcuts import http_errors, registered_model, show_error

log = logging.getLogger(__name__)


# --- models list and model page ---------------------------------------------------------------


@login_required
@require_GET
def models_list(request: HttpRequest) -> HttpResponse:
    """The registry a page at a time; htmx swaps only the results as the search changes."""
    query = request.GET
    template = "endpoints/models_list.html" + ("#results" if request.htmx else "")
    try:
        context = listing.models_list(
            user=request.user,
            query=query.get("q", ""),
            serving_only=query.get("serving") == "on",
            page_token=query.get("page_token") or None,
            trail=query.getlist("prev"),
        )
    except registry.RegistryError as exc:
        log.warning("model registry unavailable: %s", exc)
        context = {"rows": [], "registry_error": str(exc), "query": query.get("q", "")}
        return render(request, template, context, status=503)
    return render(request, template, context)


@login_required
@require_GET
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    context = presenters.model_detail(model=registered_model(name), user=request.user)
    return render(request, "endpoints/model_detail.html", context)


@login_required
@require_POST
@http_errors
def model_transition(request: HttpRequest, name: str) -> HttpResponse:
    registered_model(name)
    form = TransitionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a version and a stage.")
        return redirect("model", name)
    data = form.cleaned_data
    try:
        info = services.model_version_transition(
            name=name,
            version=data["version"],
            stage=data["stage"],
            archive_existing_versions=data["archive_existing_versions"],
            comment=data["comment"],
            user=request.user,
        )
    except PermissionDenied:
        raise  # the 403 page, not a message
    except ServingError as exc:
        show_error(request, exc)
    else:
        messages.success(request, f"Version {info.version} is now in {info.stage}.")
    return redirect("model", name)


# --- the Serving tab ---------------------------------------------------------------------------


def _serving_page(
    request: HttpRequest, endpoint: ServingEndpoint, *, panel: bool = True
) -> dict[str, Any]:
    """The Serving tab's context for the version, tab and panel options in the query."""
    query = request.GET
    return presenters.serving(
        endpoint=endpoint,
        user=request.user,
        absolute_uri=request.build_absolute_uri,
        version_name=query.get("version", ""),
        tab=query.get("tab", "call"),
        show_example=bool(query.get("example")),
        panel=panel,
        replica_id=query.get("replica", ""),
        log_kind="build" if query.get("logs") == "build" else "service",
        event_scope=query.get("scope", ""),
        window=query.get("window", ""),
    )


def _render_serving(
    request: HttpRequest, name: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    header = presenters.model_header(model=registered_model(name), user=request.user, tab="serving")
    return render(request, "endpoints/serving.html", {**header, **context}, status=status)


@login_required
@require_GET
@http_errors
def serving(request: HttpRequest, name: str) -> HttpResponse:
    if selectors.enabled_endpoint(name) is None:
        return _render_serving(request, name, presenters.serving_off(name=name, user=request.user))
    endpoint = services.get_endpoint_for_user(name, request.user)
    polled = bool(request.htmx and request.htmx.target == "status")
    context = _serving_page(request, endpoint, panel=not polled)
    if polled:
        if request.GET.get("shown", "") != context["shown"]:
            # Versions came or went: the tabs and the request sender need the whole page.
            return HttpResponseClientRefresh()
        # The poll goes on while the page is open (crashes, scaling, traffic show up).
        context["oob"] = True
        return render(request, "endpoints/serving.html#status", context)
    if request.htmx and request.htmx.target == "panel":
        return render(request, "endpoints/serving.html#panel", context)
    return _render_serving(request, name, context)


@login_required
@require_POST
def serving_enable(request: HttpRequest, name: str) -> HttpResponse:
    registered_model(name)
    try:
        services.endpoint_enable(name=name, user=request.user)
    except ServingError as exc:
        show_error(request, exc)
        context = presenters.serving_off(name=name, user=request.user)
        return _render_serving(request, name, context, status=exc.status)
    messages.success(request, "Serving is being enabled: the status turns Ready once it is up.")
    return redirect("serving", name)


@login_required
@require_POST
@http_errors
def serving_disable(request: HttpRequest, name: str) -> HttpResponse:
    services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    try:
        services.endpoint_disable(name=name, user=request.user)
    except ServingError as exc:
        show_error(request, exc)
    else:
        messages.success(request, "Serving is disabled: its replicas are stopping.")
    return redirect("serving", name)


@login_required
@require_POST
@http_errors
def compute_update(request: HttpRequest, name: str) -> HttpResponse:
    endpoint = services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = ComputeConfigForm(request.POST)
    if not form.is_valid():
        messages.error(request, form.problem())
        return redirect(presenters.serving_url(name, tab="compute"))
    data = form.cleaned_data
    try:
        services.compute_config_update(
            name=endpoint.registered_model_name,
            stage=data["stage"],
            workload_size=data["workload_size"],
            scale_to_zero_enabled=data["scale_to_zero_enabled"],
            max_batch_size=data["max_batch_size"],
            max_wait_ms=data["max_wait_ms"],
            workload_type=data["workload_type"],
            overrides=form.overrides(),
            user=request.user,
        )
    except ServingError as exc:
        show_error(request, exc)
        context = presenters.serving(
            endpoint=endpoint,
            user=request.user,
            absolute_uri=request.build_absolute_uri,
            tab="compute",
        )
        return _render_serving(request, name, context, status=exc.status)
    messages.success(request, f"{data['stage']} compute settings saved: the update is rolling out.")
    return redirect(presenters.serving_url(name, tab="compute"))


@login_required
@require_POST
@http_errors
def compute_restart(request: HttpRequest, name: str) -> HttpResponse:
    services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = StageForm(request.POST)
    if form.is_valid():
        try:
            services.compute_config_restart(
                name=name, stage=form.cleaned_data["stage"], user=request.user
            )
        except ServingError as exc:
            show_error(request, exc)
        else:
            messages.success(request, f"Retrying the {form.cleaned_data['stage']} update.")
    return redirect(presenters.serving_url(name, tab="compute"))


@login_required
@require_GET
@http_errors
def serving_example(request: HttpRequest, name: str) -> HttpResponse:
    endpoint = services.get_endpoint_for_user(name, request.user)
    version = selectors.endpoint_version(endpoint, request.GET.get("version", ""))
    example, reason = presenters.input_example(version)
    if not example:
        return HttpResponse(reason, status=404, content_type="text/plain")
    if request.htmx:
        return render(request, "endpoints/serving.html#request_box", {"request_body": example})
    return redirect(presenters.serving_url(name, version=version.version, example="1"))


@login_required
@require_POST
@http_errors
def serving_invoke(request: HttpRequest, name: str) -> HttpResponse:
    """Send Request without JavaScript: score as the logged-in user through the gateway,
    on this page thread (``scoring.invoke`` caps how many at once), and render the page
    with the answer. With JavaScript the page posts to the scoring URL instead."""
    endpoint = services.get_endpoint_for_user(name, request.user)
    form = InvokeForm(request.POST)
    if not form.is_valid():
        raise Http404("No such endpoint version.")
    version_name = form.cleaned_data["version"]
    body = form.cleaned_data["body"]
    started = time.perf_counter()
    try:
        status, answer = scoring.invoke(
            model_name=name,
            selector=version_name,
            body=body.encode(),
            content_type="application/json",
            user=request.user,
        )
    except ServingError as exc:
        status, answer = exc.status, json.dumps(exc.as_json()).encode()
    result = presenters.invoke_result(
        status=status, answer=answer, latency_ms=(time.perf_counter() - started) * 1000
    )
    context = presenters.serving(
        endpoint=endpoint,
        user=request.user,
        absolute_uri=request.build_absolute_uri,
        version_name=version_name,
    )
    context.update(result=result, request_body=body)
    return _render_serving(request, name, context)
