"""The web UI: server-rendered pages with htmx partials.

Views are thin: they read through selectors, the registry, logs and metrics, and write
through services. A ServingError from a service is shown in the page with its status.
Each page works without JavaScript; htmx only swaps named regions of the same templates.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh, HttpResponseStopPolling

from endpoints import logs, metrics, registry, selectors, services
from endpoints.auth import can_create_endpoint, has_permission, permission_level
from endpoints.errors import NotFound, PermissionDenied, ServingError
from endpoints.gateway import app as gateway
from endpoints.models import (
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    EndpointVersion,
    PermissionLevel,
    ServicePrincipal,
    ServiceState,
    ServingEndpoint,
    Stage,
)

from .forms import (
    ComputeConfigForm,
    InvokeForm,
    PermissionForm,
    ServicePrincipalForm,
    StageForm,
    TokenForm,
    TransitionForm,
)

log = logging.getLogger(__name__)

PANEL_TABS = (
    ("call", "Call the model"),
    ("logs", "Logs"),
    ("metrics", "Metrics"),
    ("events", "Model Events"),
    ("compute", "Compute Settings"),
)
SERVING_TABS = tuple(key for key, _ in PANEL_TABS)
METRICS_WINDOW_MS = 15 * 60 * 1000
EVENTS_SHOWN = 200
BADGES = {"PENDING": "Pending", "READY": "Ready", "FAILED": "Failed"}


# --- helpers ---------------------------------------------------------------------------------


def _get_endpoint_for_user(
    request: HttpRequest, name: str, level: str = PermissionLevel.CAN_VIEW
) -> ServingEndpoint:
    """The enabled endpoint of model ``name``: 404 when the user may not see it, 403 when
    they may see it but not act at ``level``."""
    try:
        return services.get_endpoint_for_user(name, request.user, level)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(exc.message) from exc


def _get_model(name: str) -> registry.RegisteredModelInfo:
    try:
        return registry.get_model(name)
    except registry.ModelNotFound as exc:
        raise Http404(str(exc)) from exc


def _enabled_endpoint(name: str) -> ServingEndpoint | None:
    return ServingEndpoint.objects.filter(registered_model_name=name, enabled=True).first()


def _serving_url(name: str, **params: str) -> str:
    url = reverse("serving", args=[name])
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v)
    return f"{url}?{query}" if query else url


def _badge(endpoint: ServingEndpoint | None) -> str:
    return BADGES.get(endpoint.state, "Pending") if endpoint else "Off"


def _badge_for(endpoint: ServingEndpoint | None, level: str | None) -> str:
    """The serving badge of a user whose permission on ``endpoint`` is ``level``."""
    return "Restricted" if endpoint is not None and level is None else _badge(endpoint)


def _when(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def _show_error(request: HttpRequest, exc: ServingError) -> None:
    messages.error(request, exc.message)


# --- models list and model page ---------------------------------------------------------------


@login_required
@require_GET
def models_list(request: HttpRequest) -> HttpResponse:
    try:
        models = registry.list_models()
    except registry.RegistryError as exc:
        log.warning("model registry unavailable: %s", exc)
        return render(
            request,
            "endpoints/models_list.html",
            {"rows": [], "registry_error": str(exc)},
            status=503,
        )
    endpoints = {e.registered_model_name: e for e in ServingEndpoint.objects.filter(enabled=True)}
    rows = []
    for model in models:
        endpoint = endpoints.get(model.name)
        level = permission_level(request.user, endpoint) if endpoint else None
        rows.append({"model": model, "badge": _badge_for(endpoint, level)})
    return render(request, "endpoints/models_list.html", {"rows": rows})


def _model_context(request: HttpRequest, model: registry.RegisteredModelInfo, tab: str) -> dict:
    endpoint = _enabled_endpoint(model.name)
    level = permission_level(request.user, endpoint) if endpoint else None
    return {
        "model": model,
        "model_tab": tab,
        "badge": _badge_for(endpoint, level),
        "can_manage": level == PermissionLevel.CAN_MANAGE,
    }


@login_required
@require_GET
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = _get_model(name)
    context = _model_context(request, model, "details")
    context["stages"] = registry.ALL_STAGES
    context["version_rows"] = [
        {"info": v, "created": _when(v.creation_timestamp)} for v in reversed(model.versions)
    ]
    return render(request, "endpoints/model_detail.html", context)


@login_required
@require_POST
def model_transition(request: HttpRequest, name: str) -> HttpResponse:
    _get_model(name)
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
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(exc.message) from exc
    except ServingError as exc:
        _show_error(request, exc)
    else:
        messages.success(request, f"Version {info.version} is now in {info.stage}.")
    return redirect("model", name)


# --- the Serving tab ---------------------------------------------------------------------------


def _stage_tags(endpoint: ServingEndpoint, versions: list[EndpointVersion]) -> dict[int, list[str]]:
    """The stages each version serves now (its alias) or is being brought up for."""
    tags: dict[int, set[str]] = {v.pk: set() for v in versions}
    for alias in endpoint.aliases.all():
        tags.setdefault(alias.version_id, set()).add(alias.stage)
    for v in versions:
        if v.desired and v.registry_stage in Stage.values:
            tags[v.pk].add(v.registry_stage)
    return {pk: sorted(stages, reverse=True) for pk, stages in tags.items()}


def _model_urls(
    request: HttpRequest, endpoint: ServingEndpoint, versions: list[EndpointVersion]
) -> list[dict]:
    quoted = quote(endpoint.registered_model_name, safe="")
    urls = []
    stages = {v.registry_stage for v in versions if v.desired}
    stages |= set(endpoint.aliases.values_list("stage", flat=True))
    for stage in Stage.values:
        if stage in stages:
            path = f"/model-endpoint/{quoted}/{stage}/invocations"
            urls.append({"label": stage, "url": request.build_absolute_uri(path)})
    for v in sorted(versions, key=lambda v: v.version_number, reverse=True):
        path = f"/model/{quoted}/{v.version}/invocations"
        urls.append({"label": f"Version {v.version}", "url": request.build_absolute_uri(path)})
    return urls


def _settled(endpoint: ServingEndpoint, versions: list[EndpointVersion]) -> bool:
    """Nothing is on its way: the status poll may stop."""
    moving = (ServiceState.PENDING, ServiceState.RETRY_REQUESTED)
    if endpoint.state == "PENDING":
        return False
    if any(v.service_state in moving or v.config_update_state in moving for v in versions):
        return False
    # A saved compute config the worker has not picked up yet is on its way too.
    configs = {stage: endpoint.current_compute_config(stage) for stage in Stage.values}
    return not any(
        _rollout_label(v, configs[v.registry_stage]) == "Update queued"
        for v in versions
        if v.desired and v.registry_stage in configs and v.service_state != ServiceState.FAILED
    )


def _example(version: EndpointVersion | None) -> tuple[str, str]:
    """(example JSON, reason it is unavailable): exactly one of them is empty."""
    if version is None:
        return "", "No model version is served yet."
    if not version.model_path or not Path(version.model_path).is_dir():
        return "", "The model version has not been downloaded yet."
    try:
        example = registry.input_example(Path(version.model_path))
    except (OSError, ValueError) as exc:
        return "", f"The input example could not be read: {exc}"
    if example is None:
        return "", "This model version was logged without an input example."
    return json.dumps(_as_records(example), indent=2), ""


def _as_records(example: dict[str, Any]) -> dict[str, Any]:
    """A split-oriented frame shown as records: one object per row reads best in a box."""
    split = example.get("dataframe_split")
    if not isinstance(split, dict) or not {"columns", "data"} <= split.keys():
        return example
    return {
        "dataframe_records": [
            dict(zip(split["columns"], row, strict=False)) for row in split["data"]
        ]
    }


def _snippets(url: str) -> dict[str, str]:
    curl = f'curl -u token:$TOKEN -X POST -H "Content-Type: application/json" -d@data.json {url}'
    # A plain str (not the SafeString render_to_string returns): the page escapes it.
    python = str.__str__(render_to_string("endpoints/snippet_python.txt", {"url": url}))
    return {"curl": curl, "python": python}


def _metrics_summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(p["requests"] for p in points)
    errors = sum(p["errors"] for p in points)
    latencies = [p["latency_ms_avg"] for p in points if p["latency_ms_avg"] is not None]
    replicas = [p["replicas"] for p in points if p["replicas"] is not None]
    seconds = max(len(points), 1) * metrics.BUCKET_SECONDS
    peak = max((p["requests_per_second"] for p in points), default=0)
    return {
        "requests": requests,
        "requests_per_second": round(requests / seconds, 2) if points else 0,
        "errors": errors,
        "error_rate": round(100 * errors / requests, 1) if requests else 0,
        "latency_ms_avg": round(sum(latencies) / len(latencies), 1) if latencies else None,
        "replicas": replicas[-1] if replicas else None,
        "bars": [
            {
                "height": round(100 * p["requests_per_second"] / peak) if peak else 0,
                "point": p,
            }
            for p in points[-60:]
        ],
    }


def _panel_context(request: HttpRequest, tab: str, endpoint: ServingEndpoint, version) -> dict:
    """What the selected tab needs; only that tab's data is read."""
    if tab == "logs" and version is not None:
        replica_id = request.GET.get("replica", "")
        kind = "build" if request.GET.get("logs") == "build" else "service"
        if kind == "build":
            text = logs.build_logs(version)
        else:
            text = logs.service_logs(version, replica_id=replica_id or None)
        return {"log_kind": kind, "log_replica": replica_id, "log_text": text}
    if tab == "metrics" and version is not None:
        now = int(time.time() * 1000)
        try:
            points = metrics.series(version.pk, now - METRICS_WINDOW_MS, now)
        except Exception as exc:  # Redis away: the rest of the page is still useful
            log.warning("metrics unavailable: %s", exc)
            return {"metrics_error": "Metrics are unavailable right now."}
        return {"metrics_points": points, "summary": _metrics_summary(points)}
    if tab == "events":
        events = endpoint.events.all()
        scope = "version" if version is not None and request.GET.get("scope") == "version" else ""
        if scope:
            events = events.filter(endpoint_version_name=version.version)
        return {
            "event_scope": scope,
            "events": [{"event": e, "when": _when(e.timestamp)} for e in events[:EVENTS_SHOWN]],
        }
    if tab == "compute":
        return {"compute": _compute_rows(endpoint), "sizes": selectors.supported_workload_sizes()}
    return {}


