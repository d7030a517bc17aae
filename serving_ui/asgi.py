"""ASGI entry point: the front door on the public port (see ``endpoints.gateway.server``).

Scoring requests (``/model/…`` and ``/model-endpoint/…``) are answered by the gateway on
the event loop; everything else (UI, API, admin) goes to Django's ASGI handler.
See docs/performance.md.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_ui.settings")

django_application = get_asgi_application()

from endpoints.gateway.front import FrontDoor  # noqa: E402  (needs Django set up)

application = FrontDoor(django_application)
