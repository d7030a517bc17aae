"""What the UI's views share: service errors as HTTP answers, and the model a page is about."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse

from endpoints import registry
from endpoints.errors import NotFound, PermissionDenied, ServingError

View = Callable[..., HttpResponse]


def http_errors(view: View) -> View:
    """A service's NotFound becomes the 404 page and its PermissionDenied the 403 page;
    views catch the other errors themselves to show them in the page."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(exc.message) from exc
        except PermissionDenied as exc:
            raise DjangoPermissionDenied(exc.message) from exc

    return wrapper


def registered_model(name: str) -> registry.RegisteredModelInfo:
    try:
        return registry.get_model(name)
    except registry.ModelNotFound as exc:
        raise Http404(str(exc)) from exc


def show_error(request: HttpRequest, exc: ServingError) -> None:
    messages.error(request, exc.message)
