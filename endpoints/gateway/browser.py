"""The web UI's **Send Request** on the scoring URLs: the browser posts the request box to
the version's URL itself, with the logged-in user's session instead of a token, so the
front door answers it on its event loop like any client's request (a slow model holds no
page thread) and captures it the same way.

A session alone is not enough: Django's own CSRF check (the ``X-CSRFToken`` header against
the CSRF cookie, and the ``Origin`` against the host) runs on a request built from the
ASGI scope, so another site cannot score with a visitor's session.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AbstractBaseUser
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from django.http.cookie import parse_cookie
from django.middleware.csrf import CsrfViewMiddleware

from endpoints.errors import PermissionDenied, Unauthenticated

from .routing import run_db


def has_session(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an ASGI request's headers carry the web UI's session cookie."""
    name = settings.SESSION_COOKIE_NAME
    return any(
        key == b"cookie" and name in parse_cookie(value.decode("latin-1")) for key, value in headers
    )


def session_user(scope: dict[str, Any]) -> AbstractBaseUser:
    """The logged-in user of a scoring request sent by the web UI (``scope`` is its ASGI
    scope). Raises PermissionDenied when it fails the CSRF check, Unauthenticated when its
    session is not a logged-in one. Queries the database: not for the event loop."""
    # The body is never read: the CSRF token must come in the header.
    request = ASGIRequest(scope, io.BytesIO())
    if _csrf_refused(request):
        raise PermissionDenied(
            "The request failed the CSRF check (it must come from the Serving tab): reload "
            "the page and send it again, or send it with an access token."
        )
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    user = run_db(auth.get_user, request)
    if not user.is_authenticated:
        raise Unauthenticated("Your session has ended: log in again, or send an access token.")
    return user


def _csrf_refused(request: HttpRequest) -> bool:
    """Django's CSRF check, as its middleware runs it before a view (it logs a refusal)."""
    middleware = CsrfViewMiddleware(lambda request: HttpResponse())
    return middleware.process_view(request, None, (), {}) is not None
