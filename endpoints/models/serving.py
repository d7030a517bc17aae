"""Serving an endpoint: desired state (the endpoint, a compute config per target) and
observed state (versions, routing pointers, replicas), written by the reconcile loop
(``endpoints.provisioning``)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from endpoints.targets import TARGET_MAX_LENGTH

from .workloads import (
    AUTOSCALING_FIELDS,
    LIMIT_FIELDS,
    OVERRIDE_FIELDS,
    WORKLOAD_CONCURRENCY,
    WorkloadSize,
    WorkloadType,
    described,
    range_validators,
)


def now_ms() -> int:
    """Unix time in milliseconds: the timestamps of configs, events and traffic rows."""
    return int(time.time() * 1000)


class Stage(models.TextChoices):
    STAGING = "Staging"
    PRODUCTION = "Production"


# Micro-batching bounds: rows merged into one predict call, and how long the first request
# of a batch may wait for others (beyond that, latency costs more than merging saves).
MAX_BATCH_SIZE_RANGE = (1, 256)
MAX_WAIT_MS_RANGE = (0, 100)


class EndpointState(models.TextChoices):
    PENDING = "PENDING"
    READY = "READY"
    FAILED = "FAILED"


class ServiceState(models.TextChoices):
    UNKNOWN = "SERVICE_STATE_UNKNOWN"
    PENDING = "SERVICE_STATE_PENDING"
    READY = "SERVICE_STATE_READY"
    FAILED = "SERVICE_STATE_FAILED"
    RETRY_REQUESTED = "SERVICE_STATE_RETRY_REQUESTED"


class ReplicaState(models.TextChoices):
    PENDING = "Pending"
    RUNNING = "Running"
    TERMINATING = "Terminating"
    TERMINATED = "Terminated"
    ERROR = "Error"


class ServingEndpoint(models.Model):
    """Serving for one registered model. A row exists once serving was first enabled."""

    registered_model_name = models.CharField(max_length=256, unique=True)
    enabled = models.BooleanField(default=True)
    state = models.CharField(
        max_length=16, choices=EndpointState.choices, default=EndpointState.PENDING
    )
    state_message = models.TextField(blank=True, default="")
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # The MLflow aliases this endpoint serves; None: every alias of the model.
    served_aliases = models.JSONField(null=True, blank=True, default=None)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["registered_model_name"]

    def __str__(self) -> str:
        return self.registered_model_name

    def current_compute_config(self, stage: str) -> ComputeConfig | None:
        """The newest config of a target: a stage, or an alias as ``@<alias>``."""
        return (
            self.compute_configs.filter(stage=stage).order_by("-creation_timestamp", "-pk").first()
        )

    def serves_alias(self, alias: str) -> bool:
        return self.served_aliases is None or alias in self.served_aliases


class ComputeConfig(models.Model):
    """One compute setting for a target (a stage, or an alias as ``@<alias>``). Rows are
    never updated: the newest one is desired."""

    endpoint = models.ForeignKey(
        ServingEndpoint, on_delete=models.CASCADE, related_name="compute_configs"
    )
    stage = models.CharField(max_length=TARGET_MAX_LENGTH)
    workload_size = models.CharField(
        max_length=8, choices=WorkloadSize.choices, default=WorkloadSize.SMALL
    )
    scale_to_zero_enabled = models.BooleanField(default=False)
    # Micro-batching, off (both null) unless asked for: merging requests is only correct
    # for a model whose answer for a row does not depend on the other rows.
    max_batch_size = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[
            MinValueValidator(MAX_BATCH_SIZE_RANGE[0]),
            MaxValueValidator(MAX_BATCH_SIZE_RANGE[1]),
        ],
    )
    max_wait_ms = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[
            MinValueValidator(MAX_WAIT_MS_RANGE[0]),
            MaxValueValidator(MAX_WAIT_MS_RANGE[1]),
        ],
    )
    workload_type = models.CharField(
        max_length=16, choices=WorkloadType.choices, default=WorkloadType.CPU
    )
    # Overrides of the workload size's limits and of the workload type's GPUs (null: theirs).
    cpus = models.FloatField(null=True, blank=True, validators=range_validators("cpus"))
    memory_mb = models.PositiveIntegerField(
        null=True, blank=True, validators=range_validators("memory_mb")
    )
    max_processes = models.PositiveIntegerField(
        null=True, blank=True, validators=range_validators("max_processes")
    )
    tmp_mb = models.PositiveIntegerField(
        null=True, blank=True, validators=range_validators("tmp_mb")
    )
    gpus = models.FloatField(null=True, blank=True, validators=range_validators("gpus"))
    # Autoscaling over the workload size's (null: the size's range and the installation's
    # concurrency per replica and delays).
    min_replicas = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=range_validators("min_replicas")
    )
    max_replicas = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=range_validators("max_replicas")
    )
    target_concurrency = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=range_validators("target_concurrency")
    )
    scale_down_delay_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=range_validators("scale_down_delay_seconds")
    )
    scale_to_zero_delay_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=range_validators("scale_to_zero_delay_seconds")
    )
    user_id = models.CharField(max_length=254, blank=True, default="")
    creation_timestamp = models.BigIntegerField(default=now_ms)

    class Meta:
        ordering = ["-creation_timestamp", "-pk"]
        indexes = [models.Index(fields=["endpoint", "stage", "-creation_timestamp"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_batch_size__isnull=True, max_wait_ms__isnull=True)
                | models.Q(max_batch_size__isnull=False, max_wait_ms__isnull=False),
                name="batching_set_together",
            )
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.stage}: {self.summary}"

    @property
    def batching_enabled(self) -> bool:
        return self.max_batch_size is not None

    @property
    def summary(self) -> str:
        """The settings in words, as events and pages show them."""
        return ", ".join(self.summary_parts())

    def summary_parts(self) -> list[str]:
        """The workload size, then each setting that differs from its default."""
        parts = [self.workload_size]
        if self.workload_type != WorkloadType.CPU:
            parts.append(self.workload_type)
        if self.scale_to_zero_enabled:
            parts.append("scale to zero")
        if self.batching_enabled:
            parts.append(f"batching up to {self.max_batch_size} rows / {self.max_wait_ms} ms")
        parts += [described(name, value) for name, value in self.limit_overrides().items()]
        return parts + self._autoscaling_words()

    def _autoscaling_words(self) -> list[str]:
        low, high = self.min_replicas, self.max_replicas
        words = []
        if low is not None and high is not None:
            words.append(f"{low} to {high} replicas")
        elif low is not None:
            words.append(f"at least {low} replicas")
        elif high is not None:
            words.append(f"at most {high} replicas")
        if self.target_concurrency is not None:
            words.append(f"{self.target_concurrency} requests per replica")
        if self.scale_down_delay_seconds is not None:
            words.append(f"scale down after {self.scale_down_delay_seconds} s")
        if self.scale_to_zero_delay_seconds is not None:
            words.append(f"scale to zero after {self.scale_to_zero_delay_seconds} s")
        return words

    @property
    def concurrency_range(self) -> tuple[int, int]:
        low, high = WORKLOAD_CONCURRENCY[self.workload_size]
        return (0 if self.scale_to_zero_enabled else low, high)

    def limit_overrides(self) -> dict[str, float]:
        """The limits this config sets itself, over its workload size's (``WORKLOAD_LIMITS``)
        and its workload type's GPUs (``WORKLOAD_GPUS``)."""
        return {
            name: getattr(self, name) for name in LIMIT_FIELDS if getattr(self, name) is not None
        }

    def autoscaling_overrides(self) -> dict[str, int]:
        """The autoscaling settings this config sets itself."""
        return {
            name: getattr(self, name)
            for name in AUTOSCALING_FIELDS
            if getattr(self, name) is not None
        }

    def same_spec(self, other: ComputeConfig | None) -> bool:
        return other is not None and self._spec() == other._spec()

    def _spec(self) -> tuple[object, ...]:
        return (
            self.workload_size,
            self.workload_type,
            self.scale_to_zero_enabled,
            self.max_batch_size,
            self.max_wait_ms,
            *(getattr(self, name) for name in OVERRIDE_FIELDS),
        )


