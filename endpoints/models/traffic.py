"""Desired state about traffic: how a target's requests are split between versions, and
whether an endpoint keeps an inference table."""

from __future__ import annotations

from django.db import models

from endpoints.targets import TARGET_MAX_LENGTH

from .serving import now_ms


class TrafficSplit(models.Model):
    """A stage's or an alias's requests split between READY versions by weight.

    ``weights`` is {version: percent}, the percents summing to 100. While a split exists
    the gateway picks a version per request by weight instead of following the target's
    pointer alone, and provisioning keeps every version of it deployed."""

    endpoint = models.ForeignKey(
        "endpoints.ServingEndpoint", on_delete=models.CASCADE, related_name="traffic_splits"
    )
    target = models.CharField(max_length=TARGET_MAX_LENGTH)
    weights = models.JSONField(default=dict)
    user_id = models.CharField(max_length=254, blank=True, default="")
    updated_timestamp = models.BigIntegerField(default=now_ms)

    class Meta:
        ordering = ["endpoint", "target"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "target"], name="unique_traffic_split")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.target}: {self.weights}"


class InferenceTable(models.Model):
    """Opt-in capture of an endpoint's requests and answers into Parquet files."""

    endpoint = models.OneToOneField(
        "endpoints.ServingEndpoint", on_delete=models.CASCADE, related_name="inference_table"
    )
    enabled = models.BooleanField(default=False)
    # The share of requests captured, 0 < rate <= 1.
    sample_rate = models.FloatField(default=1.0)
    user_id = models.CharField(max_length=254, blank=True, default="")
    updated_timestamp = models.BigIntegerField(default=now_ms)

    def __str__(self) -> str:
        state = f"{self.sample_rate:.0%} captured" if self.enabled else "off"
        return f"{self.endpoint} inference table: {state}"
