"""The REST API: the endpoints-v2 family, transition-stage, tokens, permissions and
service principals.

Every view is thin: parse the arguments with a serializer, call ``endpoints.services``
(writes) or ``endpoints.selectors`` / ``logs`` / ``metrics`` (reads), return the JSON.
Errors are ``endpoints.errors.ServingError`` subclasses rendered by the one exception
handler in ``endpoints.api.errors``.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
    renderer_classes,
)
from rest_framework.decorators import schema as view_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from endpoints import logs, metrics, selectors, services
from endpoints.errors import BadRequest, NotFound, PermissionDenied, Unavailable
from endpoints.models import (
    AccessToken,
    EndpointPermission,
    EndpointVersion,
    PermissionLevel,
    ServicePrincipal,
    ServingEndpoint,
)

from . import serializers as s
from .parsers import PARSERS
from .schema import JsonSchema
from .throttling import ManageRateThrottle

ENDPOINTS_V2 = "Serving endpoints (endpoints-v2)"
REGISTRY = "Model registry"
TOKENS = "Tokens"
PERMISSIONS = "Permissions"
PRINCIPALS = "Service principals"

# Statuses every call may answer besides 200: bad arguments, no or bad token, not allowed
# (or a session request without its CSRF token), no such endpoint.
_COMMON_ERRORS = (400, 401, 403, 404)


def doc(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    response: type[Serializer],
    request: type[Serializer] | None = None,
    query: type[Serializer] | None = None,
    errors: Iterable[int] = (),
    description: str = "",
) -> Callable:
    """The OpenAPI description of one operation, every status it answers included."""
    codes = sorted({*_COMMON_ERRORS, *errors})
    if request is not None:
        codes = sorted({*codes, 415})
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        description=description or None,
        tags=[tag],
        request=request,
        parameters=[query] if query is not None else None,
        responses={200: response, **dict.fromkeys(codes, s.ErrorResponse)},
    )


GET_ARGS = "Arguments as query parameters, or as a JSON body (as the reference API takes them)."


class ApiView(APIView):
    """JSON in, JSON out."""

    parser_classes = PARSERS
    renderer_classes = [JSONRenderer]
    schema = JsonSchema()


class ManageView(ApiView):
    """A call that changes state: rate limited (scope ``manage``)."""

    throttle_classes = [ManageRateThrottle]
    throttle_scope = "manage"


def parse(request: Request, serializer_class: type[Serializer]) -> dict[str, Any]:
    """Validated arguments: the JSON body, merged into the query parameters for a GET."""
    body = request.data
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if request.method == "GET":
        data: dict[str, Any] = {**request.query_params.dict(), **body}
        source = "query"
    else:
        data, source = body, "json"
    serializer = serializer_class(data=data, context={"source": source})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _registry_name(name: str) -> str:
    """``name`` if the registry could hold a model of that name, else it does not exist.

    MLflow refuses such names outright (empty, with '/' or ':', or one that resolves to
    another path); for the API they simply name no registered model."""
    normalized = posixpath.normpath(name)
    if (
        not name.strip()
        or "/" in name
        or ":" in name
        or normalized != name
        or normalized == "."
        or normalized.startswith("..")
    ):
        raise NotFound(f"Registered model '{name}' does not exist.")
    return name


def _version(endpoint: ServingEndpoint, name: str, *, served: bool = False) -> EndpointVersion:
    """A version of ``endpoint``: any it ever had, or only those serving now (``served``)."""
    versions = selectors.served_versions(endpoint) if served else endpoint.versions.all()
    version = versions.filter(version=name).first()
    if version is None:
        raise NotFound(
            f"Endpoint version '{name}' of registered model "
            f"'{endpoint.registered_model_name}' does not exist."
        )
    return version


def _version_for(request: Request, args: dict[str, Any]) -> EndpointVersion:
    endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
    return _version(endpoint, args["endpoint_version_name"])


def _require_admin(user: AbstractBaseUser) -> None:
    if not user.is_superuser:
        raise PermissionDenied("Only admins manage service principals.")


def _user_named(user_name: str) -> AbstractBaseUser:
    user = get_user_model().objects.filter(username=user_name).first()
    if user is None:
        raise NotFound(f"User '{user_name}' does not exist.")
    return user


def _expiry(lifetime_seconds: int | None):
    return (
        None if lifetime_seconds is None else timezone.now() + timedelta(seconds=lifetime_seconds)
    )


# --- endpoints-v2: enable / disable --------------------------------------------------------


class EnableView(ManageView):
    @doc(
        "endpointsV2Enable",
        "Enable serving for a registered model",
        tag=ENDPOINTS_V2,
        request=s.ModelNameRequest,
        response=s.EndpointStatusResponse,
        errors=(409, 429, 503),
        description="Needs the permission to create endpoints. Every version in Staging or "
        "Production is then served; the status is PENDING until they are up.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.ModelNameRequest)
        name = _registry_name(args["registered_model_name"])
        endpoint = services.endpoint_enable(name=name, user=request.user)
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


class DisableView(ManageView):
    @doc(
        "endpointsV2Disable",
        "Disable serving: every replica of the model stops",
        tag=ENDPOINTS_V2,
        request=s.ModelNameRequest,
        response=s.EndpointStatusResponse,
        errors=(429,),
        description="Needs CAN_MANAGE on the endpoint.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.ModelNameRequest)
        endpoint = services.endpoint_disable(name=args["registered_model_name"], user=request.user)
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


# --- endpoints-v2: status --------------------------------------------------------------------


class GetStatusView(ApiView):
    @doc(
        "endpointsV2GetStatus",
        "Status of a model's endpoint",
        tag=ENDPOINTS_V2,
        query=s.ModelNameRequest,
        response=s.EndpointStatusResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


class ListView(ApiView):
    @doc(
        "endpointsV2List",
        "Every endpoint the caller may view",
        tag=ENDPOINTS_V2,
        response=s.EndpointListResponse,
    )
    def get(self, request: Request) -> Response:
        endpoints = selectors.endpoints_visible_to(request.user)
        return Response({"endpoints": [selectors.endpoint_status_json(e) for e in endpoints]})


class ListVersionsView(ApiView):
    @doc(
        "endpointsV2ListVersions",
        "Status of every served version",
        tag=ENDPOINTS_V2,
        query=s.ModelNameRequest,
        response=s.VersionListResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        versions = selectors.served_versions(endpoint)
        return Response({"endpoint_statuses": [selectors.version_status_json(v) for v in versions]})


class GetVersionStatusView(ApiView):
    @doc(
        "endpointsV2GetVersionStatus",
        "Status of one served version",
        tag=ENDPOINTS_V2,
        query=s.VersionRequest,
        response=s.VersionStatusResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.VersionRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        version = _version(endpoint, args["endpoint_version_name"], served=True)
        return Response({"endpoint_status": selectors.version_status_json(version)})


class ListVersionAliasesView(ApiView):
    @doc(
        "endpointsV2ListVersionAliases",
        "Which version each stage URL answers with",
        tag=ENDPOINTS_V2,
        query=s.ModelNameRequest,
        response=s.AliasesResponse,
        description=GET_ARGS + " An alias moves to a new version only once it is ready.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response({"aliases": selectors.aliases_json(endpoint)})


class SupportedWorkloadSizesView(ApiView):
    @doc(
        "endpointsV2GetSupportedWorkloadSizes",
        "Workload sizes and their concurrency range",
        tag=ENDPOINTS_V2,
        response=s.WorkloadSizesResponse,
        description="With scale to zero enabled, a size's minimum concurrency becomes 0.",
    )
    def get(self, request: Request) -> Response:
        return Response({"workload_sizes": selectors.supported_workload_sizes()})


class VersionReplicasView(ApiView):
    @doc(
        "endpointsV2GetVersionReplicas",
        "Replicas (model server processes) of a version",
        tag=ENDPOINTS_V2,
        query=s.VersionRequest,
        response=s.ReplicasResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        version = _version_for(request, parse(request, s.VersionRequest))
        replicas = version.replicas.order_by("created_at")
        return Response({"replicas": [selectors.replica_json(r) for r in replicas]})


class EventHistoryView(ApiView):
    @doc(
        "endpointsV2GetEventHistory",
        "Service events of an endpoint, newest first",
        tag=ENDPOINTS_V2,
        query=s.EventHistoryRequest,
        response=s.EventsResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.EventHistoryRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        events = endpoint.events.all()
        if args.get("endpoint_version_name"):
            events = events.filter(endpoint_version_name=args["endpoint_version_name"])
        if args.get("start_timestamp") is not None:
            events = events.filter(timestamp__gte=args["start_timestamp"])
        events = events[: args["max_results"]]
        return Response({"events": [selectors.event_json(e) for e in events]})


class VersionMetricsView(ApiView):
    @doc(
        "endpointsV2GetVersionMetrics",
        "Requests, errors, latency and replicas over time, in 10-second buckets",
        tag=ENDPOINTS_V2,
        query=s.VersionMetricsRequest,
        response=s.MetricsResponse,
        errors=(503,),
        description=GET_ARGS + " At most the last 24 hours of the window are returned.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.VersionMetricsRequest)
        version = _version_for(request, args)
        end = args.get("end_timestamp")
        end = int(time.time() * 1000) if end is None else end
        start = args.get("start_timestamp")
        start = max(0, end - 3600 * 1000) if start is None else start
        try:
            points = metrics.series(version.pk, start, end)
        except redis.RedisError as exc:
            raise Unavailable(f"Metrics are unavailable: {exc}") from exc
        return Response({"metrics": points})


class VersionLogsView(ApiView):
    @doc(
        "endpointsV2GetVersionLogs",
        "Model server output of a version",
        tag=ENDPOINTS_V2,
        request=s.VersionLogsRequest,
        response=s.LogsResponse,
        description="All replicas merged, each line prefixed with its replica id, or the "
        "output of the replica named by replica_id.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.VersionLogsRequest)
        version = _version_for(request, args)
        replica_id = args.get("replica_id")
        if replica_id and not version.replicas.filter(replica_id=replica_id).exists():
            raise NotFound(f"Replica '{replica_id}' of version {version.version} does not exist.")
        return Response({"logs": logs.service_logs(version, replica_id=replica_id)})


class VersionBuildLogsView(ApiView):
    @doc(
        "endpointsV2GetVersionBuildLogs",
        "Environment build output of a version",
        tag=ENDPOINTS_V2,
        request=s.VersionRequest,
        response=s.LogsResponse,
    )
    def post(self, request: Request) -> Response:
        version = _version_for(request, parse(request, s.VersionRequest))
        return Response({"logs": logs.build_logs(version)})


# --- compute config ----------------------------------------------------------------------------


class RestartComputeConfigUpdateView(ManageView):
    @doc(
        "endpointsV2RestartComputeConfigUpdate",
        "Retry a failed compute config rollout of a stage",
        tag=ENDPOINTS_V2,
        request=s.RestartComputeConfigRequest,
        response=s.EndpointStatusResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. 400 when the stage has no failed rollout.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.RestartComputeConfigRequest)
        endpoint = services.compute_config_restart(
            name=args["registered_model_name"], stage=args["stage"], user=request.user
        )
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


class UpdateComputeConfigView(ManageView):
    @doc(
        "endpointsV2UpdateComputeConfig",
        "Set a stage's workload size and scale to zero",
        tag=ENDPOINTS_V2,
        request=s.UpdateComputeConfigRequest,
        response=s.ComputeConfigResponse,
        errors=(409, 429),
        description="Needs CAN_MANAGE. The change rolls out asynchronously: follow "
        "config_update_status in list-versions. 409 while a rollout of the stage runs.",
    )
    def put(self, request: Request) -> Response:
        args = parse(request, s.UpdateComputeConfigRequest)
        spec = args["desired_workload_config_spec"]
        config = services.compute_config_update(
            name=args["registered_model_name"],
            stage=args["stage"],
            workload_size=spec["workload_size_id"],
            scale_to_zero_enabled=spec["scale_to_zero_enabled"],
            user=request.user,
        )
        return Response({"compute_config": selectors.compute_config_json(config)})


# --- model registry: transition-stage ------------------------------------------------------


class TransitionStageView(ManageView):
    def post(self, request: Request) -> Response:
        args = parse(request, s.TransitionStageRequest)
        info = services.model_version_transition(
            name=_registry_name(args["name"]),
            version=args["version"],
            stage=args["stage"],
            archive_existing_versions=args["archive_existing_versions"],
            comment=args["comment"],
            user=request.user,
        )
        return Response({"model_version": info.as_mlflow_json()})


def _transition_doc(operation_id: str) -> Callable:
    return doc(
        operation_id,
        "Move a model version to a stage",
        tag=REGISTRY,
        request=s.TransitionStageRequest,
        response=s.ModelVersionResponse,
        errors=(429, 503),
        description="Performs the transition in the MLflow registry and starts serving the "
        "version when the stage is served. A stage URL moves to the new version only once it "
        "is ready. Needs CAN_MANAGE on the endpoint (or the permission to create endpoints "
        "when serving is off).",
    )


class DatabricksTransitionStageView(TransitionStageView):
    @_transition_doc("databricksTransitionStage")
    def post(self, request: Request) -> Response:
        return super().post(request)


class MlflowTransitionStageView(TransitionStageView):
    @_transition_doc("mlflowTransitionStage")
    def post(self, request: Request) -> Response:
        return super().post(request)


# --- tokens ------------------------------------------------------------------------------------


class TokenCreateView(ManageView):
    @doc(
        "tokenCreate",
        "Create a personal access token",
        tag=TOKENS,
        request=s.TokenCreateRequest,
        response=s.TokenCreateResponse,
        errors=(429,),
        description="token_value is shown only in this answer; only its hash is stored.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.TokenCreateRequest)
        token, plaintext = services.token_create(
            user=request.user, name=args["comment"], expires_at=_expiry(args["lifetime_seconds"])
        )
        return Response({"token_value": plaintext, "token_info": s.TokenInfo(token).data})


class TokenListView(ApiView):
    @doc("tokenList", "The caller's active tokens", tag=TOKENS, response=s.TokenListResponse)
    def get(self, request: Request) -> Response:
        tokens = AccessToken.objects.active().filter(user=request.user)
        return Response({"token_infos": s.TokenInfo(tokens, many=True).data})


class TokenDeleteView(ManageView):
    @doc(
        "tokenDelete",
        "Revoke one of the caller's tokens",
        tag=TOKENS,
        request=s.TokenDeleteRequest,
        response=s.EmptyResponse,
        errors=(429,),
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.TokenDeleteRequest)
        services.token_revoke(token_id=int(args["token_id"]), user=request.user)
        return Response({})


# --- permissions ---------------------------------------------------------------------------------


def _access_control_list(endpoint: ServingEndpoint) -> dict[str, Any]:
    entries = []
    if endpoint.creator is not None:
        entries.append(
            {
                "user_name": endpoint.creator.get_username(),
                "permission_level": PermissionLevel.CAN_MANAGE,
                "inherited": True,
            }
        )
    grants = EndpointPermission.objects.filter(endpoint=endpoint).select_related("user")
    entries.extend(
        {"user_name": g.user.get_username(), "permission_level": g.level, "inherited": False}
        for g in grants.order_by("user__username")
    )
    return {"registered_model_name": endpoint.registered_model_name, "access_control_list": entries}


class GetPermissionsView(ApiView):
    @doc(
        "endpointsV2GetPermissions",
        "Who may view, query or manage an endpoint",
        tag=PERMISSIONS,
        query=s.ModelNameRequest,
        response=s.PermissionsResponse,
        description=GET_ARGS + " Admins hold CAN_MANAGE everywhere and are not listed.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, s.ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response(_access_control_list(endpoint))


class SetPermissionsView(ManageView):
    @doc(
        "endpointsV2SetPermissions",
        "Grant or remove users' permissions on an endpoint",
        tag=PERMISSIONS,
        request=s.SetPermissionsRequest,
        response=s.PermissionsResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. A null permission_level removes the user's grant. "
        "All entries apply, or none.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.SetPermissionsRequest)
        endpoint = services.get_endpoint_for_user(
            args["registered_model_name"], request.user, PermissionLevel.CAN_MANAGE
        )
        with transaction.atomic():
            for entry in args["access_control_list"]:
                services.permission_set(
                    endpoint=endpoint,
                    user=_user_named(entry["user_name"]),
                    level=entry["permission_level"],
                    by=request.user,
                )
        return Response(_access_control_list(endpoint))


# --- service principals (admins) -------------------------------------------------------------


class ServicePrincipalCreateView(ManageView):
    @doc(
        "servicePrincipalCreate",
        "Create a service principal (admins)",
        tag=PRINCIPALS,
        request=s.ServicePrincipalCreateRequest,
        response=s.ServicePrincipalResponse,
        errors=(409, 429),
        description="A non-human identity for automation: it cannot log in to the UI, it "
        "holds tokens and per-endpoint permissions like a user.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, s.ServicePrincipalCreateRequest)
        principal = services.service_principal_create(
            username=args["user_name"], display_name=args["display_name"], by=request.user
        )
        return Response({"service_principal": s.ServicePrincipalInfo(principal).data})


class ServicePrincipalListView(ApiView):
    @doc(
        "servicePrincipalList",
        "Every service principal (admins)",
        tag=PRINCIPALS,
        response=s.ServicePrincipalListResponse,
    )
    def get(self, request: Request) -> Response:
        _require_admin(request.user)
        principals = ServicePrincipal.objects.select_related("user")
        return Response({"service_principals": s.ServicePrincipalInfo(principals, many=True).data})


class ServicePrincipalTokenView(ManageView):
    @doc(
        "servicePrincipalCreateToken",
        "Create a token for a service principal (admins)",
        tag=PRINCIPALS,
        request=s.ServicePrincipalTokenRequest,
        response=s.TokenCreateResponse,
        errors=(429,),
        description="token_value is shown only in this answer.",
    )
    def post(self, request: Request) -> Response:
        _require_admin(request.user)
        args = parse(request, s.ServicePrincipalTokenRequest)
        principal = ServicePrincipal.objects.filter(user__username=args["user_name"]).first()
        if principal is None:
            raise NotFound(f"Service principal '{args['user_name']}' does not exist.")
        token, plaintext = services.token_create(
            user=principal.user,
            name=args["comment"],
            expires_at=_expiry(args["lifetime_seconds"]),
        )
        return Response({"token_value": plaintext, "token_info": s.TokenInfo(token).data})


# --- anything else under /api/ -----------------------------------------------------------------


@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@authentication_classes([])
@permission_classes([])
@renderer_classes([JSONRenderer])
@view_schema(None)
def not_found(request: Request, rest: str = "") -> Response:
    raise NotFound(f"No API call at '{request.path}'.")