def _compute_rows(endpoint: ServingEndpoint) -> list[dict[str, Any]]:
    rows = []
    for stage in Stage.values:
        config = endpoint.current_compute_config(stage)
        versions = list(
            endpoint.versions.filter(registry_stage=stage, desired=True).order_by("-created_at")
        )
        rows.append(
            {
                "stage": stage,
                "config": config,
                "versions": [{"v": v, "rollout": _rollout_label(v, config)} for v in versions],
                "updating": any(v.config_update_state == ServiceState.PENDING for v in versions),
                "failed": any(v.config_update_state == ServiceState.FAILED for v in versions),
            }
        )
    return rows


def _rollout_label(version: EndpointVersion, config: ComputeConfig | None) -> str:
    """Where the stage's newest compute config stands on this version."""
    labels = {
        ServiceState.PENDING: "Updating",
        ServiceState.FAILED: "Update Failed",
        ServiceState.RETRY_REQUESTED: "Retry requested",
    }
    if version.config_update_state in labels:
        return labels[version.config_update_state]
    if config is not None and not config.same_spec(version.service_config):
        # Saved, not yet picked up by the worker.
        return "Update queued"
    return "Up to date" if version.is_ready else selectors.sidebar_label(version)


def _serving_context(
    request: HttpRequest,
    name: str,
    endpoint: ServingEndpoint,
    *,
    panel: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Everything the Serving tab shows; ``panel=False`` for the status poll, which
    refreshes the status, versions and live bits of the open tab, not its logs or events."""
    versions = sorted(
        selectors.deployed_versions(endpoint), key=lambda v: v.version_number, reverse=True
    )
    wanted = extra.pop("version_name", None) or request.GET.get("version", "")
    version = next((v for v in versions if v.version == wanted), versions[0] if versions else None)
    tab = request.GET.get("tab", "call")
    tab = tab if tab in SERVING_TABS else "call"
    tags = _stage_tags(endpoint, versions)
    shown = ",".join(v.version for v in versions) or "none"
    url = (
        request.build_absolute_uri(f"/model/{quote(name, safe='')}/{version.version}/invocations")
        if version
        else ""
    )
    example, example_reason = _example(version) if tab == "call" else ("", "")
    context = {
        "name": name,
        "endpoint": endpoint,
        "status": selectors.endpoint_status_json(endpoint),
        "versions": [
            {"v": v, "label": selectors.sidebar_label(v), "tags": tags.get(v.pk, [])}
            for v in versions
        ],
        "version": version,
        "version_tags": tags.get(version.pk, []) if version else [],
        "version_label": selectors.sidebar_label(version) if version else "",
        "replicas": list(version.replicas.order_by("-created_at")[:20]) if version else [],
        "model_urls": _model_urls(request, endpoint, versions),
        "tab": tab,
        "panel_tabs": PANEL_TABS,
        "settled": _settled(endpoint, versions),
        "can_manage": has_permission(request.user, endpoint, PermissionLevel.CAN_MANAGE),
        "invocation_url": url,
        "snippets": _snippets(url) if url else {},
        "example_reason": example_reason,
        "has_example": bool(example),
        "request_body": example if request.GET.get("example") else "",
        "shown": shown,
        "poll_url": _serving_url(name, version=version.version if version else "", shown=shown),
    }
    if panel:
        context.update(_panel_context(request, tab, endpoint, version))
    elif tab == "compute":
        context["compute"] = _compute_rows(endpoint)
    context.update(extra)
    return context


def _render_serving(request: HttpRequest, name: str, context: dict, status: int = 200):
    model = _get_model(name)
    context = {**_model_context(request, model, "serving"), **context}
    return render(request, "endpoints/serving.html", context, status=status)


@login_required
@require_GET
def serving(request: HttpRequest, name: str) -> HttpResponse:
    if _enabled_endpoint(name) is None:
        return _render_serving(
            request,
            name,
            {"endpoint": None, "name": name, "can_enable": can_create_endpoint(request.user)},
        )
    endpoint = _get_endpoint_for_user(request, name)
    polled = bool(request.htmx and request.htmx.target == "status")
    context = _serving_context(request, name, endpoint, panel=not polled)
    if polled:
        if request.GET.get("shown", "") != context["shown"]:
            # Versions came or went: the tabs and the request sender need the whole page.
            return HttpResponseClientRefresh()
        response_class = HttpResponseStopPolling if context["settled"] else HttpResponse
        context["oob"] = True
        html = render(request, "endpoints/serving.html#status", context).content
        return response_class(html)
    if request.htmx and request.htmx.target == "panel":
        return render(request, "endpoints/serving.html#panel", context)
    return _render_serving(request, name, context)


@login_required
@require_POST
def serving_enable(request: HttpRequest, name: str) -> HttpResponse:
    _get_model(name)
    try:
        services.endpoint_enable(name=name, user=request.user)
    except ServingError as exc:
        _show_error(request, exc)
        context = {"endpoint": None, "name": name, "can_enable": can_create_endpoint(request.user)}
        return _render_serving(request, name, context, status=exc.status)
    messages.success(request, "Serving is being enabled: the status turns Ready once it is up.")
    return redirect("serving", name)


@login_required
@require_POST
def serving_disable(request: HttpRequest, name: str) -> HttpResponse:
    _get_endpoint_for_user(request, name, PermissionLevel.CAN_MANAGE)
    try:
        services.endpoint_disable(name=name, user=request.user)
    except ServingError as exc:
        _show_error(request, exc)
    else:
        messages.success(request, "Serving is disabled: its replicas are stopping.")
    return redirect("serving", name)


@login_required
@require_POST
def compute_update(request: HttpRequest, name: str) -> HttpResponse:
    endpoint = _get_endpoint_for_user(request, name, PermissionLevel.CAN_MANAGE)
    form = ComputeConfigForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a stage and a workload size.")
        return redirect(_serving_url(name, tab="compute"))
    data = form.cleaned_data
    try:
        services.compute_config_update(
            name=endpoint.registered_model_name,
            stage=data["stage"],
            workload_size=data["workload_size"],
            scale_to_zero_enabled=data["scale_to_zero_enabled"],
            user=request.user,
        )
    except ServingError as exc:
        _show_error(request, exc)
        context = _serving_context(request, name, endpoint)
        context.update(_panel_context(request, "compute", endpoint, None), tab="compute")
        return _render_serving(request, name, context, status=exc.status)
    messages.success(request, f"{data['stage']} compute settings saved: the update is rolling out.")
    return redirect(_serving_url(name, tab="compute"))


@login_required
@require_POST
def compute_restart(request: HttpRequest, name: str) -> HttpResponse:
    _get_endpoint_for_user(request, name, PermissionLevel.CAN_MANAGE)
    form = StageForm(request.POST)
    if form.is_valid():
        try:
            services.compute_config_restart(
                name=name, stage=form.cleaned_data["stage"], user=request.user
            )
        except ServingError as exc:
            _show_error(request, exc)
        else:
            messages.success(request, f"Retrying the {form.cleaned_data['stage']} update.")
    return redirect(_serving_url(name, tab="compute"))


@login_required
@require_GET
def serving_example(request: HttpRequest, name: str) -> HttpResponse:
    endpoint = _get_endpoint_for_user(request, name)
    version = endpoint.versions.filter(version=request.GET.get("version", "")).first()
    if version is None:
        raise Http404("No such endpoint version.")
    example, reason = _example(version)
    if not example:
        return HttpResponse(reason, status=404, content_type="text/plain")
    if request.htmx:
        return render(request, "endpoints/serving.html#request_box", {"request_body": example})
    return redirect(_serving_url(name, version=version.version, example="1"))


def _pretty(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2)
    except ValueError:
        return body.decode(errors="replace")


@login_required
@require_POST
def serving_invoke(request: HttpRequest, name: str) -> HttpResponse:
    """The request sender: score as the logged-in user through the gateway."""
    endpoint = _get_endpoint_for_user(request, name)
    form = InvokeForm(request.POST)
    if not form.is_valid():
        raise Http404("No such endpoint version.")
    version_name = form.cleaned_data["version"]
    body = form.cleaned_data["body"]
    started = time.perf_counter()
    try:
        status, answer = gateway.invoke(
            model_name=name,
            selector=version_name,
            body=body.encode(),
            content_type="application/json",
            user=request.user,
        )
    except ServingError as exc:
        status, answer = exc.status, json.dumps(exc.as_json()).encode()
    result = {
        "status": status,
        "ok": 200 <= status < 300,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "body": _pretty(answer),
    }
    if request.htmx:
        return render(request, "endpoints/serving.html#response", {"result": result})
    context = _serving_context(
        request, name, endpoint, version_name=version_name, result=result, request_body=body
    )
    return _render_serving(request, name, context)


# --- endpoint permissions ------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def permissions(request: HttpRequest, name: str) -> HttpResponse:
    endpoint = _get_endpoint_for_user(request, name, PermissionLevel.CAN_MANAGE)
    form = PermissionForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        user = get_user_model().objects.filter(username=form.cleaned_data["username"]).first()
        if user is None:
            form.add_error("username", "No user with that name.")
            status = 400
        else:
            try:
                services.permission_set(
                    endpoint=endpoint,
                    user=user,
                    level=form.cleaned_data["level"] or None,
                    by=request.user,
                )
            except ServingError as exc:
                _show_error(request, exc)
                status = exc.status
            else:
                messages.success(request, f"Permissions of {user.get_username()} saved.")
                return redirect("permissions", name)
    elif request.method == "POST":
        status = 400
    context = _model_context(request, _get_model(name), "permissions")
    context.update(
        form=form,
        endpoint=endpoint,
        grants=EndpointPermission.objects.filter(endpoint=endpoint).select_related("user"),
        levels=PermissionLevel.choices,
    )
    return render(request, "endpoints/permissions.html", context, status=status)


# --- access tokens ------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            days = form.cleaned_data["expires_in_days"]
            expires = timezone.now() + timedelta(days=days) if days else None
            # The plaintext is rendered in this response only: no redirect may lose it.
            token, plaintext = services.token_create(
                user=request.user, name=form.cleaned_data["name"], expires_at=expires
            )
            created = {"token": token, "plaintext": plaintext}
            form = TokenForm()
        else:
            status = 400
    context = {
        "form": form,
        "created": created,
        "tokens": AccessToken.objects.filter(user=request.user, revoked_at__isnull=True),
    }
    return render(request, "endpoints/tokens.html", context, status=status)


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        token = services.token_revoke(token_id=pk, user=request.user)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    messages.success(request, f"Token {token.prefix}… revoked.")
    if token.user_id != request.user.pk:
        return redirect("principals")
    return redirect("tokens")


# --- service principals (admins) ------------------------------------------------------------------


def _require_admin(request: HttpRequest) -> None:
    if not request.user.is_superuser:
        raise DjangoPermissionDenied("Only admins manage service principals.")


@login_required
@require_http_methods(["GET", "POST"])
def principals(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    form = ServicePrincipalForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                principal = services.service_principal_create(
                    username=form.cleaned_data["username"],
                    display_name=form.cleaned_data["display_name"],
                    by=request.user,
                )
            except ServingError as exc:
                form.add_error("username", exc.message)
                status = exc.status
            else:
                messages.success(request, f"Service principal {principal} created.")
                return redirect("principals")
        else:
            status = 400
    return _render_principals(request, form, None, status)


def _render_principals(request: HttpRequest, form, created, status: int = 200) -> HttpResponse:
    listed = ServicePrincipal.objects.select_related("user", "created_by")
    rows = [
        {
            "principal": p,
            "tokens": AccessToken.objects.filter(user=p.user, revoked_at__isnull=True),
        }
        for p in listed
    ]
    context = {"form": form, "rows": rows, "created": created}
    return render(request, "endpoints/principals.html", context, status=status)


@login_required
@require_POST
def principal_token(request: HttpRequest, pk: int) -> HttpResponse:
    _require_admin(request)
    principal = get_object_or_404(ServicePrincipal, pk=pk)
    form = TokenForm(request.POST)
    name = form.cleaned_data["name"] if form.is_valid() else ""
    token, plaintext = services.token_create(user=principal.user, name=name)
    created = {"token": token, "plaintext": plaintext, "principal": principal}
    return _render_principals(request, ServicePrincipalForm(), created)
