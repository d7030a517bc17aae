"""Request and response shapes of the endpoint calls: endpoints, versions, compute
configs, replicas, events, metrics, logs and stage transitions. Requests validate
arguments and nothing more; responses describe for the OpenAPI schema the answers
``endpoints.selectors`` shape."""

from __future__ import annotations

from rest_framework import serializers

from endpoints import registry
from endpoints.models import (
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    EventLevel,
    EventType,
    ReplicaState,
    ServiceState,
    Stage,
    WorkloadSize,
)

from .common import (
    Choice,
    Flag,
    ModelNameRequest,
    Number,
    TargetRequest,
    Text,
    VersionRequest,
    model_name_field,
    version_field,
)

# Upper bound for timestamps in milliseconds: the largest integer a JSON number holds exactly.
MAX_TIMESTAMP_MS = 2**53


# Every registry stage, None and Archived too (only Staging and Production are served).
REGISTRY_STAGE_CHOICES = [(stage, stage) for stage in registry.ALL_STAGES]


class VersionLogsRequest(VersionRequest):
    replica_id = Text(
        max_length=32,
        required=False,
        help_text="One replica's output; without it, all replicas' output merged.",
    )


class VersionMetricsRequest(VersionRequest):
    start_timestamp = Number(
        min_value=0,
        max_value=MAX_TIMESTAMP_MS,
        required=False,
        help_text="Milliseconds since the epoch; default one hour before end_timestamp.",
    )
    end_timestamp = Number(
        min_value=0,
        max_value=MAX_TIMESTAMP_MS,
        required=False,
        help_text="Milliseconds since the epoch; default now.",
    )


class EventHistoryRequest(ModelNameRequest):
    endpoint_version_name = version_field(required=False)
    start_timestamp = Number(
        min_value=0,
        max_value=MAX_TIMESTAMP_MS,
        required=False,
        help_text="Only events at or after this time (milliseconds since the epoch).",
    )
    max_results = Number(min_value=1, max_value=1000, required=False, default=100)


class RestartComputeConfigRequest(TargetRequest):
    pass


def max_batch_size_field(field: type[serializers.IntegerField]) -> serializers.IntegerField:
    return field(
        min_value=MAX_BATCH_SIZE_RANGE[0],
        max_value=MAX_BATCH_SIZE_RANGE[1],
        help_text="Most rows merged into one predict call.",
    )


def max_wait_ms_field(field: type[serializers.IntegerField]) -> serializers.IntegerField:
    return field(
        min_value=MAX_WAIT_MS_RANGE[0],
        max_value=MAX_WAIT_MS_RANGE[1],
        help_text="Longest time the first request of a batch waits for others.",
    )


class BatchingRequest(serializers.Serializer):
    max_batch_size = max_batch_size_field(Number)
    max_wait_ms = max_wait_ms_field(Number)


class WorkloadSpecRequest(serializers.Serializer):
    workload_size_id = Choice(choices=WorkloadSize.choices)
    scale_to_zero_enabled = Flag(required=False, default=False)
    batching = BatchingRequest(
        required=False,
        allow_null=True,
        default=None,
        help_text="Merge concurrent requests into one predict call. Only for models whose "
        "answer for a row does not depend on the other rows. Absent or null: off.",
    )


class UpdateComputeConfigRequest(TargetRequest):
    desired_workload_config_spec = WorkloadSpecRequest()


class TransitionStageRequest(serializers.Serializer):
    name = model_name_field()
    version = version_field()
    stage = Choice(choices=REGISTRY_STAGE_CHOICES)
    archive_existing_versions = Flag(required=False, default=False)
    comment = Text(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        example="Deploying version 1 to Staging",
    )


class Batching(serializers.Serializer):
    max_batch_size = max_batch_size_field(serializers.IntegerField)
    max_wait_ms = max_wait_ms_field(serializers.IntegerField)


class WorkloadSpec(serializers.Serializer):
    workload_size_id = serializers.ChoiceField(choices=WorkloadSize.choices)
    scale_to_zero_enabled = serializers.BooleanField()
    batching = Batching(required=False, help_text="Present only when batching is on.")


class ComputeConfig(serializers.Serializer):
    stage = serializers.ChoiceField(choices=Stage.choices, required=False)
    alias = serializers.CharField(required=False, help_text="An MLflow alias's config.")
    creation_timestamp = serializers.IntegerField(help_text="Milliseconds since the epoch.")
    user_id = serializers.CharField(allow_blank=True)
    workload_spec = WorkloadSpec()


