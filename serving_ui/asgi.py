"""ASGI entry point: the front door on the public port (see ``endpoints.gateway.server``).

Scoring requests (``/model/…`` and ``/model-endpoint/…``) are answered by the gateway on
the event loop. Everything else (UI, API, admin) is Django's WSGI app in a thread pool
(a2wsgi): it served the login page at 2.5x the rate of Django's own ASGI handler here,
whose per-request thread hand-offs cost more than the page (docs/performance.md). Each
request's body is read on the loop first (``whole_body``), so slow clients never hold a
thread.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_ui.settings")

django_application = get_wsgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402

from endpoints.gateway.front import FrontDoor  # noqa: E402  (needs Django set up)

# Threads per process for pages: each runs one view at a time, bodies are already read.
PAGE_THREADS = 16

application = FrontDoor(WSGIMiddleware(django_application, workers=PAGE_THREADS))
