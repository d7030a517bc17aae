"""WSGI entry point: the scoring gateway in front of Django.

Scoring requests (``/model/…`` and ``/model-endpoint/…``) are answered by the gateway's
own lean WSGI callable; everything else goes to Django. See docs/performance.md.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_ui.settings")

django_application = get_wsgi_application()

from endpoints.gateway.app import GatewayApplication  # noqa: E402  (needs Django set up)

application = GatewayApplication(django_application)
