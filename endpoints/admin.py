"""Django admin for operators.

Rows are read here; every change goes through the same services as the UI and the API, so
it records its Event, tells gateways to reload their caches and asks a worker to
reconcile. Fields a service owns are read-only: serving is switched by the enable and
disable actions, compute configs are never edited in place (a new row is the change, made
in the UI or the API), tokens are revoked by an action, and permission edits call
``services.permission_set``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from . import services
from .errors import PermissionDenied, ServingError
from .models import (
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    EndpointVersion,
    Event,
    Replica,
    ServicePrincipal,
    ServingEndpoint,
    StageAlias,
)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ComputeConfigInline(ReadOnlyInline):
    model = ComputeConfig
    fields = ("stage", "summary", "user_id", "creation_timestamp")
    readonly_fields = fields


class EndpointPermissionInline(ReadOnlyInline):
    model = EndpointPermission
    fields = ("user", "level", "created_at")
    readonly_fields = fields


@admin.register(ServingEndpoint)
class ServingEndpointAdmin(admin.ModelAdmin):
    list_display = ("registered_model_name", "enabled", "state", "creator", "updated_at")
    list_filter = ("enabled", "state")
    search_fields = ("registered_model_name",)
    list_select_related = ("creator",)
    readonly_fields = (
        "registered_model_name",
        "enabled",
        "creator",
        "state",
        "state_message",
        "created_at",
        "updated_at",
    )
    inlines = [ComputeConfigInline, EndpointPermissionInline]
    actions = ["enable", "disable", "reconcile_now"]

    # Serving starts with the enable action (or the UI and API) and a row outlives it:
    # deleting one would orphan its replicas and its history.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Enable serving of selected endpoints")
    def enable(self, request: HttpRequest, queryset: QuerySet[ServingEndpoint]) -> None:
        done = _each(
            request,
            self,
            queryset,
            lambda e: services.endpoint_enable(name=e.registered_model_name, user=request.user),
        )
        self.message_user(request, f"Serving enabled for {done} endpoint(s).", messages.SUCCESS)

    @admin.action(description="Disable serving of selected endpoints")
    def disable(self, request: HttpRequest, queryset: QuerySet[ServingEndpoint]) -> None:
        done = _each(
            request,
            self,
            queryset,
            lambda e: services.endpoint_disable(name=e.registered_model_name, user=request.user),
        )
        self.message_user(request, f"Serving disabled for {done} endpoint(s).", messages.SUCCESS)

    @admin.action(description="Reconcile selected endpoints now")
    def reconcile_now(self, request: HttpRequest, queryset: QuerySet[ServingEndpoint]) -> None:
        for endpoint in queryset:
            services.request_reconcile(endpoint)
        self.message_user(
            request, f"Reconcile requested for {queryset.count()} endpoint(s).", messages.SUCCESS
        )


def _each(
    request: HttpRequest,
    model_admin: admin.ModelAdmin,
    queryset: QuerySet,
    call: Callable[[Any], object],
) -> int:
    """Call ``call`` on every row; a refusal is shown and the other rows still go ahead."""
    done = 0
    for row in queryset:
        try:
            call(row)
        except ServingError as exc:
            model_admin.message_user(request, f"{row}: {exc.message}", messages.ERROR)
        else:
            done += 1
    return done


@admin.register(ComputeConfig)
class ComputeConfigAdmin(admin.ModelAdmin):
    """Compute configs are immutable: the newest row of a stage is the desired one, and the
    worker rolls out a new row, never an edited one."""

    list_display = (
        "endpoint",
        "stage",
        "workload_size",
        "workload_type",
        "scale_to_zero_enabled",
        "summary",
        "user_id",
        "creation_timestamp",
    )
    list_filter = ("stage", "workload_size", "workload_type", "scale_to_zero_enabled")
    search_fields = ("endpoint__registered_model_name", "user_id")
    list_select_related = ("endpoint",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ReplicaInline(admin.TabularInline):
    model = Replica
    extra = 0
    fields = ("replica_id", "state", "host", "port", "node", "pid", "restarts", "started_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True


@admin.register(EndpointVersion)
class EndpointVersionAdmin(admin.ModelAdmin):
    list_display = (
        "endpoint",
        "version",
        "registry_stage",
        "desired",
        "service_state",
        "config_update_state",
        "desired_replicas",
    )
    list_filter = ("service_state", "config_update_state", "registry_stage", "desired")
    search_fields = ("endpoint__registered_model_name", "version")
    list_select_related = ("endpoint",)
    readonly_fields = (
        "service_state",
        "service_message",
        "service_config",
        "config_update_state",
        "config_update_message",
        "target_config",
        "model_path",
        "environment_path",
        "build_log_path",
        "start_failures",
        "created_at",
        "ready_at",
    )
    inlines = [ReplicaInline]


@admin.register(StageAlias)
class StageAliasAdmin(admin.ModelAdmin):
    list_display = ("endpoint", "stage", "version", "updated_at")
    list_filter = ("stage",)
    list_select_related = ("endpoint", "version")
    readonly_fields = ("endpoint", "stage", "version", "updated_at")


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = (
        "replica_id",
        "version",
        "state",
        "address",
        "node",
        "gpu_devices",
        "pid",
        "restarts",
        "probe_failures",
        "started_at",
    )
    list_filter = ("state",)
    search_fields = ("replica_id", "version__endpoint__registered_model_name")
    list_select_related = ("version", "version__endpoint")
    readonly_fields = [f.name for f in Replica._meta.fields]


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = (
        "timestamp",
        "endpoint",
        "type",
        "level",
        "endpoint_version_name",
        "replica_id",
        "message",
    )
    list_filter = ("level", "type")
    search_fields = ("endpoint__registered_model_name", "message")
    list_select_related = ("endpoint",)
    readonly_fields = [f.name for f in Event._meta.fields]


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    list_display = (
        "prefix",
        "name",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    # Gateways cache tokens: only the revoke service tells them a token stopped working.
    readonly_fields = [f.name for f in AccessToken._meta.fields]
    actions = ["revoke"]

    # Nothing here may create a token without showing it once, or delete one unnoticed.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        done = _each(
            request,
            self,
            queryset,
            lambda t: services.token_revoke(token_id=t.pk, user=request.user),
        )
        self.message_user(request, f"Revoked {done} token(s).", messages.SUCCESS)


@admin.register(ServicePrincipal)
class ServicePrincipalAdmin(admin.ModelAdmin):
    list_display = ("user", "display_name", "created_by", "created_at")
    search_fields = ("user__username", "display_name")
    list_select_related = ("user", "created_by")
    # A principal is created with its own user, one that cannot log in, by the service.
    readonly_fields = ("user", "created_by", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(EndpointPermission)
class EndpointPermissionAdmin(admin.ModelAdmin):
    """Grants are written by ``services.permission_set``: it checks CAN_MANAGE, records an
    Event and tells gateways to reload who may query what."""

    list_display = ("endpoint", "user", "level", "created_at")
    list_filter = ("level",)
    search_fields = ("endpoint__registered_model_name", "user__username")
    list_select_related = ("endpoint", "user")
    autocomplete_fields = ("user",)

    def get_readonly_fields(self, request: HttpRequest, obj: EndpointPermission | None = None):
        # Only the level of an existing grant changes; another user or endpoint is a new grant.
        return ("endpoint", "user", "created_at") if obj is not None else ("created_at",)

    def save_model(
        self, request: HttpRequest, obj: EndpointPermission, form: ModelForm, change: bool
    ) -> None:
        permission = _permission_set(request, obj, obj.level)
        obj.pk = permission.pk

    def delete_model(self, request: HttpRequest, obj: EndpointPermission) -> None:
        _permission_set(request, obj, None)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[EndpointPermission]) -> None:
        for permission in queryset.select_related("endpoint", "user"):
            _permission_set(request, permission, None)


def _permission_set(
    request: HttpRequest, grant: EndpointPermission, level: str | None
) -> EndpointPermission | None:
    try:
        return services.permission_set(
            endpoint=grant.endpoint, user=grant.user, level=level, by=request.user
        )
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(exc.message) from exc
