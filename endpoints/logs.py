"""Reading replica output (service logs) and environment build output (build logs)."""

from __future__ import annotations

from .models import EndpointVersion, Replica
from .runtime import get_runtime

# How much of each replica's output the Logs tab and the API return.
MAX_LOG_BYTES = 256 * 1024


def replica_log(replica: Replica, *, max_bytes: int = MAX_LOG_BYTES) -> str:
    if not replica.log_path:
        return ""
    return get_runtime().read_log(replica.log_path, max_bytes=max_bytes)


def service_logs(
    version: EndpointVersion, *, replica_id: str | None = None, max_bytes: int = MAX_LOG_BYTES
) -> str:
    """One replica's output, or every replica's merged with each line prefixed by its id.

    Lines are grouped per replica in start order (the output carries no reliable timestamp
    per line); terminated replicas are included while their logs are kept."""
    replicas = version.replicas.order_by("created_at")
    if replica_id:
        replica = replicas.filter(replica_id=replica_id).first()
        return replica_log(replica, max_bytes=max_bytes) if replica else ""
    lines: list[str] = []
    for replica in replicas:
        text = replica_log(replica, max_bytes=max_bytes)
        lines.extend(f"[{replica.replica_id}] {line}" for line in text.splitlines())
    return "\n".join(lines[-5000:])


def build_logs(version: EndpointVersion) -> str:
    if not version.build_log_path:
        return ""
    return get_runtime().read_log(version.build_log_path, max_bytes=MAX_LOG_BYTES)
