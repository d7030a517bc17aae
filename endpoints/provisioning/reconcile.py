"""The reconcile loop: make what runs match what users asked for.

Desired state is an enabled ``ServingEndpoint``, the versions the MLflow registry has in
Staging and Production (transitions made directly in MLflow included) and the newest
``ComputeConfig`` per stage. Observed state is the ``Replica`` rows and the processes
behind them. One pass (``_pass``) observes (probes replicas, notices crashes, adopts
processes a previous worker started), then acts: prepares and starts what is missing,
moves stage aliases to READY versions, drains and stops what is no longer wanted, and
writes the states the API reports.

Safety:
- One endpoint is reconciled by one worker at a time (a Redis lock). A trigger that finds
  the lock taken leaves a *dirty* mark, and the holder runs another pass before it lets go,
  so no change is ever missed; Celery beat runs ``reconcile_all`` periodically as well.
- A replica's row is committed before its process starts, so a worker killed in between
  leaves a row that the next pass adopts (the process is found by its replica id) or
  expires, never an unknown process; processes of this installation without a live row
  are stopped (``collect_orphans``).
- A pass never waits for a model to load: it starts replicas and returns, and a follow-up
  pass a second later probes them.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import LockError, RedisError

from endpoints import kv, load, metrics, registry, triggers
from endpoints.kv import bump_generation, redis_client
from endpoints.models import (
    ComputeConfig,
    EndpointState,
    EndpointVersion,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    Stage,
    StageAlias,
)
from endpoints.runtime import ReplicaSpec, Runtime, get_runtime

from . import autoscale, environments

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 20
# A burst of triggers while a pass runs costs one extra pass, not one per trigger.
MAX_PASSES_PER_CALL = 5
FOLLOW_UP_SECONDS = 1.0
# A row whose process never showed up (the worker died before starting it) expires.
UNSTARTED_ROW_SECONDS = 30.0
SCALE_DOWN_AFTER_SECONDS = 60.0
LIVE = (ReplicaState.PENDING, ReplicaState.RUNNING)
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)


def serving(key: str):
    return settings.SERVING[key]


# --- entry points ---------------------------------------------------------------------------


@contextmanager
def _held(name: str) -> Iterator[bool]:
    """A Redis lock that stays held while its holder works and expires soon after the
    holder dies (a worker killed mid-pass blocks its endpoint for seconds, not minutes)."""
    lock = redis_client().lock(name, timeout=LOCK_TIMEOUT_SECONDS)
    if not lock.acquire(blocking=False):
        yield False
        return
    done = threading.Event()

    def keep_alive() -> None:
        while not done.wait(LOCK_TIMEOUT_SECONDS / 3):
            with suppress(LockError, RedisError):
                lock.reacquire()

    keeper = threading.Thread(target=keep_alive, name=f"lock:{name}", daemon=True)
    keeper.start()
    try:
        yield True
    finally:
        done.set()
        keeper.join()
        with suppress(LockError, RedisError):
            lock.release()


def reconcile_endpoint(pk: int, *, triggered: bool = True) -> None:
    """Converge one endpoint. Safe to call any number of times, from any worker."""
    client = redis_client()
    follow_up = False
    with _held(kv.reconcile_lock_key(pk)) as held:
        if not held:
            if triggered:
                client.set(kv.reconcile_dirty_key(pk), "1", ex=3600)
            return
        for _ in range(MAX_PASSES_PER_CALL):
            client.delete(kv.reconcile_dirty_key(pk))
            follow_up = _pass(pk)
            if not client.exists(kv.reconcile_dirty_key(pk)):
                break
    if follow_up:
        _schedule_follow_up(pk)


def reconcile_all() -> None:
    """The periodic pass: every endpoint that is enabled or still has something running."""
    with _held(kv.RECONCILE_ALL_LOCK_KEY) as held:
        if not held:
            return  # the previous periodic pass is still running
        pks = (
            ServingEndpoint.objects.filter(
                Q(enabled=True)
                | Q(versions__replicas__state__in=NOT_STOPPED)
                | Q(aliases__isnull=False)
            )
            .values_list("pk", flat=True)
            .distinct()
        )
        for pk in list(pks):
            try:
                reconcile_endpoint(pk, triggered=False)
            except Exception:  # one broken endpoint must not stop the others
                log.exception("reconcile: endpoint %s failed", pk)
        collect_orphans(get_runtime())
        rotate_logs(get_runtime())


def stop_all_replicas() -> int:
    """Stop every replica of this installation (the product is shutting down).

    Desired state is untouched: the next start brings the replicas back."""
    runtime = get_runtime()
    stopped = 0
    for replica in Replica.objects.filter(state__in=NOT_STOPPED):
        if replica.pid:
            runtime.stop(replica.pid, replica.replica_id, grace_seconds=10)
        _mark_stopped(replica, "Stopped with the product.")
        stopped += 1
    for replica_id, pid in runtime.discover(within=str(environments.data_dir())).items():
        runtime.stop(pid, replica_id, grace_seconds=5)
        stopped += 1
    with suppress(RedisError):
        bump_generation()
    return stopped


def _schedule_follow_up(pk: int) -> None:
    try:
        # One follow-up at a time per endpoint.
        # (redis-py takes whole seconds for ex: the expiry is in milliseconds.)
        expiry_ms = int(FOLLOW_UP_SECONDS * 1000)
        if redis_client().set(kv.follow_up_key(pk), "1", nx=True, px=expiry_ms):
            triggers.reconcile_soon(pk, countdown=FOLLOW_UP_SECONDS)
    except RedisError as exc:  # the periodic pass gets there anyway
        log.warning("reconcile: could not schedule a follow-up for %s: %s", pk, exc)


# --- one pass -------------------------------------------------------------------------------


class Pass:
    """What one pass learned and must finish: routing changes and replicas to stop."""

    def __init__(self, endpoint: ServingEndpoint, runtime: Runtime) -> None:
        self.endpoint = endpoint
        self.runtime = runtime
        self.routing_changed = False
        self.to_terminate: list[Replica] = []
        self.replaced: dict[int, int] = {}  # version pk → restarts of the replica replaced
        self.pending = False

    def event(self, type: str, message: str, **kwargs) -> None:
        Event.record(self.endpoint, type, message, **kwargs)

    def replica_event(self, type: str, replica: Replica, message: str) -> None:
        Event.record(self.endpoint, type, message, version=replica.version, replica=replica)

    def finish(self) -> None:
        """Publish routing changes, give gateways a moment, then stop what was drained."""
        if self.routing_changed or self.to_terminate:
            with suppress(RedisError):
                bump_generation()
        if not self.to_terminate:
            return
        # Gateways learn of the change at once, but a request may just have been sent.
        time.sleep(serving("DRAIN_SECONDS"))
        for replica in self.to_terminate:
            if replica.pid:
                self.runtime.terminate(replica.pid, replica.replica_id)
        self.pending = True  # a later pass confirms they are gone


def _pass(pk: int) -> bool:
    """One reconcile pass; True when a follow-up pass should come soon."""
    endpoint = ServingEndpoint.objects.filter(pk=pk).first()
    if endpoint is None:
        return False
    state = Pass(endpoint, get_runtime())
    observe(state)
    if not endpoint.enabled:
        teardown(state)
    else:
        converge(state)
    state.finish()
    return state.pending


# --- observe --------------------------------------------------------------------------------


def observe(state: Pass) -> None:
    """Update replica rows from what the processes do."""
    runtime = state.runtime
    replicas = Replica.objects.filter(
        version__endpoint=state.endpoint, state__in=NOT_STOPPED
    ).select_related("version")
    discovered: dict[str, int] | None = None
    for replica in replicas:
        if replica.state == ReplicaState.TERMINATING:
            _observe_terminating(state, replica)
            continue
        if replica.pid is None:
            if discovered is None:
                discovered = runtime.discover(within=str(environments.data_dir()))
            _adopt(state, replica, discovered.get(replica.replica_id))
            continue
        if not runtime.is_alive(replica.pid, replica.replica_id):
            _crashed(state, replica)
            continue
        healthy = runtime.probe(replica.host, replica.port)
        if replica.state == ReplicaState.PENDING:
            _observe_starting(state, replica, healthy)
        else:
            _observe_running(state, replica, healthy)


def _observe_terminating(state: Pass, replica: Replica) -> None:
    if replica.pid and state.runtime.is_alive(replica.pid, replica.replica_id):
        since = replica.stopped_at or timezone.now()
        grace = serving("REQUEST_TIMEOUT_SECONDS") + 10
        if (timezone.now() - since).total_seconds() < grace:
            state.pending = True
            return
        state.runtime.kill(replica.pid, replica.replica_id)
    _mark_stopped(replica, replica.state_message or "Stopped.")
    state.replica_event(
        EventType.REPLICA_STOPPED,
        replica,
        f"Replica {replica.replica_id} stopped.",
    )


def _adopt(state: Pass, replica: Replica, pid: int | None) -> None:
    """A row without a pid: the worker that wrote it died before saving the pid."""
    if pid is not None:
        replica.pid = pid
        replica.save(update_fields=["pid"])
        state.pending = True
        state.replica_event(
            EventType.REPLICA_ADOPTED,
            replica,
            f"Replica {replica.replica_id} (pid {pid}) adopted after a worker restart.",
        )
    elif (timezone.now() - replica.created_at).total_seconds() > UNSTARTED_ROW_SECONDS:
        _set_state(replica, ReplicaState.ERROR, "The replica process never started.")
    else:
        state.pending = True


def _crashed(state: Pass, replica: Replica) -> None:
    version = replica.version
    was_running = replica.state == ReplicaState.RUNNING
    if was_running:
        message = "The model server exited unexpectedly."
        state.routing_changed = True
        state.replaced[version.pk] = replica.restarts + 1
    else:
        message = "The model server exited while loading the model."
        _count_start_failure(version)
    _set_state(replica, ReplicaState.ERROR, _with_log_tail(message, replica))
    state.replica_event(
        EventType.REPLICA_CRASHED,
        replica,
        f"Replica {replica.replica_id} exited"
        + (" while serving." if was_running else " while loading the model."),
    )


def _observe_starting(state: Pass, replica: Replica, healthy: bool) -> None:
    if healthy:
        replica.state = ReplicaState.RUNNING
        replica.state_message = ""
        replica.started_at = timezone.now()
        replica.probe_failures = 0
        replica.save(update_fields=["state", "state_message", "started_at", "probe_failures"])
        state.routing_changed = True
        state.replica_event(
            EventType.REPLICA_READY,
            replica,
            f"Replica {replica.replica_id} is ready on {replica.address}.",
        )
        return
    age = (timezone.now() - replica.created_at).total_seconds()
    if age < serving("REPLICA_START_TIMEOUT_SECONDS"):
        state.pending = True
        return
    state.runtime.kill(replica.pid, replica.replica_id)
    _count_start_failure(replica.version)
    _set_state(
        replica,
        ReplicaState.ERROR,
        _with_log_tail(
            f"The model server did not answer its health check within {age:.0f} seconds.",
            replica,
        ),
    )
    state.replica_event(
        EventType.REPLICA_UNHEALTHY,
        replica,
        f"Replica {replica.replica_id} did not become healthy in time; it was stopped.",
    )


def _observe_running(state: Pass, replica: Replica, healthy: bool) -> None:
    if healthy:
        if replica.probe_failures:
            replica.probe_failures = 0
            replica.save(update_fields=["probe_failures"])
        return
    replica.probe_failures += 1
    limit = serving("PROBE_FAILURES_BEFORE_RESTART")
    if replica.probe_failures < limit:
        replica.save(update_fields=["probe_failures"])
        state.pending = True
        return
    state.runtime.kill(replica.pid, replica.replica_id)
    _set_state(
        replica,
        ReplicaState.ERROR,
        f"The model server failed {replica.probe_failures} health checks in a row.",
    )
    state.routing_changed = True
    state.replaced[replica.version_id] = replica.restarts + 1
    state.replica_event(
        EventType.REPLICA_UNHEALTHY,
        replica,
        f"Replica {replica.replica_id} failed {replica.probe_failures} health checks in a "
        "row; it was stopped and will be replaced.",
    )


def _count_start_failure(version: EndpointVersion) -> None:
    EndpointVersion.objects.filter(pk=version.pk).update(start_failures=version.start_failures + 1)
    version.start_failures += 1


def _with_log_tail(message: str, replica: Replica) -> str:
    """``message`` followed by the replica's last lines of output, when it has any."""
    tail = _log_tail(replica)
    return f"{message} Last output:\n{tail}" if tail else message


