"""Traffic splits and inference tables as the API answers them."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from endpoints.auth import READ_CAPTURED, ROWS_WITHHELD, has_permission
from endpoints.models import (
    InferenceTable,
    ServingEndpoint,
)
from endpoints.telemetry import inference_tables

from .compute import target_json


def traffic_splits_json(endpoint: ServingEndpoint) -> list[dict[str, Any]]:
    """Each split target with its versions' shares, largest first."""
    return [
        {
            **target_json(split.target),
            "traffic": [
                {"endpoint_version_name": version, "traffic_percentage": weight}
                for version, weight in sorted(split.weights.items(), key=lambda i: (-i[1], i[0]))
            ],
            "user_id": split.user_id,
            "updated_timestamp": split.updated_timestamp,
        }
        for split in endpoint.traffic_splits.all()
    ]


def inference_table_json(endpoint: ServingEndpoint) -> dict[str, Any]:
    """The endpoint's inference table: whether it captures, how much, where, and how many
    requests the gateways had to leave out (null while Redis is unavailable)."""
    table = InferenceTable.objects.filter(endpoint=endpoint).first()
    name = endpoint.registered_model_name
    try:
        by_reason: dict[str, int] | None = inference_tables.dropped_counts([name])[name]
    except redis.RedisError:
        by_reason = None
    return {
        "enabled": bool(table and table.enabled),
        "sample_rate": table.sample_rate if table else 1.0,
        "retention_days": settings.SERVING["INFERENCE_RETENTION_DAYS"],
        "location": str(inference_tables.table_dir(name)),
        "dropped_requests": sum(by_reason.values()) if by_reason is not None else None,
        "dropped_requests_by_reason": by_reason,
    }


def inference_table_read(
    endpoint: ServingEndpoint, *, user: AbstractBaseUser | AnonymousUser, limit: int
) -> dict[str, Any]:
    """get-inference-table's answer: the settings for whoever may view the endpoint; the
    newest ``limit`` rows, newest first, and the files that could not be read, for those
    who may read captured requests only (``auth.READ_CAPTURED``)."""
    answer: dict[str, Any] = {"inference_table": inference_table_json(endpoint)}
    if not has_permission(user, endpoint, READ_CAPTURED):
        answer["message"] = ROWS_WITHHELD
        return answer
    found = inference_tables.latest_rows(endpoint.registered_model_name, limit)
    answer["rows"] = [
        {**row, "timestamp": int(row["timestamp"].timestamp() * 1000)} for row in found.rows
    ]
    answer["unreadable_files"] = found.unreadable
    if found.unreadable:
        answer["message"] = unreadable_message(found.unreadable)
    return answer


def unreadable_message(files: list[str], shown: int = 5) -> str:
    """What to tell a reader about files of the table that were skipped."""
    count = len(files)
    names = ", ".join(files[:shown]) + (f" and {count - shown} more" if count > shown else "")
    return (
        f"{count} file{'s' if count > 1 else ''} of the inference table could not be read "
        f"and {'were' if count > 1 else 'was'} skipped (the web server's log says why): "
        f"{names}."
    )
