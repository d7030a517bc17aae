"""What the Serving tab shows: the versions and their status, the selected panel (calling
the model, logs, metrics, events, compute settings; traffic in ``traffic``) and the
request sender's answer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.contrib.auth.models import AbstractBaseUser
from django.template.loader import render_to_string

from endpoints import registry, selectors
from endpoints.auth import can_create_endpoint, has_permission
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    PermissionLevel,
    ServiceState,
    ServingEndpoint,
    Stage,
)
from endpoints.targets import alias_name, config_target, is_alias, version_targets
from endpoints.telemetry import logs
from endpoints.web import charts

from . import compute, traffic
from .model import serving_url, when

log = logging.getLogger(__name__)


PANEL_TABS = (
    ("call", "Call the model"),
    ("logs", "Logs"),
    ("metrics", "Metrics"),
    ("events", "Model Events"),
    ("compute", "Compute Settings"),
    ("traffic", "Traffic"),
    ("inference", "Inference table"),
)


SERVING_TABS = tuple(key for key, _ in PANEL_TABS)


UNMANAGED_TABS = tuple((key, title) for key, title in PANEL_TABS if key != "logs")


LOGS_REFUSED = "Reading logs needs CAN_MANAGE on this endpoint: logs can hold request data."


EVENTS_SHOWN = 200


# What the batching inputs propose before a stage turns batching on.
SUGGESTED_BATCHING = {"max_batch_size": 32, "max_wait_ms": 5}


AbsoluteUri = Callable[[str], str]


def serving_off(*, name: str, user: AbstractBaseUser) -> dict[str, Any]:
    """Serving is not enabled: the page offers to enable it to those who may."""
    return {"endpoint": None, "name": name, "can_enable": can_create_endpoint(user)}


def serving(
    *,
    endpoint: ServingEndpoint,
    user: AbstractBaseUser,
    absolute_uri: AbsoluteUri,
    version_name: str = "",
    tab: str = "call",
    show_example: bool = False,
    panel: bool = True,
    replica_id: str = "",
    log_kind: str = "service",
    event_scope: str = "",
    window: str = "",
) -> dict[str, Any]:
    """Everything the Serving tab shows; ``panel=False`` for the status poll, which
    refreshes the status, versions and live bits of the open tab (the rollout, the
    charts), not its logs or events."""
    name = endpoint.registered_model_name
    versions = sorted(
        selectors.deployed_versions(endpoint), key=lambda v: v.version_number, reverse=True
    )
    version = next(
        (v for v in versions if v.version == version_name), versions[0] if versions else None
    )
    tab = tab if tab in SERVING_TABS else "call"
    tags = stage_tags(endpoint, versions)
    shown = ",".join(v.version for v in versions) or "none"
    # The version's scoring URL; the request sender's script posts to it (same origin).
    path = f"/model/{quote(name, safe='')}/{version.version}/invocations" if version else ""
    url = absolute_uri(path) if path else ""
    example, example_reason = input_example(version) if tab == "call" else ("", "")
    can_manage = has_permission(user, endpoint, PermissionLevel.CAN_MANAGE)
    replica_rows = list(version.replicas.order_by("-created_at")[:20]) if version else []
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
        "replicas": replica_rows,
        # The GPUs column shows only where a replica of the version has devices.
        "replica_gpus": any(r.gpu_devices for r in replica_rows),
        "model_urls": model_urls(endpoint=endpoint, versions=versions, absolute_uri=absolute_uri),
        "tab": tab,
        # Logs can hold request data a model printed: only CAN_MANAGE sees the tab.
        "panel_tabs": PANEL_TABS if can_manage else UNMANAGED_TABS,
        "settled": settled(endpoint, versions),
        "can_manage": can_manage,
        "invocation_url": url,
        "invocation_path": path,
        "snippets": snippets(url) if url else {},
        "example_reason": example_reason,
        "has_example": bool(example),
        "request_body": example if show_example else "",
        "shown": shown,
        "poll_url": serving_url(name, version=version.version if version else "", shown=shown),
    }
    if panel:
        context.update(
            panel_context(
                tab=tab,
                endpoint=endpoint,
                version=version,
                replica_id=replica_id,
                log_kind=log_kind,
                event_scope=event_scope,
                can_read_logs=can_manage,
                window=window,
                user=user,
            )
        )
    elif tab == "compute":
        context["compute"] = compute_rows(endpoint)
    elif tab == "metrics" and version is not None:
        context.update(metrics_context(endpoint, version, window))
    return context


def panel_context(
    *,
    tab: str,
    endpoint: ServingEndpoint,
    version: EndpointVersion | None,
    replica_id: str = "",
    log_kind: str = "service",
    event_scope: str = "",
    can_read_logs: bool = False,
    window: str = "",
    user: AbstractBaseUser,
) -> dict[str, Any]:
    """What the selected tab needs; only that tab's data is read."""
    if tab == "logs" and not can_read_logs:
        return {"logs_refused": LOGS_REFUSED}
    if tab == "logs" and version is not None:
        if log_kind == "build":
            text = logs.build_logs(version)
        else:
            text = logs.service_logs(version, replica_id=replica_id or None)
        return {"log_kind": log_kind, "log_replica": replica_id, "log_text": text}
    if tab == "metrics" and version is not None:
        return metrics_context(endpoint, version, window)
    if tab == "events":
        scope = "version" if version is not None and event_scope == "version" else ""
        events = selectors.endpoint_events(
            endpoint, limit=EVENTS_SHOWN, version_name=version.version if scope else ""
        )
        return {
            "event_scope": scope,
            "events": [{"event": e, "when": when(e.timestamp)} for e in events],
        }
    if tab == "compute":
        return {
            "compute": compute_rows(endpoint),
            "sizes": selectors.supported_workload_sizes(),
            **compute.workload_types(),
        }
    if tab == "traffic":
        return traffic.traffic(endpoint=endpoint)
    if tab == "inference":
        return traffic.inference_panel(endpoint=endpoint, user=user)
    return {}