def _log_tail(replica: Replica, lines: int = 8) -> str:
    if not replica.log_path:
        return ""
    with suppress(OSError):
        text = get_runtime().read_log(replica.log_path, max_bytes=16 * 1024)
        kept = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(kept)[-1500:]
    return ""


def _set_state(replica: Replica, new_state: str, message: str = "") -> None:
    replica.state = new_state
    replica.state_message = message
    fields = ["state", "state_message"]
    if new_state in (ReplicaState.ERROR, ReplicaState.TERMINATED):
        replica.stopped_at = timezone.now()
        fields.append("stopped_at")
    replica.save(update_fields=fields)


def _mark_stopped(replica: Replica, message: str) -> None:
    _set_state(replica, ReplicaState.TERMINATED, message)


# --- converge -------------------------------------------------------------------------------


def converge(state: Pass) -> None:
    endpoint = state.endpoint
    try:
        served = registry.stage_versions(endpoint.registered_model_name)
    except registry.ModelNotFound:
        served = None
    except registry.RegistryError as exc:
        # Keep serving what runs; try again on the next pass.
        endpoint.state_message = f"The model registry is unavailable: {exc}"
        endpoint.save(update_fields=["state_message", "updated_at"])
        state.pending = True
        return
    sync_versions(state, served or {})
    configs = {stage: _config_for(endpoint, stage) for stage in Stage.values}
    alias_targets = set(endpoint.aliases.values_list("version_id", flat=True))
    for version in endpoint.versions.select_related("service_config", "target_config"):
        if version.desired:
            converge_version(state, version, configs[version.registry_stage])
        elif version.pk in alias_targets:
            # Left its stage, but the stage's new version is not ready: keep it serving.
            _heal(state, version)
    move_aliases(state)
    retire(state)
    if served is None:
        _set_endpoint_state(
            state,
            EndpointState.FAILED,
            "The registered model no longer exists in the model registry.",
        )
    else:
        update_endpoint_state(state)


