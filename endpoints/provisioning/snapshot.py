"""What the planner sees: plain frozen values of desired and observed state.

``observe`` builds them from database rows, the registry, the runtime and Redis; the pure
planner (``plan``, ``health``) reads only these, so a test writes them by hand. Times are
Unix seconds (floats).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from endpoints.models import ReplicaState, ServiceState
from endpoints.runtime.base import ReplicaLimits
from endpoints.targets import version_targets


@dataclass(frozen=True)
class Limits:
    """The settings a plan obeys (``settings.SERVING`` in production)."""

    start_failures_before_failed: int = 2
    probe_failures_before_restart: int = 3
    replica_start_timeout: float = 120.0
    request_timeout: float = 120.0
    replica_concurrency: int = 4
    max_replicas_per_version: int = 16
    scale_to_zero_after: float = 900.0
    scale_down_after: float = 60.0
    # A row whose process never showed up (the worker died before starting it) expires.
    unstarted_row_seconds: float = 30.0
    # How long a pass waits for the replicas it started to answer (0: not at all, the
    # follow-up pass probes them).
    start_wait: float = 0.0
    # How soon the next pass comes while a replica is loading.
    starting_follow_up: float = 1.0
    # A replica that crashed while serving is replaced after a delay that doubles with
    # each restart in a row (1, 2, 4 … seconds), up to the most; a replica that served
    # longer than ``restart_backoff_reset`` before it crashed starts the count again.
    restart_backoff: float = 1.0
    restart_backoff_max: float = 300.0
    restart_backoff_reset: float = 600.0

    def next_restart(self, restarts: int, served: float) -> int:
        """The restart count of the replacement for a replica with ``restarts`` that served
        ``served`` seconds before it crashed."""
        return 1 if served > self.restart_backoff_reset else restarts + 1

    def restart_delay(self, restarts: int) -> float:
        """How long after a crash the ``restarts``-th replacement in a row starts."""
        if restarts <= 0:
            return 0.0
        return min(self.restart_backoff * 2 ** min(restarts - 1, 30), self.restart_backoff_max)

    @property
    def terminate_grace(self) -> float:
        """How long a stopping replica may finish its requests before it is killed."""
        return self.request_timeout + 10


@dataclass(frozen=True)
class ConfigView:
    """A ``ComputeConfig`` row."""

    pk: int
    workload_size: str = "Small"
    scale_to_zero: bool = False
    created_at: float = 0.0
    # (max batch size, max wait in ms), or None: what each replica is started with.
    batching: tuple[int, int] | None = None
    # What each replica may use (``limits.replica_limits``): a rollout that changes them
    # replaces the replicas started with others.
    replica_limits: ReplicaLimits = field(default_factory=ReplicaLimits)
    # The config's own autoscaling (None: the workload size's range, the installation's
    # concurrency per replica and delays).
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_concurrency: int | None = None
    scale_down_after: float | None = None
    scale_to_zero_after: float | None = None
    # The settings in words (``ComputeConfig.summary``), as events show them.
    summary: str = ""

    def same_spec(self, other: ConfigView | None) -> bool:
        return other is not None and self._spec() == other._spec()

    def _spec(self) -> tuple[object, ...]:
        return (
            self.workload_size,
            self.scale_to_zero,
            self.batching,
            self.replica_limits,
            self.min_replicas,
            self.max_replicas,
            self.target_concurrency,
            self.scale_down_after,
            self.scale_to_zero_after,
        )

    @property
    def described(self) -> str:
        """The summary, or (a config written by hand) its size and scale to zero."""
        zero = " with scale to zero" if self.scale_to_zero else ""
        return self.summary or f"{self.workload_size}{zero}"


@dataclass(frozen=True)
class ReplicaView:
    """A ``Replica`` row that is not stopped yet."""

    replica_id: str
    version: str
    state: str = ReplicaState.PENDING
    pid: int | None = 1
    address: str = "127.0.0.1:20000"
    created_at: float = 0.0
    started_at: float | None = None
    stopped_at: float | None = None
    probe_failures: int = 0
    restarts: int = 0
    message: str = ""
    node: str = ""

    @property
    def running(self) -> bool:
        return self.state == ReplicaState.RUNNING


@dataclass(frozen=True)
class Health:
    """What the runtime says about one replica's process."""

    alive: bool = True
    # Answered ``GET /ping`` (asked only of a live, started process).
    healthy: bool = False
    # For a row without a pid: the process carrying its replica id, if one runs.
    found_pid: int | None = None
    # For a replica that is gone: the node it ran on, when that node was lost.
    lost_node: str = ""
    # For a replica that is gone: why, when its limits stopped it ("out of memory (limit
    # 4096 MiB)"; the runtime reads it from the replica's group).
    stop_reason: str = ""


@dataclass(frozen=True)
class VersionView:
    """An ``EndpointVersion`` row with its live (Pending or Running) replicas."""

    version: str
    stage: str = ""
    desired: bool = True
    # The served MLflow aliases pointing at it in the registry (names, without "@").
    aliases: tuple[str, ...] = ()
    service_state: str = ServiceState.PENDING
    message: str = ""
    config_update_state: str = ServiceState.UNKNOWN
    service_config: ConfigView | None = None
    target_config: ConfigView | None = None
    prepared: bool = True
    start_failures: int = 0
    ready_at: float | None = None
    replicas: tuple[ReplicaView, ...] = ()
    # The newest error message of its replicas (why starting failed).
    last_error: str = ""
    # The restart count of the replacement due for a replica that crashed while serving
    # (0: none to replace), and when that replica crashed.
    replacing: int = 0
    crashed_at: float | None = None

    @property
    def version_number(self) -> int:
        return int(self.version) if self.version.isdigit() else 0

    @property
    def ready(self) -> bool:
        return self.service_state == ServiceState.READY

    @property
    def targets(self) -> tuple[str, ...]:
        """The stage and ``@alias`` targets the registry wants it to serve."""
        return version_targets(self.stage, self.aliases)


@dataclass(frozen=True)
class LoadView:
    """What the gateways reported for a version, and the autoscaler's timer."""

    peak_in_flight: int = 0
    last_request_at: float = 0.0
    wake: bool = False
    low_since: float | None = None


@dataclass(frozen=True)
class EndpointView:
    """A ``ServingEndpoint`` row."""

    state: str
    message: str = ""


@dataclass(frozen=True)
class RegistryStages:
    """The registry's answer: {version: stage} of its Staging/Production versions, and
    {alias: version} of the aliases the endpoint serves."""

    stages: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)
    # False: the registered model was deleted.
    exists: bool = True
    # Not empty: the registry could not be asked (nothing is known).
    error: str = ""
    # {version: the directory its files belong in}: keyed by the version's identity in the
    # registry, so a version number registered again names another directory.
    model_dirs: dict[str, str] = field(default_factory=dict)