def metrics_context(
    endpoint: ServingEndpoint, version: EndpointVersion, window: str
) -> dict[str, Any]:
    """The version's charts, and each traffic split's versions side by side."""
    try:
        context = charts.metrics_charts(version.pk, window)
        end = int(time.time() * 1000)
        start = end - charts.WINDOWS[context["window"]][0] * 1000
        context["splits"] = traffic.split_metrics(endpoint, start_ms=start, end_ms=end)
        return context
    except Exception as exc:  # Redis away: the rest of the page is still useful
        log.warning("metrics unavailable: %s", exc)
        return {"metrics_error": "Metrics are unavailable right now.", "window": window}


def stage_tags(endpoint: ServingEndpoint, versions: list[EndpointVersion]) -> dict[int, list[str]]:
    """The stages and ``@aliases`` each version serves now or is being brought up for:
    stages first, then aliases by name."""
    tags: dict[int, set[str]] = {v.pk: set() for v in versions}
    for alias in endpoint.aliases.all():
        tags.setdefault(alias.version_id, set()).add(alias.stage)
    for v in versions:
        if v.desired:
            tags[v.pk].update(_targets(v))
    return {pk: sorted(found, key=_target_order) for pk, found in tags.items()}


def _targets(version: EndpointVersion) -> tuple[str, ...]:
    return version_targets(version.registry_stage, version.registry_aliases)


def _config_of(version: EndpointVersion) -> str:
    return config_target(version.registry_stage, version.registry_aliases)


def _target_order(target: str) -> tuple[int, str]:
    return (2, target) if is_alias(target) else (0 if target == "Production" else 1, target)


def model_urls(
    *, endpoint: ServingEndpoint, versions: list[EndpointVersion], absolute_uri: AbsoluteUri
) -> list[dict[str, str]]:
    """The stage URLs and alias URLs that answer (or are about to), then one URL per
    version."""
    quoted = quote(endpoint.registered_model_name, safe="")
    urls = []
    targets = {t for v in versions if v.desired for t in _targets(v)}
    targets |= set(endpoint.aliases.values_list("stage", flat=True))
    for target in sorted(targets, key=_target_order):
        path = f"/model-endpoint/{quoted}/{target}/invocations"
        urls.append({"label": target, "url": absolute_uri(path)})
    for v in sorted(versions, key=lambda v: v.version_number, reverse=True):
        path = f"/model/{quoted}/{v.version}/invocations"
        urls.append({"label": f"Version {v.version}", "url": absolute_uri(path)})
    return urls


def settled(endpoint: ServingEndpoint, versions: list[EndpointVersion]) -> bool:
    """Nothing is on its way: the status poll may stop."""
    moving = (ServiceState.PENDING, ServiceState.RETRY_REQUESTED)
    if endpoint.state == "PENDING":
        return False
    if any(v.service_state in moving or v.config_update_state in moving for v in versions):
        return False
    # A saved compute config the worker has not picked up yet is on its way too.
    return not any(
        rollout_label(v, endpoint.current_compute_config(_config_of(v))) == "Update queued"
        for v in versions
        if v.desired and _config_of(v) and v.service_state != ServiceState.FAILED
    )


def input_example(version: EndpointVersion | None) -> tuple[str, str]:
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


def snippets(url: str) -> dict[str, str]:
    curl = f'curl -u token:$TOKEN -X POST -H "Content-Type: application/json" -d@data.json {url}'
    # A plain str (not the SafeString render_to_string returns): the page escapes it.
    python = str.__str__(render_to_string("endpoints/snippet_python.txt", {"url": url}))
    return {"curl": curl, "python": python}


def compute_rows(endpoint: ServingEndpoint) -> list[dict[str, Any]]:
    """One row per stage, then one per served alias that has versions or a config."""
    desired = list(endpoint.versions.filter(desired=True).order_by("-created_at"))
    aliases = {_config_of(v) for v in desired if is_alias(_config_of(v))}
    aliases |= set(selectors.alias_config_targets(endpoint))
    rows = []
    for stage in [*Stage.values, *sorted(aliases)]:
        config = endpoint.current_compute_config(stage)
        versions = [v for v in desired if _config_of(v) == stage]
        rows.append(
            {
                "stage": stage,
                "key": f"alias-{alias_name(stage)}" if is_alias(stage) else stage.lower(),
                "config": config,
                "batching": batching_fields(config),
                **compute.settings_fields(config),
                "versions": [{"v": v, "rollout": rollout_label(v, config)} for v in versions],
                "updating": any(v.config_update_state == ServiceState.PENDING for v in versions),
                "failed": any(v.config_update_state == ServiceState.FAILED for v in versions),
            }
        )
    return rows


def batching_fields(config: ComputeConfig | None) -> dict[str, Any]:
    """The batching inputs of a stage's form: its settings, or suggestions while off."""
    if config is not None and config.batching_enabled:
        return {
            "enabled": True,
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        }
    return {"enabled": False, **SUGGESTED_BATCHING}


def rollout_label(version: EndpointVersion, config: ComputeConfig | None) -> str:
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


def invoke_result(*, status: int, answer: bytes, latency_ms: float) -> dict[str, Any]:
    """The request sender's answer box."""
    return {
        "status": status,
        "ok": 200 <= status < 300,
        "latency_ms": round(latency_ms, 1),
        "body": _pretty(answer),
    }


def _pretty(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2)
    except ValueError:
        return body.decode(errors="replace")
