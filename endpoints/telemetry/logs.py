"""Reading replica output (service logs) and environment build output (build logs).

Only what the Logs tab and the API show is read, from the end of each file: at most
``MAX_LOG_BYTES`` in all, for the ``REPLICAS_SHOWN`` newest replicas (the tabs the page
offers), never a whole file. Who may read logs (CAN_MANAGE: a model may print request
data) is checked by the callers; see docs/security.md.
"""

from __future__ import annotations

from endpoints.models import EndpointVersion, Replica
from endpoints.runtime import get_runtime

# How much output the Logs tab and the API return, all replicas together.
MAX_LOG_BYTES = 256 * 1024
# The replicas whose output the merged view shows (the page has one tab for each).
REPLICAS_SHOWN = 20
# Each replica's share of the merged view is at least this much.
MIN_SHARE_BYTES = 8 * 1024
MAX_MERGED_LINES = 5000


def replica_log(replica: Replica, *, max_bytes: int = MAX_LOG_BYTES) -> str:
    if not replica.log_path:
        return ""
    return get_runtime().read_log(replica.log_path, max_bytes=max_bytes)


def service_logs(
    version: EndpointVersion, *, replica_id: str | None = None, max_bytes: int = MAX_LOG_BYTES
) -> str:
    """One replica's output, or the newest replicas' merged with each line prefixed by its
    id.

    Lines are grouped per replica in start order (the output carries no reliable timestamp
    per line); terminated replicas are included while their logs are kept."""
    if replica_id:
        replica = version.replicas.filter(replica_id=replica_id).first()
        return replica_log(replica, max_bytes=max_bytes) if replica else ""
    shown = list(version.replicas.order_by("-created_at")[:REPLICAS_SHOWN])
    share = max(max_bytes // max(len(shown), 1), MIN_SHARE_BYTES)
    lines: list[str] = []
    for replica in reversed(shown):
        text = replica_log(replica, max_bytes=share)
        lines.extend(f"[{replica.replica_id}] {line}" for line in text.splitlines())
    return "\n".join(lines[-MAX_MERGED_LINES:])


def build_logs(version: EndpointVersion) -> str:
    if not version.build_log_path:
        return ""
    return get_runtime().read_log(version.build_log_path, max_bytes=MAX_LOG_BYTES)
