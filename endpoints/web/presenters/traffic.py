"""The Serving tab's Traffic and Inference table panels: the model's MLflow aliases
(which are served, where each points, what its URL answers now), the choice of which
aliases to serve, the traffic splits (and their metrics side by side), and the newest
captured requests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from endpoints import registry, selectors
from endpoints.models import ServiceState, ServingEndpoint
from endpoints.targets import alias_name, alias_target, is_alias, valid_alias
from endpoints.telemetry import metrics

INFERENCE_ROWS_SHOWN = 50


def traffic(*, endpoint: ServingEndpoint) -> dict[str, Any]:
    name = endpoint.registered_model_name
    try:
        model = registry.get_model(name)
    except registry.RegistryError as exc:
        return {"traffic_error": f"The model registry is unavailable: {exc}"}
    serving_now = {a.stage: a.version.version for a in endpoint.aliases.select_related("version")}
    aliases = [
        {
            "alias": alias,
            "version": version,
            "served": endpoint.serves_alias(alias),
            "answers_with": serving_now.get(alias_target(alias), ""),
        }
        for alias, version in sorted(model.aliases.items())
        if valid_alias(alias)
    ]
    chosen = set(endpoint.served_aliases or ())
    # Aliases the endpoint is limited to that the model does not have (yet) stay listed.
    known = {row["alias"] for row in aliases} | chosen
    return {
        "split_rows": split_rows(endpoint),
        "model_aliases": aliases,
        "alias_choices": sorted(known),
        "serve_all_aliases": endpoint.served_aliases is None,
        "served_alias_set": chosen,
        "model_versions": [v.version for v in reversed(model.versions)],
    }


def split_rows(endpoint: ServingEndpoint) -> list[dict[str, Any]]:
    """One row per target whose URL answers (stages first): its version, its split if it
    has one, and a weight for each READY version to split between."""
    ready = [
        v.version
        for v in sorted(
            endpoint.versions.filter(service_state=ServiceState.READY),
            key=lambda v: v.version_number,
            reverse=True,
        )
    ]
    splits = {s.target: s for s in endpoint.traffic_splits.all()}
    pointers = sorted(
        endpoint.aliases.select_related("version"), key=lambda a: (is_alias(a.stage), a.stage)
    )
    rows = []
    for pointer in pointers:
        target = pointer.stage
        split = splits.get(target)
        weights = dict(split.weights) if split else {pointer.version.version: 100}
        rows.append(
            {
                "target": target,
                "key": f"alias-{alias_name(target)}" if is_alias(target) else target.lower(),
                "version": pointer.version.version,
                "split": split,
                "shares": sorted(weights.items(), key=lambda i: (-i[1], i[0])),
                "weights": [{"version": v, "weight": weights.get(v, 0)} for v in ready],
            }
        )
    return rows


def split_metrics(
    endpoint: ServingEndpoint,
    *,
    start_ms: int,
    end_ms: int,
) -> list[dict[str, Any]]:
    """For each split, its versions side by side: share, requests, latency, errors."""
    versions = {v.version: v for v in endpoint.versions.all()}
    rows = []
    for split in endpoint.traffic_splits.all():
        columns = []
        for version, weight in sorted(split.weights.items(), key=lambda i: (-i[1], i[0])):
            row = versions.get(version)
            if row is None:
                continue
            points = metrics.series(row.pk, start_ms, end_ms)
            summary = _summary(points, seconds=max((end_ms - start_ms) / 1000, 1))
            columns.append({"version": version, "weight": weight, "summary": summary})
        rows.append({"target": split.target, "versions": columns})
    return rows


def _summary(points: list[dict[str, Any]], *, seconds: float) -> dict[str, Any]:
    """One version's figures over the window: requests, rate, mean latency, errors."""
    requests = sum(p["requests"] for p in points)
    errors = sum(p["errors"] for p in points)
    latency_sum = sum(p["latency_ms_avg"] * p["requests"] for p in points if p["requests"])
    return {
        "requests": requests,
        "requests_per_second": round(requests / seconds, 2),
        "errors": errors,
        "error_rate": round(100 * errors / requests, 1) if requests else 0,
        "latency_ms_avg": round(latency_sum / requests, 1) if requests else None,
    }


def inference_panel(*, endpoint: ServingEndpoint, user: AbstractBaseUser) -> dict[str, Any]:
    """The Inference table panel: its settings, and the newest captured requests for
    those who may read them (others get the reason there are none instead)."""
    answer = selectors.inference_table_read(endpoint, user=user, limit=INFERENCE_ROWS_SHOWN)
    rows = answer.get("rows", [])
    for row in rows:
        row["when"] = datetime.fromtimestamp(row["timestamp"] / 1000, tz=UTC)
        row["request_short"] = _short(row["request"])
        row["response_short"] = _short(row["response"])
    return {
        "inference": answer["inference_table"],
        "inference_percent": round(answer["inference_table"]["sample_rate"] * 100, 2),
        "inference_can_read": "rows" in answer,
        "inference_rows": rows,
        "inference_message": answer.get("message", ""),
    }


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
