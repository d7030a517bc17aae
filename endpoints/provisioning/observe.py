"""Reading desired and observed state into the planner's plain values (``snapshot``).

Reads only: database rows, the registry, the runtime (is a process alive, does it answer
``/ping``, which processes carry a replica id) and the load the gateways report in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from redis.exceptions import RedisError

from endpoints import kv, registry
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServingEndpoint,
)
from endpoints.runtime import Runtime
from endpoints.targets import served_aliases
from endpoints.telemetry import load_reports

from . import environments
from .limits import view_fields
from .snapshot import (
    ConfigView,
    EndpointView,
    Health,
    Limits,
    LoadView,
    RegistryStages,
    ReplicaView,
    VersionView,
)

LIVE = (ReplicaState.PENDING, ReplicaState.RUNNING)
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)
SCALE_DOWN_AFTER_SECONDS = 60.0
UNSTARTED_ROW_SECONDS = 30.0
# A replica forked from a zygote answers in a fraction of a second: the pass that starts
# it waits this long for it. One launched afresh takes seconds: follow-up passes probe it.
START_WAIT_SECONDS = 2.0
STARTING_FOLLOW_UP_SECONDS = 0.5


def limits() -> Limits:
    serving = settings.SERVING
    return Limits(
        start_failures_before_failed=serving["START_FAILURES_BEFORE_FAILED"],
        probe_failures_before_restart=serving["PROBE_FAILURES_BEFORE_RESTART"],
        replica_start_timeout=serving["REPLICA_START_TIMEOUT_SECONDS"],
        request_timeout=serving["REQUEST_TIMEOUT_SECONDS"],
        replica_concurrency=serving["REPLICA_CONCURRENCY"],
        max_replicas_per_version=serving["MAX_REPLICAS_PER_VERSION"],
        scale_to_zero_after=serving["SCALE_TO_ZERO_AFTER_SECONDS"],
        scale_down_after=SCALE_DOWN_AFTER_SECONDS,
        unstarted_row_seconds=UNSTARTED_ROW_SECONDS,
        start_wait=START_WAIT_SECONDS if serving["REPLICA_START"] == "zygote" else 0.0,
        starting_follow_up=STARTING_FOLLOW_UP_SECONDS,
        restart_backoff=serving["RESTART_BACKOFF_SECONDS"],
        restart_backoff_max=serving["RESTART_BACKOFF_MAX_SECONDS"],
        restart_backoff_reset=serving["RESTART_BACKOFF_RESET_SECONDS"],
    )


def _seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


# --- replicas ------------------------------------------------------------------------------


def replica_view(replica: Replica) -> ReplicaView:
    return ReplicaView(
        replica_id=replica.replica_id,
        version=replica.version.version,
        state=replica.state,
        pid=replica.pid,
        address=replica.address,
        created_at=replica.created_at.timestamp(),
        started_at=_seconds(replica.started_at),
        stopped_at=_seconds(replica.stopped_at),
        probe_failures=replica.probe_failures,
        restarts=replica.restarts,
        message=replica.state_message,
        node=replica.node,
    )


def replica_health(
    endpoint: ServingEndpoint, runtime: Runtime
) -> Iterator[tuple[ReplicaView, Health]]:
    """Each replica that is not stopped, with what its process does (asked when reached,
    so a decision acts on a fresh probe)."""
    replicas = Replica.objects.filter(
        version__endpoint=endpoint, state__in=NOT_STOPPED
    ).select_related("version")
    discovered: dict[str, int] | None = None
    lost: set[str] | None = None
    for replica in replicas:
        if replica.state == ReplicaState.TERMINATING:
            alive = bool(replica.pid) and runtime.is_alive(replica.pid, replica.replica_id)
            health = Health(alive=alive)
        elif replica.pid is None:
            if discovered is None:  # one scan of the processes for all such rows
                discovered = runtime.discover(within=str(environments.data_dir()))
            health = Health(alive=False, found_pid=discovered.get(replica.replica_id))
        elif not runtime.is_alive(replica.pid, replica.replica_id):
            if lost is None:  # one question to the runtime for all gone replicas
                lost = runtime.lost_nodes()
            health = Health(
                alive=False,
                lost_node=replica.node if replica.node in lost else "",
                stop_reason=runtime.stop_reason(replica.replica_id),
            )
        else:
            health = Health(alive=True, healthy=runtime.probe(replica.host, replica.port))
        yield replica_view(replica), health


def replicas_left(endpoint: ServingEndpoint) -> bool:
    return Replica.objects.filter(version__endpoint=endpoint, state__in=NOT_STOPPED).exists()


# --- versions, configs, load ------------------------------------------------------------


def config_view(config: ComputeConfig) -> ConfigView:
    return ConfigView(
        pk=config.pk,
        workload_size=config.workload_size,
        scale_to_zero=config.scale_to_zero_enabled,
        created_at=config.creation_timestamp / 1000,
        batching=(
            (config.max_batch_size, config.max_wait_ms)
            if config.max_batch_size is not None and config.max_wait_ms is not None
            else None
        ),
        **view_fields(config),
    )


def _optional(config: ComputeConfig | None) -> ConfigView | None:
    return config_view(config) if config is not None else None


def version_view(version: EndpointVersion, *, replacing: int = 0) -> VersionView:
    live = version.replicas.filter(state__in=LIVE).order_by("created_at")
    last_error = version.replicas.filter(state=ReplicaState.ERROR).order_by("-stopped_at").first()
    crashed_at, replacing = _unreplaced_crash(version, last_error, replacing)
    return VersionView(
        version=version.version,
        stage=version.registry_stage,
        desired=version.desired,
        aliases=tuple(version.registry_aliases or ()),
        service_state=version.service_state,
        message=version.service_message,
        config_update_state=version.config_update_state,
        service_config=_optional(version.service_config),
        target_config=_optional(version.target_config),
        prepared=environments.is_prepared(version.model_path),
        start_failures=version.start_failures,
        ready_at=_seconds(version.ready_at),
        replicas=tuple(replica_view(r) for r in live.select_related("version")),
        last_error=last_error.state_message if last_error else "",
        replacing=replacing,
        crashed_at=crashed_at,
    )


def _unreplaced_crash(
    version: EndpointVersion, last_error: Replica | None, replacing: int
) -> tuple[float | None, int]:
    """When the version's newest error is a replica that crashed while serving, within the
    backoff's reset, and none has started since: when it crashed, and the restart count of
    its replacement (one more than the crashed replica's, or 1 when it served longer than
    the reset). A replica started later than that (a version woken from zero long after)
    is no replacement."""
    if last_error is None or last_error.started_at is None or last_error.stopped_at is None:
        return None, replacing
    rules = limits()
    if now() - last_error.stopped_at.timestamp() > rules.restart_backoff_reset:
        return None, replacing
    if version.replicas.filter(created_at__gt=last_error.stopped_at).exists():
        return None, replacing
    served = (last_error.stopped_at - last_error.started_at).total_seconds()
    return last_error.stopped_at.timestamp(), rules.next_restart(last_error.restarts, served)


def version_rows(endpoint: ServingEndpoint) -> list[EndpointVersion]:
    return list(endpoint.versions.select_related("service_config", "target_config"))


def version_row(pk: int) -> EndpointVersion:
    return EndpointVersion.objects.select_related("service_config", "target_config").get(pk=pk)


def versions(endpoint: ServingEndpoint) -> list[VersionView]:
    return [version_view(v) for v in version_rows(endpoint)]


def load_of(version_pk: int) -> LoadView | None:
    """None when Redis cannot be read."""
    try:
        observed = load_reports.current(version_pk)
        wake = load_reports.wake_requested(version_pk)
        low_since = kv.redis_client().get(kv.low_since_key(version_pk))
    except RedisError:
        return None
    return LoadView(
        peak_in_flight=observed.peak_in_flight,
        last_request_at=observed.last_request_at,
        wake=wake,
        low_since=float(low_since) if low_since else None,
    )


# --- endpoint, aliases, registry -----------------------------------------------------------


def endpoint_view(endpoint: ServingEndpoint) -> EndpointView:
    return EndpointView(state=endpoint.state, message=endpoint.state_message)


def aliases(endpoint: ServingEndpoint) -> dict[str, str]:
    """{target: version} of the serving pointers (stages, and aliases as ``@<alias>``)."""
    return {a.stage: a.version.version for a in endpoint.aliases.select_related("version")}


def splits(endpoint: ServingEndpoint) -> dict[str, dict[str, int]]:
    """{target: {version: weight}} of the endpoint's traffic splits."""
    return {s.target: dict(s.weights) for s in endpoint.traffic_splits.all()}


def registry_stages(endpoint: ServingEndpoint) -> RegistryStages:
    try:
        model = registry.get_model(endpoint.registered_model_name)
        stages = {v.version: v.stage for v in model.versions if v.stage in registry.SERVED_STAGES}
        aliases = served_aliases(dict(model.aliases), endpoint.served_aliases)
        wanted = set(stages) | set(aliases.values())
        return RegistryStages(
            stages,
            aliases,
            model_dirs={
                v.version: str(
                    environments.model_dir(model.name, v.version, environments.identity(v))
                )
                for v in model.versions
                if v.version in wanted
            },
        )
    except registry.ModelNotFound:
        return RegistryStages({}, exists=False)
    except registry.RegistryError as exc:
        return RegistryStages({}, error=str(exc))


def now() -> float:
    return time.time()
