"""Request and response shapes of the traffic calls: MLflow aliases, traffic splits and
inference tables."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from .common import (
    Flag,
    ModelNameRequest,
    Number,
    TargetRequest,
    Text,
    is_json,
    model_name_field,
    version_field,
)


class AliasRequest(serializers.Serializer):
    name = model_name_field()
    alias = Text(max_length=255, help_text="The alias, such as 'champion'.", example="champion")


class SetAliasRequest(AliasRequest):
    version = version_field()


class ServedAliasesRequest(ModelNameRequest):
    served_aliases = serializers.ListField(
        child=Text(max_length=255),
        allow_null=True,
        max_length=100,
        help_text="The aliases to serve; null: every alias of the model (the default).",
    )


class Fraction(serializers.FloatField):
    """A number that is not converted from other JSON types (not a boolean, not a string)."""

    def to_internal_value(self, data: Any) -> float:
        if is_json(self) and (isinstance(data, bool) or not isinstance(data, int | float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class VersionShare(serializers.Serializer):
    endpoint_version_name = version_field()
    traffic_percentage = Number(min_value=0, max_value=100)


class TrafficSplitRequest(TargetRequest):
    traffic = VersionShare(many=True, help_text="Percentages adding up to 100.")


class PromoteRequest(TargetRequest):
    endpoint_version_name = version_field()


class SplitInfo(serializers.Serializer):
    stage = serializers.CharField(required=False)
    alias = serializers.CharField(required=False)
    traffic = serializers.ListField(child=serializers.DictField())
    user_id = serializers.CharField(allow_blank=True)
    updated_timestamp = serializers.IntegerField()


class SplitsResponse(serializers.Serializer):
    traffic_splits = SplitInfo(many=True)


class InferenceTableRequest(ModelNameRequest):
    enabled = Flag()
    sample_rate = Fraction(
        min_value=0.0001,
        max_value=1.0,
        required=False,
        default=1.0,
        help_text="The share of requests captured (1: all of them).",
    )


class InferenceRowsRequest(ModelNameRequest):
    max_results = Number(min_value=1, max_value=1000, required=False, default=100)


class DroppedByReason(serializers.Serializer):
    queue_full = serializers.IntegerField(help_text="A web process's capture queue was full.")
    write_failed = serializers.IntegerField(help_text="Writing their Parquet file failed.")
    shutdown = serializers.IntegerField(
        help_text="A web process stopped before it could write them."
    )


class InferenceTableInfo(serializers.Serializer):
    enabled = serializers.BooleanField()
    sample_rate = serializers.FloatField()
    retention_days = serializers.IntegerField()
    location = serializers.CharField()
    dropped_requests = serializers.IntegerField(allow_null=True)
    dropped_requests_by_reason = DroppedByReason(allow_null=True)


class InferenceTableResponse(serializers.Serializer):
    inference_table = InferenceTableInfo()


class InferenceRow(serializers.Serializer):
    timestamp = serializers.IntegerField(help_text="Milliseconds since the epoch.")
    endpoint = serializers.CharField()
    selector = serializers.CharField()
    version = serializers.CharField()
    status = serializers.IntegerField()
    latency_ms = serializers.FloatField()
    token_id = serializers.IntegerField(allow_null=True)
    request = serializers.CharField(allow_blank=True)
    response = serializers.CharField(allow_blank=True)


class InferenceRowsResponse(InferenceTableResponse):
    rows = InferenceRow(many=True, required=False, help_text="With CAN_MANAGE only.")
    unreadable_files = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="With CAN_MANAGE only: files of the table that could not be read and "
        "were skipped (date=…/….parquet).",
    )
    message = serializers.CharField(
        required=False,
        help_text="Why there are no rows (below CAN_MANAGE), or which files were skipped.",
    )
