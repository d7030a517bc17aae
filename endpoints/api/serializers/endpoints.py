"""Request and response shapes of the endpoint calls: endpoints, versions, compute
configs, replicas, events, metrics, logs and stage transitions. Requests validate
arguments and nothing more; responses describe for the OpenAPI schema the answers
``endpoints.selectors`` shape."""

from __future__ import annotations

from rest_framework import serializers

from endpoints import registry
from endpoints.models import (
    FRACTIONAL_FIELDS,
    MAX_BATCH_SIZE_RANGE,
    MAX_WAIT_MS_RANGE,
    OVERRIDE_RANGES,
    EventLevel,
    EventType,
    ReplicaState,
    ServiceState,
    Stage,
    WorkloadSize,
    WorkloadType,
)

from .common import (
    Choice,
    Flag,
    ModelNameRequest,
    Number,
    Real,
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


# What each setting a config may make over its workload size's means (docs/provisioning.md).
OVERRIDE_HELP = {
    "cpus": "CPUs one replica may use (fractions allowed).",
    "memory_mb": "Memory one replica may use, in MiB.",
    "max_processes": "Processes and threads one replica may run.",
    "tmp_mb": "Size of each tmpfs a replica gets (/tmp, /dev/shm), in MiB.",
    "gpus": "GPUs per replica, over the workload type's (fractions only on Ray).",
    "min_replicas": "Fewest replicas while awake (scale to zero may still stop them all).",
    "max_replicas": "Most replicas.",
    "target_concurrency": "Requests in flight one replica carries before another is added.",
    "scale_down_delay_seconds": "How long the load stays low before a replica is removed.",
    "scale_to_zero_delay_seconds": "Quiet time before the last replica stops (scale to zero).",
}


def override_field(name: str, *, request: bool) -> serializers.Field:
    """One setting over the workload size's: a JSON number in its range; absent or null
    (in a request): the size's."""
    low, high = OVERRIDE_RANGES[name]
    fractional = name in FRACTIONAL_FIELDS
    if request:
        kind = Real if fractional else Number
        return kind(
            min_value=low,
            max_value=high,
            required=False,
            allow_null=True,
            default=None,
            help_text=OVERRIDE_HELP[name] + " Absent or null: the workload size's.",
        )
    kind = serializers.FloatField if fractional else serializers.IntegerField
    return kind(required=False, help_text=OVERRIDE_HELP[name] + " Present only when set.")


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
    workload_type = Choice(
        choices=WorkloadType.choices,
        required=False,
        default=WorkloadType.CPU,
        help_text="CPU, or replicas with GPUs (refused where the installation has none).",
    )
    cpus = override_field("cpus", request=True)
    memory_mb = override_field("memory_mb", request=True)
    max_processes = override_field("max_processes", request=True)
    tmp_mb = override_field("tmp_mb", request=True)
    gpus = override_field("gpus", request=True)
    min_replicas = override_field("min_replicas", request=True)
    max_replicas = override_field("max_replicas", request=True)
    target_concurrency = override_field("target_concurrency", request=True)
    scale_down_delay_seconds = override_field("scale_down_delay_seconds", request=True)
    scale_to_zero_delay_seconds = override_field("scale_to_zero_delay_seconds", request=True)


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
    workload_type = serializers.ChoiceField(
        choices=WorkloadType.choices, required=False, help_text="Absent: CPU."
    )
    cpus = override_field("cpus", request=False)
    memory_mb = override_field("memory_mb", request=False)
    max_processes = override_field("max_processes", request=False)
    tmp_mb = override_field("tmp_mb", request=False)
    gpus = override_field("gpus", request=False)
    min_replicas = override_field("min_replicas", request=False)
    max_replicas = override_field("max_replicas", request=False)
    target_concurrency = override_field("target_concurrency", request=False)
    scale_down_delay_seconds = override_field("scale_down_delay_seconds", request=False)
    scale_to_zero_delay_seconds = override_field("scale_to_zero_delay_seconds", request=False)


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
    min_replicas = serializers.IntegerField(help_text="By default (without scale to zero).")
    max_replicas = serializers.IntegerField(help_text="By default.")
    cpus = serializers.FloatField(help_text=OVERRIDE_HELP["cpus"])
    memory_mb = serializers.IntegerField(help_text=OVERRIDE_HELP["memory_mb"])
    max_processes = serializers.IntegerField(help_text=OVERRIDE_HELP["max_processes"])
    tmp_mb = serializers.IntegerField(help_text=OVERRIDE_HELP["tmp_mb"])


class WorkloadTypeInfo(serializers.Serializer):
    workload_type = serializers.ChoiceField(choices=WorkloadType.choices)
    gpus = serializers.IntegerField(help_text="GPUs per replica.")
    available = serializers.BooleanField(help_text="Whether this installation has as many.")


class WorkloadSizesResponse(serializers.Serializer):
    workload_sizes = WorkloadSizeInfo(many=True)
    workload_types = WorkloadTypeInfo(many=True)


class ReplicaInfo(serializers.Serializer):
    replica_id = serializers.CharField()
    state = serializers.ChoiceField(choices=ReplicaState.choices)
    message = serializers.CharField(allow_blank=True)
    address = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    restarts = serializers.IntegerField()
    creation_timestamp = serializers.IntegerField(help_text="Milliseconds since the epoch.")
    gpu_devices = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        help_text="The GPUs it was given (local runtime); absent: none, or placed by Ray.",
    )


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
