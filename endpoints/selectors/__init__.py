"""Reads: the JSON shapes the REST API answers with (the UI renders the same dicts), and
the queries behind them, by what they read. Restricted reads check the caller here, so
every interface gets the same answer: an endpoint the user may not view does not exist,
service principals are for admins.

- ``endpoints``: endpoints, versions, replicas, events, metrics;
- ``compute``: compute configs, workload sizes and types, the installation's GPUs;
- ``access``: users, grants, tokens, service principals;
- ``traffic``: traffic splits, inference tables.
"""

from .access import (
    access_control_list_json,
    active_tokens,
    endpoint_grants,
    may_list_users,
    service_principal_named,
    service_principals,
    unrevoked_tokens,
    user_named,
)
from .compute import (
    alias_config_targets,
    compute_config_json,
    gpu_source,
    installation_gpus,
    supported_workload_sizes,
    supported_workload_types,
    target_json,
    workload_spec_json,
)
from .endpoints import (
    DEFAULT_METRICS_WINDOW_MS,
    aliases_json,
    deployed_versions,
    enabled_endpoint,
    enabled_endpoints,
    endpoint_events,
    endpoint_status_json,
    endpoint_version,
    endpoints_visible_to,
    event_json,
    live_replicas,
    replica_json,
    sidebar_label,
    version_metrics,
    version_replica,
    version_status_json,
)
from .traffic import (
    inference_table_json,
    inference_table_read,
    traffic_splits_json,
    unreadable_message,
)

__all__ = [
    "DEFAULT_METRICS_WINDOW_MS",
    "access_control_list_json",
    "active_tokens",
    "alias_config_targets",
    "aliases_json",
    "compute_config_json",
    "deployed_versions",
    "enabled_endpoint",
    "enabled_endpoints",
    "endpoint_events",
    "endpoint_grants",
    "endpoint_status_json",
    "endpoint_version",
    "endpoints_visible_to",
    "event_json",
    "gpu_source",
    "inference_table_json",
    "inference_table_read",
    "installation_gpus",
    "live_replicas",
    "may_list_users",
    "replica_json",
    "service_principal_named",
    "service_principals",
    "sidebar_label",
    "supported_workload_sizes",
    "supported_workload_types",
    "target_json",
    "traffic_splits_json",
    "unreadable_message",
    "unrevoked_tokens",
    "user_named",
    "version_metrics",
    "version_replica",
    "version_status_json",
    "workload_spec_json",
]