class EndpointVersion(models.Model):
    """One served model version, with the status the API and the UI report."""

    endpoint = models.ForeignKey(ServingEndpoint, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=32)
    # The version's stage in the registry as last seen ("" when not Staging/Production).
    registry_stage = models.CharField(max_length=16, blank=True, default="")
    # The served MLflow aliases that point at it in the registry, as last seen.
    registry_aliases = models.JSONField(default=list, blank=True)
    # True while the registry wants it served; a version leaving its stage stays served
    # (desired=False) until the stage's new version is ready, then drains and stops.
    desired = models.BooleanField(default=True)
    service_state = models.CharField(
        max_length=40, choices=ServiceState.choices, default=ServiceState.PENDING
    )
    service_message = models.TextField(blank=True, default="")
    service_config = models.ForeignKey(
        ComputeConfig, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    config_update_state = models.CharField(
        max_length=40, choices=ServiceState.choices, default=ServiceState.UNKNOWN
    )
    config_update_message = models.TextField(blank=True, default="")
    target_config = models.ForeignKey(
        ComputeConfig, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Environment preparation (model download, optional virtualenv).
    model_path = models.CharField(max_length=1024, blank=True, default="")
    environment_path = models.CharField(max_length=1024, blank=True, default="")
    build_log_path = models.CharField(max_length=1024, blank=True, default="")
    start_failures = models.PositiveIntegerField(default=0)
    desired_replicas = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["endpoint", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "version"], name="unique_endpoint_version")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} v{self.version}"

    @property
    def version_number(self) -> int:
        return int(self.version) if self.version.isdigit() else 0

    @property
    def is_ready(self) -> bool:
        return self.service_state == ServiceState.READY


