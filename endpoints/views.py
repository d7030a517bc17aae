"""The web UI: server-rendered pages with htmx partials."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from . import registry


@login_required
def models_list(request: HttpRequest) -> HttpResponse:
    return render(request, "endpoints/models_list.html", {"models": registry.list_models()})
