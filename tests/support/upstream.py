"""The gateway's upstream clients in tests: a process keeps its pool of kept connections to
replicas for as long as it runs; a test closes the pool it made once it is done."""

from __future__ import annotations

from endpoints.gateway.upstream_async import StreamUpstream
from endpoints.gateway.upstream_blocking import Upstream


def close_pool(upstream: Upstream | StreamUpstream) -> None:
    """Close every connection ``upstream`` keeps (a ``StreamUpstream``'s on its own loop,
    which must then run once more for the sockets to close)."""
    for connections in upstream._idle.values():
        for connection in connections:
            connection.close()
    upstream._idle.clear()
