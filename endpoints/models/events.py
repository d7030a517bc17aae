"""Events: one row per significant step of a model's serving, the Events tab's rows."""

from __future__ import annotations

from django.db import models

from .serving import EndpointVersion, Replica, ServingEndpoint, now_ms


class EventType(models.TextChoices):
    # model level
    ENDPOINT_ENABLED = "ENDPOINT_ENABLED"
    ENDPOINT_DISABLED = "ENDPOINT_DISABLED"
    ENDPOINT_READY = "ENDPOINT_READY"
    ENDPOINT_FAILED = "ENDPOINT_FAILED"
    COMPUTE_CONFIG_UPDATED = "COMPUTE_CONFIG_UPDATED"
    PERMISSIONS_CHANGED = "PERMISSIONS_CHANGED"
    SERVED_ALIASES_CHANGED = "SERVED_ALIASES_CHANGED"
    TRAFFIC_SPLIT_CHANGED = "TRAFFIC_SPLIT_CHANGED"
    INFERENCE_TABLE_CHANGED = "INFERENCE_TABLE_CHANGED"
    # version level
    VERSION_DEPLOYING = "VERSION_DEPLOYING"
    VERSION_READY = "VERSION_READY"
    VERSION_FAILED = "VERSION_FAILED"
    VERSION_STAGE_CHANGED = "VERSION_STAGE_CHANGED"
    VERSION_ALIAS_MOVED = "VERSION_ALIAS_MOVED"
    MODEL_ALIAS_SET = "MODEL_ALIAS_SET"
    VERSION_RETIRED = "VERSION_RETIRED"
    CONFIG_UPDATE_STARTED = "CONFIG_UPDATE_STARTED"
    CONFIG_UPDATE_APPLIED = "CONFIG_UPDATE_APPLIED"
    CONFIG_UPDATE_FAILED = "CONFIG_UPDATE_FAILED"
    SCALED_UP = "SCALED_UP"
    SCALED_DOWN = "SCALED_DOWN"
    SCALED_TO_ZERO = "SCALED_TO_ZERO"
    WOKEN_FROM_ZERO = "WOKEN_FROM_ZERO"
    BUILD_STARTED = "BUILD_STARTED"
    BUILD_FINISHED = "BUILD_FINISHED"
    BUILD_FAILED = "BUILD_FAILED"
    # container / replica level
    REPLICA_STARTED = "REPLICA_STARTED"
    REPLICA_READY = "REPLICA_READY"
    REPLICA_CRASHED = "REPLICA_CRASHED"
    REPLICA_UNHEALTHY = "REPLICA_UNHEALTHY"
    REPLICA_RESTARTED = "REPLICA_RESTARTED"
    REPLICA_STOPPED = "REPLICA_STOPPED"
    REPLICA_ADOPTED = "REPLICA_ADOPTED"
    # the limits a version's replicas start with, and what holds them (cgroup v2, v1, rlimits)
    REPLICA_LIMITS_APPLIED = "REPLICA_LIMITS_APPLIED"
    # a replica its memory limit stopped (replaced like any crash)
    REPLICA_OUT_OF_MEMORY = "REPLICA_OUT_OF_MEMORY"
    ZYGOTE_STARTED = "ZYGOTE_STARTED", "Replica environment warmed up"


class EventLevel(models.TextChoices):
    MODEL = "MODEL"
    VERSION = "VERSION"
    REPLICA = "REPLICA"


class Event(models.Model):
    """One significant service event; these rows are the Model Events tab."""

    endpoint = models.ForeignKey(ServingEndpoint, on_delete=models.CASCADE, related_name="events")
    timestamp = models.BigIntegerField(default=now_ms, db_index=True)
    type = models.CharField(max_length=40, choices=EventType.choices)
    level = models.CharField(max_length=8, choices=EventLevel.choices, default=EventLevel.MODEL)
    message = models.TextField()
    endpoint_version_name = models.CharField(max_length=32, blank=True, default="")
    stage = models.CharField(max_length=16, blank=True, default="")
    # The MLflow alias the event is about (without "@"), when it is about one.
    alias = models.CharField(max_length=255, blank=True, default="")
    replica_id = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["-timestamp", "-pk"]

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    @classmethod
    def record(
        cls,
        endpoint: ServingEndpoint,
        type: str,
        message: str,
        *,
        version: EndpointVersion | None = None,
        replica: Replica | None = None,
        alias: str = "",
    ) -> Event:
        level = (
            EventLevel.REPLICA if replica else EventLevel.VERSION if version else EventLevel.MODEL
        )
        return cls.objects.create(
            endpoint=endpoint,
            type=type,
            level=level,
            message=message,
            endpoint_version_name=version.version if version else "",
            stage=version.registry_stage if version else "",
            replica_id=replica.replica_id if replica else "",
            alias=alias,
        )
