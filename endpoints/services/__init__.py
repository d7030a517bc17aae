"""Writes of desired state, by what they change. Views, API views, admin actions and
management commands all call these; none of them starts a process. Each is keyword-only,
checks permissions, writes in one transaction, records an Event and asks a worker to
reconcile once the transaction commits (the periodic reconcile would get there anyway).

- ``endpoints``: serving on and off, stage transitions, the endpoint a user may act on;
- ``compute``: compute configs per target (their limits, GPUs and autoscaling checked),
  retrying a failed rollout;
- ``access``: tokens, service principals, permissions;
- ``traffic``: MLflow aliases, traffic splits, inference tables;
- ``invalidation``: gateways drop their caches whenever who may do what changes.
"""

from .access import (
    access_control_set,
    permission_set,
    service_principal_create,
    service_principal_token_create,
    token_create,
    token_expiry,
    token_revoke,
)
from .compute import check_overrides, compute_config_restart, compute_config_update
from .endpoints import (
    endpoint_disable,
    endpoint_enable,
    get_endpoint_for_user,
    model_version_transition,
    request_reconcile,
    user_label,
)
from .invalidation import invalidate_caches
from .traffic import (
    inference_table_update,
    model_alias_set,
    served_aliases_set,
    traffic_split_promote,
    traffic_split_rollback,
    traffic_split_set,
)

__all__ = [
    "access_control_set",
    "check_overrides",
    "compute_config_restart",
    "compute_config_update",
    "endpoint_disable",
    "endpoint_enable",
    "get_endpoint_for_user",
    "inference_table_update",
    "invalidate_caches",
    "model_alias_set",
    "model_version_transition",
    "permission_set",
    "request_reconcile",
    "served_aliases_set",
    "service_principal_create",
    "service_principal_token_create",
    "token_create",
    "token_expiry",
    "token_revoke",
    "traffic_split_promote",
    "traffic_split_rollback",
    "traffic_split_set",
    "user_label",
]
