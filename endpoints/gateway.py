"""The scoring gateway: ``/model-endpoint/<name>/<stage|version>/invocations`` and
``/model/<name>/<stage|version>/invocations``.

A plain WSGI callable placed in front of Django (see serving_ui/wsgi.py): scoring requests
never pay for Django's middleware stack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

GATEWAY_PREFIXES = ("/model-endpoint/", "/model/")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class GatewayApplication:
    def __init__(self, django_app: WSGIApp) -> None:
        self.django_app = django_app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        return self.django_app(environ, start_response)