def _config_for(endpoint: ServingEndpoint, stage: str) -> ComputeConfig:
    config = endpoint.current_compute_config(stage)
    if config is None:  # endpoints created before configs existed, or by hand in the admin
        config = ComputeConfig.objects.create(endpoint=endpoint, stage=stage)
    return config


def sync_versions(state: Pass, served: dict[str, str]) -> None:
    """Write which versions the registry wants served, and in which stage."""
    existing = {v.version: v for v in state.endpoint.versions.all()}
    for number, stage in served.items():
        version = existing.get(number)
        if version is None:
            version = EndpointVersion.objects.create(
                endpoint=state.endpoint,
                version=number,
                registry_stage=stage,
                service_message="Deploying.",
            )
            state.event(
                EventType.VERSION_DEPLOYING,
                f"Version {number} is being deployed for {stage}.",
                version=version,
            )
            continue
        if version.service_state == ServiceState.UNKNOWN:
            _reset_for_deploy(version)
            version.registry_stage = stage
            version.save()
            state.event(
                EventType.VERSION_DEPLOYING,
                f"Version {number} is being deployed for {stage}.",
                version=version,
            )
        elif not version.desired or version.registry_stage != stage:
            version.desired = True
            version.registry_stage = stage
            version.save(update_fields=["desired", "registry_stage"])
            # Entering a stage counts as activity: a version idle in Staging is not scaled
            # to zero the moment it takes over a scale-to-zero Production.
            with suppress(RedisError):
                load.mark_request(version.pk)
    for number, version in existing.items():
        if number not in served and version.desired:
            version.desired = False
            version.registry_stage = ""
            version.save(update_fields=["desired", "registry_stage"])