class EndpointStatus(serializers.Serializer):
    registered_model_name = serializers.CharField()
    state = serializers.ChoiceField(choices=["PENDING", "READY", "FAILED"])
    state_message = serializers.CharField(allow_blank=True)
    compute_config = ComputeConfig(many=True)
    served_aliases = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Absent: every alias."
    )
    traffic_splits = serializers.ListField(child=serializers.DictField(), required=False)


class ServiceStatus(serializers.Serializer):
    state = serializers.ChoiceField(choices=ServiceState.choices)
    message = serializers.CharField(allow_blank=True)
    config = ComputeConfig(allow_null=True, help_text="null until there is one.")


class EndpointVersionStatus(serializers.Serializer):
    registered_model_name = serializers.CharField()
    endpoint_version_name = serializers.CharField()
    service_status = ServiceStatus()
    config_update_status = ServiceStatus()
    aliases = serializers.ListField(child=serializers.CharField(), required=False)


class EndpointStatusResponse(serializers.Serializer):
    endpoint_status = EndpointStatus()


class EndpointListResponse(serializers.Serializer):
    endpoints = EndpointStatus(many=True)


class VersionListResponse(serializers.Serializer):
    endpoint_statuses = EndpointVersionStatus(many=True)


class VersionStatusResponse(serializers.Serializer):
    endpoint_status = EndpointVersionStatus()


class Alias(serializers.Serializer):
    alias = serializers.CharField(help_text="A stage, or an MLflow alias as '@<alias>'.")
    endpoint_version_name = serializers.CharField()


class AliasesResponse(serializers.Serializer):
    aliases = Alias(many=True)


class WorkloadSizeInfo(serializers.Serializer):
    workload_size_id = serializers.ChoiceField(choices=WorkloadSize.choices)
    min_concurrency = serializers.IntegerField()
    max_concurrency = serializers.IntegerField()


class WorkloadSizesResponse(serializers.Serializer):
    workload_sizes = WorkloadSizeInfo(many=True)


class ReplicaInfo(serializers.Serializer):
    replica_id = serializers.CharField()
    state = serializers.ChoiceField(choices=ReplicaState.choices)
    message = serializers.CharField(allow_blank=True)
    address = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    restarts = serializers.IntegerField()
    creation_timestamp = serializers.IntegerField(help_text="Milliseconds since the epoch.")


class ReplicasResponse(serializers.Serializer):
    replicas = ReplicaInfo(many=True)


class EventInfo(serializers.Serializer):
    timestamp = serializers.IntegerField(help_text="Milliseconds since the epoch.")
    type = serializers.ChoiceField(choices=EventType.choices)
    level = serializers.ChoiceField(choices=EventLevel.choices)
    message = serializers.CharField(allow_blank=True)
    endpoint_version_name = serializers.CharField(required=False)
    stage = serializers.CharField(required=False)
    alias = serializers.CharField(required=False)
    replica_id = serializers.CharField(required=False)


class EventsResponse(serializers.Serializer):
    events = EventInfo(many=True)


class MetricsPoint(serializers.Serializer):
    timestamp = serializers.IntegerField(help_text="Start of the 10-second bucket (ms).")
    requests = serializers.IntegerField()
    requests_per_second = serializers.FloatField()
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField()
    latency_ms_avg = serializers.FloatField(allow_null=True)
    latency_ms_max = serializers.FloatField(allow_null=True)
    latency_ms_p50 = serializers.FloatField(
        allow_null=True, help_text="From the bucket's latency histogram (as Prometheus does)."
    )
    latency_ms_p95 = serializers.FloatField(allow_null=True)
    latency_ms_p99 = serializers.FloatField(allow_null=True)
    replicas = serializers.IntegerField(allow_null=True)


class MetricsResponse(serializers.Serializer):
    metrics = MetricsPoint(many=True)
    latency_ms_p50 = serializers.FloatField(
        allow_null=True, help_text="Over the whole window: the buckets' histograms added up."
    )
    latency_ms_p95 = serializers.FloatField(allow_null=True)
    latency_ms_p99 = serializers.FloatField(allow_null=True)


class LogsResponse(serializers.Serializer):
    logs = serializers.CharField(allow_blank=True)


class ComputeConfigResponse(serializers.Serializer):
    compute_config = ComputeConfig()


class ModelVersion(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    creation_timestamp = serializers.IntegerField()
    last_updated_timestamp = serializers.IntegerField()
    current_stage = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    source = serializers.CharField(allow_blank=True)
    run_id = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    aliases = serializers.ListField(child=serializers.CharField())


class ModelVersionResponse(serializers.Serializer):
    model_version = ModelVersion()
