"""API calls about where traffic goes: MLflow aliases (set, delete, which ones an endpoint
serves), traffic splits (set, promote, roll back, read) and inference tables. Thin: parse, call
``endpoints.services``, answer with ``selectors``' shapes."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response

from endpoints import selectors, services
from endpoints.errors import InvalidParameter

from .base import ENDPOINTS_V2, GET_ARGS, REGISTRY, ApiView, ManageView, doc, parse, registry_name
from .serializers.common import EmptyResponse, ModelNameRequest, TargetRequest
from .serializers.endpoints import EndpointStatusResponse
from .serializers.traffic import (
    AliasRequest,
    InferenceRowsRequest,
    InferenceRowsResponse,
    InferenceTableRequest,
    InferenceTableResponse,
    PromoteRequest,
    ServedAliasesRequest,
    SetAliasRequest,
    SplitsResponse,
    TrafficSplitRequest,
)


class ModelAliasView(ManageView):
    @doc(
        "mlflowSetRegisteredModelAlias",
        "Point an MLflow alias at a model version",
        tag=REGISTRY,
        request=SetAliasRequest,
        response=EmptyResponse,
        errors=(429, 503),
        description="Sets the alias in the MLflow registry, as MLflow's own call does. When "
        "the endpoint serves the alias, its URL (/model-endpoint/<name>/@<alias>/invocations) "
        "moves to the version once that version is ready. Needs CAN_MANAGE on the endpoint "
        "(or the permission to create endpoints when serving is off).",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, SetAliasRequest)
        services.model_alias_set(
            name=registry_name(args["name"]),
            alias=args["alias"],
            version=args["version"],
            user=request.user,
        )
        return Response({})

    @doc(
        "mlflowDeleteRegisteredModelAlias",
        "Delete an MLflow alias",
        tag=REGISTRY,
        query=AliasRequest,
        response=EmptyResponse,
        errors=(429, 503),
        description=GET_ARGS + " The alias's URL stops answering once the registry no "
        "longer has it.",
    )
    def delete(self, request: Request) -> Response:
        args = parse(request, AliasRequest)
        services.model_alias_set(
            name=registry_name(args["name"]), alias=args["alias"], version=None, user=request.user
        )
        return Response({})


class UpdateServedAliasesView(ManageView):
    @doc(
        "endpointsV2UpdateServedAliases",
        "Choose which MLflow aliases of the model are served",
        tag=ENDPOINTS_V2,
        request=ServedAliasesRequest,
        response=EndpointStatusResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. By default every alias is served; a list limits "
        "serving to those aliases, null goes back to every alias.",
    )
    def put(self, request: Request) -> Response:
        args = parse(request, ServedAliasesRequest)
        endpoint = services.served_aliases_set(
            name=args["registered_model_name"],
            aliases=args["served_aliases"],
            user=request.user,
        )
        return Response({"endpoint_status": selectors.endpoint_status_json(endpoint)})


# --- traffic splits ----------------------------------------------------------------------------


class GetTrafficSplitsView(ApiView):
    @doc(
        "endpointsV2GetTrafficSplits",
        "The traffic splits of an endpoint's stages and aliases",
        tag=ENDPOINTS_V2,
        query=ModelNameRequest,
        response=SplitsResponse,
        description=GET_ARGS,
    )
    def get(self, request: Request) -> Response:
        args = parse(request, ModelNameRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response({"traffic_splits": selectors.traffic_splits_json(endpoint)})


class UpdateTrafficSplitView(ManageView):
    @doc(
        "endpointsV2UpdateTrafficSplit",
        "Split a stage's or an alias's traffic between READY versions by percent",
        tag=ENDPOINTS_V2,
        request=TrafficSplitRequest,
        response=SplitsResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. Two or more READY versions, percentages adding up to "
        "100. The gateway picks a version per request by weight; the answer names it in "
        "X-Serving-Version.",
    )
    def put(self, request: Request) -> Response:
        args = parse(request, TrafficSplitRequest)
        weights: dict[str, int] = {}
        for share in args["traffic"]:
            name = share["endpoint_version_name"]
            if name in weights:
                raise InvalidParameter(f"Version {name} is listed twice.")
            weights[name] = share["traffic_percentage"]
        split = services.traffic_split_set(
            name=args["registered_model_name"],
            target=args["target"],
            weights=weights,
            user=request.user,
        )
        return Response({"traffic_splits": selectors.traffic_splits_json(split.endpoint)})


class PromoteTrafficSplitView(ManageView):
    @doc(
        "endpointsV2PromoteTrafficSplit",
        "Send all of a stage's or an alias's traffic to one version",
        tag=ENDPOINTS_V2,
        request=PromoteRequest,
        response=SplitsResponse,
        errors=(429, 503),
        description="Needs CAN_MANAGE. At once every request goes to the version, and the "
        "registry follows: the alias points at it, or it takes the stage (the stage's other "
        "versions are archived). The split ends once the target's URL serves the version.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, PromoteRequest)
        split = services.traffic_split_promote(
            name=args["registered_model_name"],
            target=args["target"],
            version=args["endpoint_version_name"],
            user=request.user,
        )
        return Response({"traffic_splits": selectors.traffic_splits_json(split.endpoint)})


class RollbackTrafficSplitView(ManageView):
    @doc(
        "endpointsV2RollbackTrafficSplit",
        "End a split: all traffic back to the version the stage or alias points at",
        tag=ENDPOINTS_V2,
        request=TargetRequest,
        response=SplitsResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. 404 when the target has no split.",
    )
    def post(self, request: Request) -> Response:
        args = parse(request, TargetRequest)
        endpoint = services.traffic_split_rollback(
            name=args["registered_model_name"], target=args["target"], user=request.user
        )
        return Response({"traffic_splits": selectors.traffic_splits_json(endpoint)})


# --- inference tables --------------------------------------------------------------------------


class GetInferenceTableView(ApiView):
    @doc(
        "endpointsV2GetInferenceTable",
        "The inference table's settings and its newest captured requests",
        tag=ENDPOINTS_V2,
        query=InferenceRowsRequest,
        response=InferenceRowsResponse,
        description=GET_ARGS + " CAN_VIEW reads the settings. The rows (newest first: "
        "request and response bodies, status, latency, the version that answered, and the "
        "caller's token id) are request data: they are answered with CAN_MANAGE only, like "
        "logs; below it the answer has no rows and a message says why.",
    )
    def get(self, request: Request) -> Response:
        args = parse(request, InferenceRowsRequest)
        endpoint = services.get_endpoint_for_user(args["registered_model_name"], request.user)
        return Response(
            selectors.inference_table_read(endpoint, user=request.user, limit=args["max_results"])
        )


class UpdateInferenceTableView(ManageView):
    @doc(
        "endpointsV2UpdateInferenceTable",
        "Turn the inference table on or off, with a sampling rate",
        tag=ENDPOINTS_V2,
        request=InferenceTableRequest,
        response=InferenceTableResponse,
        errors=(429,),
        description="Needs CAN_MANAGE. Captured requests are written to Parquet files, "
        "partitioned by endpoint and date, under the inference directory.",
    )
    def put(self, request: Request) -> Response:
        args = parse(request, InferenceTableRequest)
        table = services.inference_table_update(
            name=args["registered_model_name"],
            enabled=args["enabled"],
            sample_rate=args["sample_rate"],
            user=request.user,
        )
        return Response({"inference_table": selectors.inference_table_json(table.endpoint)})