def _reset_for_deploy(version: EndpointVersion) -> None:
    version.desired = True
    version.service_state = ServiceState.PENDING
    version.service_message = "Deploying."
    version.service_config = None
    version.config_update_state = ServiceState.UNKNOWN
    version.config_update_message = ""
    version.target_config = None
    version.start_failures = 0
    version.ready_at = None


def converge_version(state: Pass, version: EndpointVersion, config: ComputeConfig) -> None:
    if version.config_update_state == ServiceState.RETRY_REQUESTED:
        _retry(state, version, config)
    if version.service_state == ServiceState.FAILED:
        if version.target_config_id == config.pk:
            _stop_replicas(state, version, "The version failed.")
            return
        _retry(state, version, config)  # a new compute config: try again with it
    if not environments.is_prepared(version.model_path) and not _prepare(state, version, config):
        return
    _begin_config_update(state, version, config)
    if version.config_update_state == ServiceState.FAILED and version.service_config:
        config = version.service_config  # keep what serves until the update is retried
    count = _desired_count(state, version, config)
    if version.start_failures >= serving("START_FAILURES_BEFORE_FAILED"):
        _start_failed(state, version, config)
        return
    _ensure_replicas(state, version, count)
    _settle(state, version, config, count)


def _retry(state: Pass, version: EndpointVersion, config: ComputeConfig) -> None:
    version.start_failures = 0
    if version.service_state == ServiceState.FAILED:
        version.service_state = ServiceState.PENDING
        version.service_message = "Deploying again."
        version.config_update_state = ServiceState.UNKNOWN
        version.config_update_message = ""
    else:
        version.config_update_state = ServiceState.PENDING
        version.config_update_message = "Retrying the compute config update."
    version.target_config = config
    version.save()
    state.event(
        EventType.VERSION_DEPLOYING, f"Retrying version {version.version}.", version=version
    )


