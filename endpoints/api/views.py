"""The REST API's endpoints-v2 family, compute config and transition-stage calls.

Every view is thin: parse the arguments with a serializer, call ``endpoints.services``
(writes) or ``endpoints.selectors`` / ``telemetry.logs`` (reads), return the JSON. Errors are
``endpoints.errors.ServingError`` subclasses rendered by the one exception handler in
``api.errors``. Tokens, permissions and principals are in ``access``, traffic in ``traffic``.
"""

from __future__ import annotations

from collections.abc import Callable

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

from endpoints import selectors, services
from endpoints.errors import NotFound
from endpoints.models import OVERRIDE_FIELDS, EndpointVersion, PermissionLevel
from endpoints.telemetry import logs

from .base import (
    ENDPOINTS_V2,
    GET_ARGS,
    REGISTRY,
    ApiView,
    ManageView,
    doc,
    parse,
    registry_name,
)
from .serializers.common import ModelNameRequest, VersionRequest
from .serializers.endpoints import (
    AliasesResponse,
    ComputeConfigResponse,
    EndpointListResponse,
    EndpointStatusResponse,
    EventHistoryRequest,
    EventsResponse,
    LogsResponse,
    MetricsResponse,
    ModelVersionResponse,
    ReplicasResponse,
    RestartComputeConfigRequest,
    TransitionStageRequest,
    UpdateComputeConfigRequest,
    VersionListResponse,
    VersionLogsRequest,
    VersionMetricsRequest,
    VersionStatusResponse,
    WorkloadSizesResponse,
)


def _version_for(
    request: Request, args: dict, level: str = PermissionLevel.CAN_VIEW
) -> EndpointVersion:
    endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user, level)
    return selectors.endpoint_version(endpoint, args["endpoint_version_name"])


# Service and build logs can hold request data a model printed: CAN_MANAGE reads them.
LOGS_NEED = " Needs CAN_MANAGE: logs can hold request data the model printed."


# --- endpoints-v2: enable / disable --------------------------------------------------------


