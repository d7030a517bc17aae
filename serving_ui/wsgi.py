"""WSGI entry point for the Django part only (UI, API, admin).

The product serves everything through the ASGI front door (``serving_ui.asgi``, see
``endpoints.gateway.server``), which also answers scoring URLs; this entry point is for
running the web pages under a WSGI server of one's own, without scoring.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_ui.settings")

application = get_wsgi_application()