def _prepare(state: Pass, version: EndpointVersion, config: ComputeConfig) -> bool:
    name = state.endpoint.registered_model_name
    state.event(
        EventType.BUILD_STARTED,
        f"Preparing version {version.version}: downloading the model.",
        version=version,
    )
    try:
        prepared = environments.prepare(name, version.version)
    except environments.BuildError as exc:
        version.build_log_path = str(environments.build_log_path(name, version.version))
        version.target_config = config
        _fail_version(state, version, str(exc), event=EventType.BUILD_FAILED)
        return False
    version.model_path = prepared.model_path
    version.environment_path = prepared.python
    version.build_log_path = prepared.build_log_path
    version.save(update_fields=["model_path", "environment_path", "build_log_path"])
    state.event(
        EventType.BUILD_FINISHED, f"Version {version.version} is prepared.", version=version
    )
    return True


def _begin_config_update(state: Pass, version: EndpointVersion, config: ComputeConfig) -> None:
    """A READY version whose stage got a new compute config starts rolling it out."""
    if version.service_state != ServiceState.READY:
        return
    if config.pk in (version.service_config_id, version.target_config_id):
        return
    if config.same_spec(version.service_config):
        # The same spec again: nothing to roll out.
        version.service_config = config
        version.save(update_fields=["service_config"])
        return
    version.config_update_state = ServiceState.PENDING
    version.config_update_message = "Pending"
    version.target_config = config
    version.save(update_fields=["config_update_state", "config_update_message", "target_config"])
    state.event(
        EventType.CONFIG_UPDATE_STARTED,
        f"Rolling out {config.workload_size}"
        f"{' with scale to zero' if config.scale_to_zero_enabled else ''} "
        f"to version {version.version}.",
        version=version,
    )


def _desired_count(state: Pass, version: EndpointVersion, config: ComputeConfig) -> int:
    live = list(version.replicas.filter(state__in=LIVE))
    current = len(live)
    now = time.time()
    try:
        observed = load.current(version.pk)
        wake = load.wake_requested(version.pk)
        low_since_raw = redis_client().get(kv.low_since_key(version.pk))
    except RedisError:
        return max(current, 1 if version.service_state != ServiceState.READY else current)
    activity = [observed.last_request_at, config.creation_timestamp / 1000]
    if version.ready_at:
        activity.append(version.ready_at.timestamp())
    activity.extend(r.started_at.timestamp() for r in live if r.started_at)
    if version.service_state != ServiceState.READY or any(
        r.state == ReplicaState.PENDING for r in live
    ):
        activity.append(now)  # never scale to zero something still coming up
    decision = autoscale.decide(
        current=current,
        workload_size=config.workload_size,
        scale_to_zero=config.scale_to_zero_enabled,
        peak_in_flight=observed.peak_in_flight,
        last_activity=max(activity),
        wake=wake,
        low_since=float(low_since_raw) if low_since_raw else None,
        now=now,
        per_replica=serving("REPLICA_CONCURRENCY"),
        max_replicas=serving("MAX_REPLICAS_PER_VERSION"),
        scale_to_zero_after=serving("SCALE_TO_ZERO_AFTER_SECONDS"),
        scale_down_after=SCALE_DOWN_AFTER_SECONDS,
    )
    with suppress(RedisError):
        if decision.low_since is None:
            redis_client().delete(kv.low_since_key(version.pk))
        else:
            redis_client().set(kv.low_since_key(version.pk), repr(decision.low_since), ex=3600)
        if wake:
            load.clear_wake(version.pk)
    count = decision.replicas
    if version.service_state != ServiceState.READY:
        count = max(count, 1)  # a version proves it loads before it is READY
    _record_scaling(state, version, current, count, decision.reason, wake)
    if version.desired_replicas != count:
        version.desired_replicas = count
        version.save(update_fields=["desired_replicas"])
    with suppress(RedisError):
        metrics.record_replicas(version.pk, count)
    return count


