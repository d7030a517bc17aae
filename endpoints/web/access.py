"""The web UI's access pages: an endpoint's permissions, access tokens and service principals.

Who may do what is checked by the services and selectors these views call: CAN_MANAGE for
permissions, the token's owner (or an admin) to revoke it, admins for service principals.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from endpoints import selectors, services
from endpoints.errors import NotFound, ServingError
from endpoints.models import PermissionLevel, ServicePrincipal

from . import presenters
from .forms import PermissionForm, ServicePrincipalForm, TokenForm
from .shortcuts import http_errors, registered_model, show_error


@login_required
@require_http_methods(["GET", "POST"])
@http_errors
def permissions(request: HttpRequest, name: str) -> HttpResponse:
    endpoint = services.get_endpoint_for_user(name, request.user, PermissionLevel.CAN_MANAGE)
    form = PermissionForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["username"]
        try:
            services.permission_set(
                endpoint=endpoint,
                user=selectors.user_named(username, by=request.user),
                level=form.cleaned_data["level"] or None,
                by=request.user,
            )
        except NotFound:
            form.add_error("username", "No user with that name.")
            status = 400
        except ServingError as exc:
            show_error(request, exc)
            status = exc.status
        else:
            messages.success(request, f"Permissions of {username} saved.")
            return redirect("permissions", name)
    elif request.method == "POST":
        status = 400
    context = presenters.permissions(
        model=registered_model(name), user=request.user, endpoint=endpoint, form=form
    )
    return render(request, "endpoints/permissions.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            days = form.cleaned_data["expires_in_days"]
            lifetime = days * 24 * 3600 if days else None
            # The plaintext is rendered in this response only: no redirect may lose it.
            token, plaintext = services.token_create(
                user=request.user,
                name=form.cleaned_data["name"],
                expires_at=services.token_expiry(lifetime_seconds=lifetime),
            )
            created = {"token": token, "plaintext": plaintext}
            form = TokenForm()
        else:
            status = 400
    context = presenters.tokens(user=request.user, form=form, created=created)
    return render(request, "endpoints/tokens.html", context, status=status)


@login_required
@require_POST
@http_errors
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = services.token_revoke(token_id=pk, user=request.user)
    messages.success(request, f"Token {token.prefix}… revoked.")
    if token.user_id != request.user.pk:
        return redirect("principals")
    return redirect("tokens")


@login_required
@require_http_methods(["GET", "POST"])
@http_errors
def principals(request: HttpRequest) -> HttpResponse:
    listed = selectors.service_principals(user=request.user)
    form = ServicePrincipalForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                principal = services.service_principal_create(
                    username=form.cleaned_data["username"],
                    display_name=form.cleaned_data["display_name"],
                    by=request.user,
                )
            except ServingError as exc:
                form.add_error("username", exc.message)
                status = exc.status
            else:
                messages.success(request, f"Service principal {principal} created.")
                return redirect("principals")
        else:
            status = 400
    return _render_principals(request, listed=listed, form=form, created=None, status=status)


@login_required
@require_POST
@http_errors
def principal_token(request: HttpRequest, pk: int) -> HttpResponse:
    listed = selectors.service_principals(user=request.user)
    principal = get_object_or_404(listed, pk=pk)
    form = TokenForm(request.POST)
    token, plaintext = services.service_principal_token_create(
        principal=principal,
        by=request.user,
        name=form.cleaned_data["name"] if form.is_valid() else "",
    )
    created = {"token": token, "plaintext": plaintext, "principal": principal}
    return _render_principals(request, listed=listed, form=ServicePrincipalForm(), created=created)


def _render_principals(
    request: HttpRequest,
    *,
    listed: QuerySet[ServicePrincipal],
    form: Form,
    created: dict | None,
    status: int = 200,
) -> HttpResponse:
    context = presenters.principals(principals=listed, form=form, created=created)
    return render(request, "endpoints/principals.html", context, status=status)
