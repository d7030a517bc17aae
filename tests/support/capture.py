"""Requests offered to the gateway's capture (``gateway/capture.py``) as the front door
offers them, for the inference tables' tests."""

from __future__ import annotations

from endpoints.gateway.capture import ROW_OVERHEAD_BYTES, Capture

REQUEST = b'{"inputs": [0]}'
RESPONSE = b'{"predictions": [0]}'
# What one offered row counts against the capture queue's byte budget.
ROW_BYTES = len(REQUEST) + len(RESPONSE) + ROW_OVERHEAD_BYTES


def offer(
    capture: Capture,
    rate: float = 1.0,
    i: int = 0,
    endpoint: str = "iris",
    request: bytes | None = None,
) -> None:
    """A scoring request of ``endpoint`` (the ``i``-th of ten different bodies, or
    ``request``) and its answer, offered at the sampling ``rate``."""
    capture.offer(
        rate,
        endpoint=endpoint,
        selector="@champion",
        version="2",
        status=200,
        latency_ms=1.5,
        token_id=7,
        request=request if request is not None else b'{"inputs": [%d]}' % (i % 10),
        response=RESPONSE,
    )