class EnableView(ManageView):
    @doc(
        "endpointsV2Enable",
        "Enable serving for a registered model",
        tag=ENDPOINTS_V2,
        request=ModelNameRequest,
        response=EndpointStatusResponse,
        errors=(409, 429, 503),
        description="Needs the permission to create endpoints. Every version in Staging or "
        "Production is then served; the status is PENDING until they are up.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        name = registry_name(args["registered_model_name"])
        endpoint = services.endpoint_enable(name=name, user=request.user)
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


class DisableView(ManageView):
    @doc(
        "endpointsV2Disable",
        "Disable serving: every replica of the model stops",
        tag=ENDPOINTS_V2,
        request=ModelNameRequest,
        response=EndpointStatusResponse,
        errors=(429,),
        description="Needs CAN_MANAGE on the endpoint.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        endpoint = services.endpoint_disable(name=args["registered_model_name"], user=request.user)
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


# --- endpoints-v2: status --------------------------------------------------------------------


class GetStatusView(ApiView):
    @doc(
        "endpointsV2GetStatus",
        "Status of a model's endpoint",
        tag=ENDPOINTS_V2,
        query=ModelNameRequest,
        response=EndpointStatusResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


class ListView(ApiView):
    @doc(
        "endpointsV2List",
        "Every endpoint the caller may view",
        tag=ENDPOINTS_V2,
        response=EndpointListResponse,
    )
    def get(self, request: Request) -> Response:
        endpoints = selectors.endpoints_visible_to(request.user)
        return Response({"endpoints": [selectors.endpoint_status_json(e) for e in endpoints]})


class ListVersionsView(ApiView):
    @doc(
        "endpointsV2ListVersions",
        "Status of every served version",
        tag=ENDPOINTS_V2,
        query=ModelNameRequest,
        response=VersionListResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        versions = selectors.deployed_versions(endpoint)
        return Response({"endpoint_statuses": [selectors.version_status_json(v) for v in versions]})


class GetVersionStatusView(ApiView):
    @doc(
        "endpointsV2GetVersionStatus",
        "Status of one served version",
        tag=ENDPOINTS_V2,
        query=VersionRequest,
        response=VersionStatusResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, VersionRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        version = selectors.endpoint_version(
            endpoint, args["endpoint_version_name"], deployed_only=True
        )
        return Response({"endpoint_status": selectors.version_status_json(version)})


class ListVersionAliasesView(ApiView):
    @doc(
        "endpointsV2ListVersionAliases",
        "Which version each stage URL and each served alias URL answers with",
        tag=ENDPOINTS_V2,
        query=ModelNameRequest,
        response=AliasesResponse,
        description=GET_ARGS + " An alias moves to a new version only once it is ready.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response({"aliases": selectors.aliases_json(endpoint)})


class SupportedWorkloadSizesView(ApiView):
    @doc(
        "endpointsV2GetSupportedWorkloadSizes",
        "Workload sizes (concurrency range, replicas, limits) and workload types (GPUs)",
        tag=ENDPOINTS_V2,
        response=WorkloadSizesResponse,
        description="With scale to zero enabled, a size's minimum concurrency becomes 0. "
        "A workload type is available when the installation has the GPUs one replica needs.",
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "workload_sizes": selectors.supported_workload_sizes(),
                "workload_types": selectors.supported_workload_types(),
            }
        )


class VersionReplicasView(ApiView):
    @doc(
        "endpointsV2GetVersionReplicas",
        "Replicas (model server processes) of a version",
        tag=ENDPOINTS_V2,
        query=VersionRequest,
        response=ReplicasResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        version = _version_for(request, parse(request, VersionRequest))
        replicas = version.replicas.order_by("created_at")
        return Response({"replicas": [selectors.replica_json(r) for r in replicas]})


class EventHistoryView(ApiView):
    @doc(
        "endpointsV2GetEventHistory",
        "Service events of an endpoint, newest first",
        tag=ENDPOINTS_V2,
        query=EventHistoryRequest,
        response=EventsResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, EventHistoryRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        events = selectors.endpoint_events(
            endpoint,
            limit=args["max_results"],
            version_name=args.get("endpoint_version_name") or "",
            start_timestamp=args.get("start_timestamp"),
        )
        return Response({"events": [selectors.event_json(e) for e in events]})


class VersionMetricsView(ApiView):
    @doc(
        "endpointsV2GetVersionMetrics",
        "Requests, errors, latency (with percentiles) and replicas over time, in 10-second buckets",
        tag=ENDPOINTS_V2,
        query=VersionMetricsRequest,
        response=MetricsResponse,
        errors=(503,),
        description=GET_ARGS + " At most the last 24 hours of the window are returned.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, VersionMetricsRequest)
        return Response(
            selectors.version_metrics(
                _version_for(request, args),
                start_timestamp=args.get("start_timestamp"),
                end_timestamp=args.get("end_timestamp"),
            )
        )


_LOGS_DESCRIPTION = (
    "All replicas merged, each line prefixed with its replica id, or the output of the "
    "replica named by replica_id." + LOGS_NEED
)


_BUILD_LOGS_DESCRIPTION = "The output of preparing the version's model and environment." + LOGS_NEED


def _service_logs(request: Request) -> Response:
    args = parse(request, VersionLogsRequest)
    version = _version_for(request, args, PermissionLevel.CAN_MANAGE)
    replica_id = args.get("replica_id")
    if replica_id:
        selectors.version_replica(version, replica_id)
    return Response({"logs": logs.service_logs(version, replica_id=replica_id)})


def _build_logs(request: Request) -> Response:
    version = _version_for(request, parse(request, VersionRequest), PermissionLevel.CAN_MANAGE)
    return Response({"logs": logs.build_logs(version)})


class VersionLogsView(ApiView):
    """Reads, so GET like every other ``get-*`` call; POST stays for existing clients."""

    @doc(
        "endpointsV2GetVersionLogs",
        "Model server output of a version",
        tag=ENDPOINTS_V2,
        query=VersionLogsRequest,
        response=LogsResponse,
        description=f"{_LOGS_DESCRIPTION} {GET_ARGS}",
    )
    def get(self, request: Request) -> Response:
        return _service_logs(request)

    @doc(
        "endpointsV2GetVersionLogsPost",
        "Model server output of a version (arguments as a JSON body)",
        tag=ENDPOINTS_V2,
        request=VersionLogsRequest,
        response=LogsResponse,
        description=_LOGS_DESCRIPTION,
    )
    def post(self, request: Request) -> Response:
        return _service_logs(request)


class VersionBuildLogsView(ApiView):
    @doc(
        "endpointsV2GetVersionBuildLogs",
        "Environment build output of a version",
        tag=ENDPOINTS_V2,
        query=VersionRequest,
        response=LogsResponse,
        description=_BUILD_LOGS_DESCRIPTION + " " + GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        return _build_logs(request)

    @doc(
        "endpointsV2GetVersionBuildLogsPost",
        "Environment build output of a version (arguments as a JSON body)",
        tag=ENDPOINTS_V2,
        request=VersionRequest,
        response=LogsResponse,
        description=_BUILD_LOGS_DESCRIPTION,
    )
    def post(self, request: Request) -> Response:
        return _build_logs(request)


# --- compute config ----------------------------------------------------------------------------


class RestartComputeConfigUpdateView(ManageView):
    @doc(
        "endpointsV2RestartComputeConfigUpdate",
        "Retry a failed compute config rollout of a stage",
        tag=ENDPOINTS_V2,
        request=RestartComputeConfigRequest,
        response=EndpointStatusResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. 400 when the stage has no failed rollout.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, RestartComputeConfigRequest)
        endpoint = services.compute_config_restart(
            name=args["registered_model_name"], stage=args["target"], user=request.user
        )
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


class UpdateComputeConfigView(ManageView):
    @doc(
        "endpointsV2UpdateComputeConfig",
        "Set a stage's (or an alias's) workload size and type, limits, autoscaling, scale "
        "to zero and batching",
        tag=ENDPOINTS_V2,
        request=UpdateComputeConfigRequest,
        response=ComputeConfigResponse,
        errors=(409, 429),
        description="Needs CAN_MANAGE. The change rolls out asynchronously: follow "
        "config_update_status in list-versions. 409 while a rollout of the stage runs. "
        "batching (off unless given) merges concurrent requests to a replica into one "
        "predict call: only for models that answer each row independently. The limits "
        "(cpus, memory_mb, max_processes, tmp_mb, gpus) and autoscaling settings "
        "(min_replicas, max_replicas, target_concurrency, scale_down_delay_seconds, "
        "scale_to_zero_delay_seconds) replace the workload size's where given; a rollout "
        "that changes a replica's limits replaces its replicas. A GPU workload_type is "
        "refused (400) where the installation has no GPU.",
    )
    def put(self, request: Request) -> Response:
        args = parse(request, UpdateComputeConfigRequest)
        spec = args["desired_workload_config_spec"]
        batching = spec["batching"] or {}
        config = services.compute_config_update(
            name=args["registered_model_name"],
            stage=args["target"],
            workload_size=spec["workload_size_id"],
            scale_to_zero_enabled=spec["scale_to_zero_enabled"],
            max_batch_size=batching.get("max_batch_size"),
            max_wait_ms=batching.get("max_wait_ms"),
            workload_type=spec["workload_type"],
            overrides={name: spec[name] for name in OVERRIDE_FIELDS},
            user=request.user,
        )
        return Response({"compute_config": selectors.compute_config_json(config)})


# --- model registry: transition-stage ------------------------------------------------------


class TransitionStageView(ManageView):
    def post(self, request: Request) -> Response:
        args = parse(request, TransitionStageRequest)
        info = services.model_version_transition(
            name=registry_name(args["name"]),
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
        request=TransitionStageRequest,
        response=ModelVersionResponse,
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


# --- anything else under /api/ -----------------------------------------------------------------


@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@authentication_classes([])
@permission_classes([])
@renderer_classes([JSONRenderer])
@view_schema(None)
def not_found(request: Request, rest: str = "") -> Response:
    raise NotFound(f"No API call at '{request.path}'.")