def _record_scaling(
    state: Pass, version: EndpointVersion, current: int, count: int, reason: str, wake: bool
) -> None:
    if count == current or version.service_state != ServiceState.READY:
        return
    if version.pk in state.replaced and count == current + 1:
        return  # replacing a failed replica, not scaling
    because = f" ({reason})" if reason else ""
    if count == 0:
        kind, text = EventType.SCALED_TO_ZERO, f"Scaled to zero{because}."
    elif current == 0 and wake:
        kind, text = EventType.WOKEN_FROM_ZERO, "Starting a replica: a request is waiting."
    elif count > current:
        kind, text = EventType.SCALED_UP, f"Scaling up from {current} to {count} replicas{because}."
    else:
        kind, text = (
            EventType.SCALED_DOWN,
            f"Scaling down from {current} to {count} replicas{because}.",
        )
    state.event(kind, text, version=version)


def _ensure_replicas(state: Pass, version: EndpointVersion, count: int) -> None:
    live = list(version.replicas.filter(state__in=LIVE).order_by("created_at"))
    for _ in range(count - len(live)):
        _start_replica(state, version)
    if len(live) > count:
        # Not-yet-ready ones first, then the newest.
        extra = sorted(
            live, key=lambda r: (r.state == ReplicaState.RUNNING, -r.created_at.timestamp())
        )[: len(live) - count]
        for replica in extra:
            _begin_stop(state, replica, "Scaled down.")


def _start_replica(state: Pass, version: EndpointVersion) -> Replica | None:
    name = state.endpoint.registered_model_name
    replica_id = f"v{version.version}-{secrets.token_hex(4)}"[:32]
    host = serving("REPLICA_HOST")
    port = _allocate_port(state.runtime, host)
    if port is None:
        version.service_message = "No free port for a replica; retrying."
        version.save(update_fields=["service_message"])
        state.pending = True
        return None
    restarts = state.replaced.pop(version.pk, 0)
    replica = Replica.objects.create(
        version=version,
        replica_id=replica_id,
        host=host,
        port=port,
        worker_host=socket.gethostname(),
        log_path=str(environments.replica_log_path(name, version.version, replica_id)),
        restarts=restarts,
    )
    # The row is committed (autocommit) before the process exists: see the module doc.
    spec = ReplicaSpec(
        replica_id=replica_id,
        model_path=version.model_path,
        host=host,
        port=port,
        log_path=replica.log_path,
        python=version.environment_path or sys.executable,
        request_timeout_seconds=serving("REQUEST_TIMEOUT_SECONDS"),
    )
    try:
        replica.pid = state.runtime.start(spec)
    except OSError as exc:
        _set_state(replica, ReplicaState.ERROR, f"Could not start the model server: {exc}")
        _count_start_failure(version)
        state.pending = True
        return None
    replica.save(update_fields=["pid"])
    state.pending = True
    if restarts:
        state.replica_event(
            EventType.REPLICA_RESTARTED,
            replica,
            f"Replica {replica_id} replaces a failed replica (restart {restarts}).",
        )
    state.replica_event(
        EventType.REPLICA_STARTED,
        replica,
        f"Replica {replica_id} started on {replica.address} (pid {replica.pid}).",
    )
    return replica


def _allocate_port(runtime: Runtime, host: str) -> int | None:
    low, high = serving("REPLICA_PORT_MIN"), serving("REPLICA_PORT_MAX")
    taken = set(Replica.objects.filter(state__in=NOT_STOPPED).values_list("port", flat=True))
    candidates = [p for p in range(low, high + 1) if p not in taken]
    random.shuffle(candidates)
    client = redis_client()
    for port in candidates[:200]:
        if not runtime.port_is_free(host, port):
            continue
        # A short reservation: two workers starting replicas at once pick different ports.
        with suppress(RedisError):
            if not client.set(kv.port_reservation_key(host, port), "1", nx=True, ex=60):
                continue
        return port
    return None


def _begin_stop(state: Pass, replica: Replica, message: str) -> None:
    """Take a replica out of routing now; its process is stopped at the end of the pass."""
    was_running = replica.state == ReplicaState.RUNNING
    replica.state = ReplicaState.TERMINATING
    replica.state_message = message
    replica.stopped_at = timezone.now()
    replica.save(update_fields=["state", "state_message", "stopped_at"])
    state.routing_changed |= was_running
    state.to_terminate.append(replica)


def _stop_replicas(state: Pass, version: EndpointVersion, message: str) -> None:
    for replica in version.replicas.filter(state__in=LIVE):
        _begin_stop(state, replica, message)


