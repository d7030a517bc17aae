"""One request through the front door's ASGI app in process (no web server), and a fresh
gateway built from the settings as a test left them."""

from __future__ import annotations

import asyncio
import json

import pytest

from endpoints.gateway import front
from endpoints.gateway.scoring import Gateway

SCORING = "/model-endpoint/iris/Production/invocations"


def call(
    *,
    scheme: str = "http",
    host: str = "127.0.0.1:8000",
    headers=(),
    path: str = SCORING,
    method: str = "POST",
) -> tuple[int, dict[bytes, bytes], dict]:
    """One request through the front door; (status, headers, JSON body)."""
    pages = []

    async def django_app(scope, receive, send):
        pages.append(scope)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "scheme": scheme,
        "headers": [(b"host", host.encode()), *headers],
    }
    messages = iter([{"type": "http.request", "body": b"{}", "more_body": False}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    asyncio.run(front.FrontDoor(django_app)(scope, receive, send))
    assert not pages  # scoring never reaches Django
    start, body = sent[0], sent[1]
    return start["status"], dict(start["headers"]), json.loads(body["body"])


def fresh_gateway(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """A gateway process built from the settings as they are now, which the front door
    uses until the test ends."""
    gateway = Gateway()
    monkeypatch.setattr(front, "gateway", lambda: gateway)
    return gateway
