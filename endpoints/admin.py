"""Django admin for operators: desired state is editable, observed state is read-only."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
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


class ComputeConfigInline(admin.TabularInline):
    model = ComputeConfig
    extra = 0
    fields = ("stage", "workload_size", "scale_to_zero_enabled", "user_id", "creation_timestamp")
    readonly_fields = fields
    can_delete = False


class EndpointPermissionInline(admin.TabularInline):
    model = EndpointPermission
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(ServingEndpoint)
class ServingEndpointAdmin(admin.ModelAdmin):
    list_display = ("registered_model_name", "enabled", "state", "creator", "updated_at")
    list_filter = ("enabled", "state")
    search_fields = ("registered_model_name",)
    list_select_related = ("creator",)
    readonly_fields = ("state", "state_message", "created_at", "updated_at")
    inlines = [ComputeConfigInline, EndpointPermissionInline]
    actions = ["reconcile_now"]

    @admin.action(description="Reconcile selected endpoints now")
    def reconcile_now(self, request: HttpRequest, queryset: QuerySet[ServingEndpoint]) -> None:
        for endpoint in queryset:
            services.request_reconcile(endpoint)
        self.message_user(
            request, f"Reconcile requested for {queryset.count()} endpoint(s).", messages.SUCCESS
        )


@admin.register(ComputeConfig)
class ComputeConfigAdmin(admin.ModelAdmin):
    list_display = (
        "endpoint",
        "stage",
        "workload_size",
        "scale_to_zero_enabled",
        "user_id",
        "creation_timestamp",
    )
    list_filter = ("stage", "workload_size", "scale_to_zero_enabled")
    search_fields = ("endpoint__registered_model_name", "user_id")
    list_select_related = ("endpoint",)


class ReplicaInline(admin.TabularInline):
    model = Replica
    extra = 0
    fields = ("replica_id", "state", "host", "port", "pid", "restarts", "started_at")
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
    # The hash is not secret, but nothing here may create a token without showing it once.
    readonly_fields = ("user", "prefix", "token_hash", "created_at", "last_used_at")
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        for token in queryset:
            services.token_revoke(token_id=token.pk, user=request.user)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)


@admin.register(ServicePrincipal)
class ServicePrincipalAdmin(admin.ModelAdmin):
    list_display = ("user", "display_name", "created_by", "created_at")
    search_fields = ("user__username", "display_name")
    list_select_related = ("user", "created_by")


@admin.register(EndpointPermission)
class EndpointPermissionAdmin(admin.ModelAdmin):
    list_display = ("endpoint", "user", "level", "created_at")
    list_filter = ("level",)
    search_fields = ("endpoint__registered_model_name", "user__username")
    list_select_related = ("endpoint", "user")
    autocomplete_fields = ("user",)
