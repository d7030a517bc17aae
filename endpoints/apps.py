from __future__ import annotations

from django.apps import AppConfig


class EndpointsConfig(AppConfig):
    name = "endpoints"
    verbose_name = "Serving endpoints"

    def ready(self) -> None:
        # Any write that changes who may do what refreshes the gateways' caches.
        from .services import invalidation

        invalidation.connect()
