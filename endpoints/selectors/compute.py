"""Compute configs and workload sizes as the API answers them, and a target's shape."""

from __future__ import annotations

from typing import Any

from endpoints.models import (
    WORKLOAD_CONCURRENCY,
    ComputeConfig,
    ServingEndpoint,
)
from endpoints.targets import ALIAS_PREFIX, alias_name, is_alias


def target_json(target: str) -> dict[str, str]:
    """``{"stage": …}`` or, for an MLflow alias, ``{"alias": …}``."""
    return {"alias": alias_name(target)} if is_alias(target) else {"stage": target}


def workload_spec_json(config: ComputeConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workload_size_id": config.workload_size,
        "scale_to_zero_enabled": config.scale_to_zero_enabled,
    }
    # Present only when on, so the shape of a config without batching is unchanged.
    if config.batching_enabled:
        spec["batching"] = {
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        }
    return spec


def compute_config_json(config: ComputeConfig | None) -> dict[str, Any] | None:
    """A stage's config names its ``stage``; an MLflow alias's names its ``alias``."""
    if config is None:
        return None
    return {
        **target_json(config.stage),
        "creation_timestamp": config.creation_timestamp,
        "user_id": config.user_id,
        "workload_spec": workload_spec_json(config),
    }


def alias_config_targets(endpoint: ServingEndpoint) -> list[str]:
    """``@<alias>`` targets with a compute config, of the aliases the endpoint serves."""
    targets = endpoint.compute_configs.filter(stage__startswith=ALIAS_PREFIX).values_list(
        "stage", flat=True
    )
    return sorted({t for t in targets if endpoint.serves_alias(alias_name(t))})


def supported_workload_sizes() -> list[dict[str, Any]]:
    return [
        {"workload_size_id": size, "min_concurrency": low, "max_concurrency": high}
        for size, (low, high) in WORKLOAD_CONCURRENCY.items()
    ]