def _heal(state: Pass, version: EndpointVersion) -> None:
    """Keep a draining-to-be version at the replicas it has (at least one)."""
    live = version.replicas.filter(state__in=LIVE).count()
    if live == 0 and environments.is_prepared(version.model_path):
        _start_replica(state, version)


def _start_failed(state: Pass, version: EndpointVersion, config: ComputeConfig) -> None:
    """Replicas of this version failed to start too often."""
    reason = _last_error(version) or "The model server did not start."
    if version.service_state == ServiceState.READY:
        fields = ["start_failures"]
        if version.config_update_state != ServiceState.FAILED:
            version.config_update_state = ServiceState.FAILED
            version.config_update_message = f"Replicas failed to start: {reason}"
            fields += ["config_update_state", "config_update_message"]
            state.event(
                EventType.CONFIG_UPDATE_FAILED,
                f"The compute config update of version {version.version} failed.",
                version=version,
            )
        version.start_failures = 0
        version.save(update_fields=fields)
        return
    version.target_config = config
    _fail_version(state, version, f"The model could not be loaded. {reason}")


def _last_error(version: EndpointVersion) -> str:
    replica = version.replicas.filter(state=ReplicaState.ERROR).order_by("-stopped_at").first()
    return replica.state_message if replica else ""


def _fail_version(state: Pass, version: EndpointVersion, message: str, *, event: str = "") -> None:
    version.service_state = ServiceState.FAILED
    version.service_message = message[:4000]
    version.save()
    _stop_replicas(state, version, "The version failed.")
    if event:
        state.event(event, f"Preparing version {version.version} failed.", version=version)
    state.event(
        EventType.VERSION_FAILED,
        f"Version {version.version} failed: {message[:500]}",
        version=version,
    )


def _settle(state: Pass, version: EndpointVersion, config: ComputeConfig, count: int) -> None:
    """Mark a version READY, or a config update applied, once its replicas run."""
    running = version.replicas.filter(state=ReplicaState.RUNNING).count()
    if version.service_state == ServiceState.PENDING and running >= 1:
        version.service_state = ServiceState.READY
        version.service_message = "Ready"
        version.service_config = config
        version.ready_at = version.ready_at or timezone.now()
        version.start_failures = 0
        version.save()
        state.routing_changed = True
        state.event(
            EventType.VERSION_READY, f"Version {version.version} is ready.", version=version
        )
        return
    if version.config_update_state == ServiceState.PENDING and running >= count:
        version.service_config = version.target_config or config
        version.config_update_state = ServiceState.READY
        version.config_update_message = "Applied"
        version.start_failures = 0
        version.save()
        state.routing_changed = True
        state.event(
            EventType.CONFIG_UPDATE_APPLIED,
            f"Version {version.version} now runs with {version.service_config.workload_size}"
            f"{' and scale to zero' if version.service_config.scale_to_zero_enabled else ''}.",
            version=version,
        )


# --- aliases, retiring, endpoint state -----------------------------------------------------


def choose_alias(candidates: Iterable[EndpointVersion]) -> EndpointVersion | None:
    """The version a stage URL should answer with: the newest READY one of the stage."""
    ready = [v for v in candidates if v.service_state == ServiceState.READY]
    return max(ready, key=lambda v: v.version_number, default=None)


def move_aliases(state: Pass) -> None:
    endpoint = state.endpoint
    versions = list(endpoint.versions.all())
    aliases = {a.stage: a for a in endpoint.aliases.select_related("version")}
    for stage in Stage.values:
        in_stage = [v for v in versions if v.desired and v.registry_stage == stage]
        best = choose_alias(in_stage)
        current = aliases.get(stage)
        if best is not None and (current is None or current.version_id != best.pk):
            StageAlias.objects.update_or_create(
                endpoint=endpoint, stage=stage, defaults={"version": best}
            )
            state.routing_changed = True
            was = f" (was version {current.version.version})" if current else ""
            state.event(
                EventType.VERSION_ALIAS_MOVED,
                f"{stage} now serves version {best.version}{was}.",
                version=best,
            )
        elif best is None and not in_stage and current is not None:
            current.delete()
            state.routing_changed = True