class StageAlias(models.Model):
    """Routing pointer: the version a target's URL (a stage, or an MLflow alias as
    ``@<alias>``) answers with. Moves only to a READY version."""

    endpoint = models.ForeignKey(ServingEndpoint, on_delete=models.CASCADE, related_name="aliases")
    stage = models.CharField(max_length=TARGET_MAX_LENGTH)
    version = models.ForeignKey(EndpointVersion, on_delete=models.CASCADE, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["endpoint", "stage"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "stage"], name="unique_stage_alias")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.stage} → v{self.version.version}"


class Replica(models.Model):
    """One model server process. Its row is written before the process starts, so a crash
    between the two leaves a row to adopt or clean up, never an unknown process."""

    version = models.ForeignKey(EndpointVersion, on_delete=models.CASCADE, related_name="replicas")
    replica_id = models.CharField(max_length=32, unique=True)
    host = models.CharField(max_length=255, default="127.0.0.1")
    port = models.PositiveIntegerField()
    pid = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=ReplicaState.choices, default=ReplicaState.PENDING
    )
    state_message = models.TextField(blank=True, default="")
    worker_host = models.CharField(max_length=255, blank=True, default="")
    # The machine (local runtime: the worker's host) or Ray node the replica runs on.
    node = models.CharField(max_length=255, blank=True, default="")
    log_path = models.CharField(max_length=1024, blank=True, default="")
    # The GPUs given to it on the local runtime ("0,1"; Ray chooses its actors' own).
    gpu_devices = models.CharField(max_length=64, blank=True, default="")
    probe_failures = models.PositiveIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["version", "created_at"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return f"{self.replica_id} ({self.state})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_live(self) -> bool:
        return self.state in (ReplicaState.PENDING, ReplicaState.RUNNING)