def retire(state: Pass) -> None:
    """Drain and stop versions that no longer serve a stage and are no alias target."""
    endpoint = state.endpoint
    targets = set(endpoint.aliases.values_list("version_id", flat=True))
    leaving = endpoint.versions.filter(desired=False).exclude(service_state=ServiceState.UNKNOWN)
    for version in leaving:
        if version.pk in targets:
            continue
        _stop_replicas(state, version, "The version no longer serves a stage.")
        version.service_state = ServiceState.UNKNOWN
        version.service_message = "Retired."
        version.config_update_state = ServiceState.UNKNOWN
        version.config_update_message = ""
        version.save()
        state.routing_changed = True
        state.event(
            EventType.VERSION_RETIRED,
            f"Version {version.version} no longer serves a stage: drained and stopped.",
            version=version,
        )


def update_endpoint_state(state: Pass) -> None:
    endpoint = state.endpoint
    versions = [v for v in endpoint.versions.all() if v.desired]
    served_stages = set(endpoint.aliases.values_list("stage", flat=True))
    pending = [v for v in versions if v.service_state == ServiceState.PENDING]
    failed = [v for v in versions if v.service_state == ServiceState.FAILED]
    unserved = {v.registry_stage for v in versions} - served_stages
    notes = []
    if pending:
        notes.append(f"deploying version {', '.join(v.version for v in pending)}")
    if failed:
        notes.append("; ".join(f"version {v.version} failed: {v.service_message}" for v in failed))
    if not versions:
        new_state, message = (
            EndpointState.READY,
            "No version of this model is in Staging or Production: nothing to serve.",
        )
    elif not unserved:
        new_state = EndpointState.READY
        message = "Ready" + (f" ({'; '.join(notes)})" if notes else "")
    elif any(v.registry_stage in unserved for v in pending):
        new_state, message = EndpointState.PENDING, "Pending: " + "; ".join(notes)
    else:
        new_state, message = EndpointState.FAILED, "; ".join(notes) or "No version could serve."
    _set_endpoint_state(state, new_state, message)


def _set_endpoint_state(state: Pass, new_state: str, message: str) -> None:
    endpoint = state.endpoint
    message = message[:4000]
    if endpoint.state == new_state and endpoint.state_message == message:
        return
    changed = endpoint.state != new_state
    endpoint.state = new_state
    endpoint.state_message = message
    endpoint.save(update_fields=["state", "state_message", "updated_at"])
    if changed and new_state == EndpointState.READY:
        state.event(EventType.ENDPOINT_READY, "Serving is ready.")
    elif changed and new_state == EndpointState.FAILED:
        state.event(EventType.ENDPOINT_FAILED, f"Serving failed: {message[:500]}")


# --- disable --------------------------------------------------------------------------------


def teardown(state: Pass) -> None:
    endpoint = state.endpoint
    if endpoint.aliases.exists():
        endpoint.aliases.all().delete()
        state.routing_changed = True
    for version in endpoint.versions.all():
        _stop_replicas(state, version, "Serving was disabled.")
    endpoint.versions.exclude(service_state=ServiceState.UNKNOWN).update(
        desired=False,
        service_state=ServiceState.UNKNOWN,
        service_message="Serving is disabled.",
        service_config=None,
        config_update_state=ServiceState.UNKNOWN,
        config_update_message="",
        target_config=None,
        start_failures=0,
        ready_at=None,
    )
    left = Replica.objects.filter(version__endpoint=endpoint, state__in=NOT_STOPPED).exists()
    if not left and not state.to_terminate:
        message = "Serving is disabled."
        if endpoint.state_message != message:
            endpoint.state_message = message
            endpoint.save(update_fields=["state_message", "updated_at"])


# --- housekeeping ---------------------------------------------------------------------------


def collect_orphans(runtime: Runtime) -> int:
    """Stop replica processes of this installation that no live row accounts for."""
    found = runtime.discover(within=str(environments.data_dir()))
    if not found:
        return 0
    known = set(
        Replica.objects.filter(replica_id__in=found, state__in=NOT_STOPPED).values_list(
            "replica_id", flat=True
        )
    )
    stopped = 0
    for replica_id, pid in found.items():
        if replica_id in known:
            continue
        log.warning("reconcile: stopping orphan replica %s (pid %s)", replica_id, pid)
        runtime.kill(pid, replica_id)
        stopped += 1
    return stopped


def rotate_logs(runtime: Runtime) -> None:
    limit = serving("LOG_MAX_BYTES")
    for path in Replica.objects.filter(state__in=NOT_STOPPED).values_list("log_path", flat=True):
        if path:
            with suppress(OSError):
                runtime.rotate_log(path, max_bytes=limit)


__all__ = [
    "choose_alias",
    "collect_orphans",
    "reconcile_all",
    "reconcile_endpoint",
    "stop_all_replicas",
]
