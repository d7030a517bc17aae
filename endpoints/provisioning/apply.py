"""Executing a plan: each action becomes database writes, an event, a runtime call or a
Redis write. No decisions are taken here beyond what an I/O outcome forces (no free
port, a process that cannot start, a model that cannot be prepared).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from django.conf import settings
from django.utils import timezone
from redis.exceptions import RedisError

from endpoints import kv
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
)
from endpoints.telemetry import load_reports, metrics

from . import actions, environments, replicas
from .actions import Action
from .passes import Pass


def execute(run: Pass, planned: Iterable[Action]) -> None:
    run.forget_rows()
    for action in planned:
        run.fence()
        HANDLERS[type(action)](run, action)


def _config(pk: int) -> ComputeConfig:
    return ComputeConfig.objects.get(pk=pk)


def _save(version: EndpointVersion, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(version, name, value)
    version.save(update_fields=list(fields))


# --- the pass, events -----------------------------------------------------------------------


def _follow_up(run: Pass, action: actions.FollowUp) -> None:
    run.pending = True
    run.follow_up_seconds = min(run.follow_up_seconds, action.seconds)


def _await_started(run: Pass, action: actions.AwaitStarted) -> None:
    run.await_seconds = max(run.await_seconds, action.seconds)


def _publish_routing(run: Pass, action: actions.PublishRouting) -> None:
    run.routing_changed = True


def _record_event(run: Pass, action: actions.RecordEvent) -> None:
    replica = run.replica(action.replica_id) if action.replica_id else None
    version = run.version(action.version) if action.version else None
    Event.record(
        run.endpoint,
        action.type,
        action.message,
        version=version,
        replica=replica,
        alias=action.alias,
    )


# --- replicas ----------------------------------------------------------------------------


def _adopt_process(run: Pass, action: actions.AdoptProcess) -> None:
    replica = run.replica(action.replica_id)
    replica.pid = action.pid
    fields = ["pid"]
    placed = run.runtime.placement(replica.replica_id)
    if placed is not None:
        replica.host, replica.port, replica.node = placed.host, placed.port, placed.node
        fields += ["host", "port", "node"]
    replica.save(update_fields=fields)


def _mark_running(run: Pass, action: actions.MarkRunning) -> None:
    replica = run.replica(action.replica_id)
    replica.state = ReplicaState.RUNNING
    replica.state_message = ""
    replica.started_at = timezone.now()
    replica.probe_failures = 0
    replica.save(update_fields=["state", "state_message", "started_at", "probe_failures"])


def _set_probe_failures(run: Pass, action: actions.SetProbeFailures) -> None:
    replica = run.replica(action.replica_id)
    replica.probe_failures = action.count
    replica.save(update_fields=["probe_failures"])


def _kill_process(run: Pass, action: actions.KillProcess) -> None:
    replica = run.replica(action.replica_id)
    if replica.pid:
        run.runtime.kill(replica.pid, replica.replica_id)


def _mark_error(run: Pass, action: actions.MarkError) -> None:
    replica = run.replica(action.replica_id)
    message = action.message
    if action.with_log_tail:
        message = replicas.with_log_tail(run.runtime, message, replica)
    replicas.set_state(replica, ReplicaState.ERROR, message)


def _mark_stopped(run: Pass, action: actions.MarkStopped) -> None:
    replicas.set_state(run.replica(action.replica_id), ReplicaState.TERMINATED, action.message)


def _start_replica(run: Pass, action: actions.StartReplica) -> None:
    version = run.version(action.version)
    run.pending = True
    port = replicas.allocate_port(run.runtime, settings.SERVING["REPLICA_HOST"])
    if port is None:
        _save(version, service_message="No free port for a replica; retrying.")
        return
    name = run.endpoint.registered_model_name
    devices = replicas.allocate_gpus(run.runtime, version)
    if devices is None:
        _no_free_gpu(version, name, port, action.restarts)
        return
    replicas.gpu_wait_over(version)
    if action.restarts:
        run.replaced.pop(action.version, None)
    replica = replicas.create_row(version, name, port, action.restarts, devices)
    replicas.release_gpus(devices)  # the row holds them now
    # The row is committed (autocommit) before the process exists: see ``replicas``.
    run.fence()
    error = replicas.launch(run.runtime, replica)
    if error:
        replicas.set_state(replica, ReplicaState.ERROR, error)
        replicas.count_start_failure(version)
        return
    run.remember(replica)
    run.started.append(replica)
    for python in replicas.zygote_starts(run.runtime):
        text = f"Replica environment warmed up: {python} now forks replicas with imports done."
        _record_event(run, actions.RecordEvent(EventType.ZYGOTE_STARTED, text, version.version))
    _record_limits(run, replica)
    rid = replica.replica_id
    if action.restarts:
        text = f"Replica {rid} replaces a failed replica (restart {action.restarts})."
        _record_event(
            run, actions.RecordEvent(EventType.REPLICA_RESTARTED, text, version.version, rid)
        )
    gpus = f", GPUs {replica.gpu_devices}" if replica.gpu_devices else ""
    text = (
        f"Replica {rid} started on {replica.address} "
        f"(pid {replica.pid}, node {replica.node}{gpus})."
    )
    _record_event(run, actions.RecordEvent(EventType.REPLICA_STARTED, text, version.version, rid))


def _record_limits(run: Pass, replica: Replica) -> None:
    """The limits a version's replicas start with and what holds them, once per version
    and wording: the first start, and the first after a rollout or on another backend."""
    version = replica.version.version
    note = replicas.limits_note(run.runtime, replica)
    text = f"Replicas of version {version} start with limits: {note}."
    kind = EventType.REPLICA_LIMITS_APPLIED
    if not run.endpoint.events.filter(type=kind, message=text).exists():
        _record_event(run, actions.RecordEvent(kind, text, version, replica.replica_id))


def _no_free_gpu(version: EndpointVersion, name: str, port: int, restarts: int) -> None:
    """Wait for a GPU to free up; past the start timeout, this replica failed to start (an
    Error row says why), so a rollout that needs more GPUs than there are fails in the end
    instead of blocking every later change."""
    timeout = settings.SERVING["REPLICA_START_TIMEOUT_SECONDS"]
    if replicas.gpu_wait(version) < timeout:
        _save(version, service_message="No free GPU for a replica; waiting for one.")
        return
    replicas.gpu_wait_over(version)
    replica = replicas.create_row(version, name, port, restarts, ())
    reason = f"No GPU was free for this replica within {timeout:.0f} s: other replicas hold them."
    replicas.set_state(replica, ReplicaState.ERROR, reason)
    replicas.count_start_failure(version)


def _stop_replica(run: Pass, action: actions.StopReplica) -> None:
    replica = run.replica(action.replica_id)
    run.routing_changed |= replicas.begin_stop(replica, action.message)
    run.to_terminate.append(replica)


# --- versions ------------------------------------------------------------------------------


def _count_start_failure(run: Pass, action: actions.CountStartFailure) -> None:
    replicas.count_start_failure(run.version(action.version))


def _note_replacement(run: Pass, action: actions.NoteReplacement) -> None:
    run.replaced[action.version] = action.restarts


def _create_version(run: Pass, action: actions.CreateVersion) -> None:
    version = EndpointVersion.objects.create(
        endpoint=run.endpoint,
        version=action.version,
        registry_stage=action.stage,
        registry_aliases=list(action.aliases),
        service_message="Deploying.",
    )
    run.remember_version(version)


def _redeploy_version(run: Pass, action: actions.RedeployVersion) -> None:
    _save(
        run.version(action.version),
        desired=True,
        registry_stage=action.stage,
        registry_aliases=list(action.aliases),
        service_state=ServiceState.PENDING,
        service_message="Deploying.",
        service_config=None,
        config_update_state=ServiceState.UNKNOWN,
        config_update_message="",
        target_config=None,
        start_failures=0,
        ready_at=None,
    )


def _set_stage(run: Pass, action: actions.SetStage) -> None:
    _save(
        run.version(action.version),
        desired=bool(action.stage or action.aliases),
        registry_stage=action.stage,
        registry_aliases=list(action.aliases),
    )


def _mark_activity(run: Pass, action: actions.MarkActivity) -> None:
    with suppress(RedisError):
        load_reports.mark_request(run.version(action.version).pk)


def _retry_version(run: Pass, action: actions.RetryVersion) -> None:
    version = run.version(action.version)
    config = _config(action.config)
    if action.redeploy:
        _save(
            version,
            start_failures=0,
            target_config=config,
            service_state=ServiceState.PENDING,
            service_message="Deploying again.",
            config_update_state=ServiceState.UNKNOWN,
            config_update_message="",
        )
        return
    _save(
        version,
        start_failures=0,
        target_config=config,
        config_update_state=ServiceState.PENDING,
        config_update_message="Retrying the compute config update.",
    )


def _prepare_version(run: Pass, action: actions.PrepareVersion) -> None:
    version = run.version(action.version)
    name = run.endpoint.registered_model_name
    text = f"Preparing version {version.version}: downloading the model."
    _record_event(run, actions.RecordEvent(EventType.BUILD_STARTED, text, version.version))
    try:
        prepared = environments.prepare(name, version.version)
    except environments.BuildError as exc:
        _save(version, build_log_path=str(environments.build_log_path(name, version.version)))
        run.build_errors[version.version] = str(exc)
        return
    _save(
        version,
        model_path=prepared.model_path,
        environment_path=prepared.python,
        build_log_path=prepared.build_log_path,
    )
    text = f"Version {version.version} is prepared."
    _record_event(run, actions.RecordEvent(EventType.BUILD_FINISHED, text, version.version))


def _keep_config(run: Pass, action: actions.KeepConfig) -> None:
    _save(run.version(action.version), service_config=_config(action.config))


def _start_config_update(run: Pass, action: actions.StartConfigUpdate) -> None:
    _save(
        run.version(action.version),
        config_update_state=ServiceState.PENDING,
        config_update_message="Pending",
        target_config=_config(action.config),
    )


def _set_scale_timer(run: Pass, action: actions.SetScaleTimer) -> None:
    pk = run.version(action.version).pk
    client = kv.redis_client()
    with suppress(RedisError):
        if action.low_since is None:
            client.delete(kv.low_since_key(pk))
        else:
            client.set(kv.low_since_key(pk), repr(action.low_since), ex=3600)
        if action.clear_wake:
            load_reports.clear_wake(pk)


def _set_replica_target(run: Pass, action: actions.SetReplicaTarget) -> None:
    version = run.version(action.version)
    if version.desired_replicas != action.count:
        _save(version, desired_replicas=action.count)
    with suppress(RedisError):
        metrics.record_replicas(version.pk, action.count)


def _mark_ready(run: Pass, action: actions.MarkReady) -> None:
    version = run.version(action.version)
    _save(
        version,
        service_state=ServiceState.READY,
        service_message="Ready",
        service_config=_config(action.config),
        ready_at=version.ready_at or timezone.now(),
        start_failures=0,
    )


def _apply_config_update(run: Pass, action: actions.ApplyConfigUpdate) -> None:
    _save(
        run.version(action.version),
        service_config=_config(action.config),
        config_update_state=ServiceState.READY,
        config_update_message="Applied",
        start_failures=0,
    )


def _fail_config_update(run: Pass, action: actions.FailConfigUpdate) -> None:
    _save(
        run.version(action.version),
        config_update_state=ServiceState.FAILED,
        config_update_message=action.message,
    )


def _reset_start_failures(run: Pass, action: actions.ResetStartFailures) -> None:
    _save(run.version(action.version), start_failures=0)


def _fail_version(run: Pass, action: actions.FailVersion) -> None:
    fields: dict[str, Any] = {
        "service_state": ServiceState.FAILED,
        "service_message": action.message,
    }
    if action.config is not None:
        fields["target_config"] = _config(action.config)
    _save(run.version(action.version), **fields)


def _retire_version(run: Pass, action: actions.RetireVersion) -> None:
    _save(
        run.version(action.version),
        service_state=ServiceState.UNKNOWN,
        service_message="Retired.",
        config_update_state=ServiceState.UNKNOWN,
        config_update_message="",
    )


def _disable_versions(run: Pass, action: actions.DisableVersions) -> None:
    run.endpoint.versions.exclude(service_state=ServiceState.UNKNOWN).update(
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
    run.forget_rows()


# --- aliases and the endpoint ------------------------------------------------------------


def _move_alias(run: Pass, action: actions.MoveAlias) -> None:
    run.endpoint.aliases.update_or_create(
        stage=action.stage, defaults={"version": run.version(action.version)}
    )


def _remove_alias(run: Pass, action: actions.RemoveAlias) -> None:
    run.endpoint.aliases.filter(stage=action.stage).delete()


def _remove_aliases(run: Pass, action: actions.RemoveAliases) -> None:
    run.endpoint.aliases.all().delete()


def _clear_split(run: Pass, action: actions.ClearSplit) -> None:
    run.endpoint.traffic_splits.filter(target=action.target).delete()
    run.routing_changed = True


def _set_endpoint_state(run: Pass, action: actions.SetEndpointState) -> None:
    run.endpoint.state = action.state
    run.endpoint.state_message = action.message
    run.endpoint.save(update_fields=["state", "state_message", "updated_at"])


def _set_endpoint_message(run: Pass, action: actions.SetEndpointMessage) -> None:
    run.endpoint.state_message = action.message
    run.endpoint.save(update_fields=["state_message", "updated_at"])


HANDLERS: dict[type[Action], Callable[[Pass, Any], None]] = {
    actions.FollowUp: _follow_up,
    actions.AwaitStarted: _await_started,
    actions.PublishRouting: _publish_routing,
    actions.RecordEvent: _record_event,
    actions.AdoptProcess: _adopt_process,
    actions.MarkRunning: _mark_running,
    actions.SetProbeFailures: _set_probe_failures,
    actions.KillProcess: _kill_process,
    actions.MarkError: _mark_error,
    actions.MarkStopped: _mark_stopped,
    actions.StartReplica: _start_replica,
    actions.StopReplica: _stop_replica,
    actions.CountStartFailure: _count_start_failure,
    actions.NoteReplacement: _note_replacement,
    actions.CreateVersion: _create_version,
    actions.RedeployVersion: _redeploy_version,
    actions.SetStage: _set_stage,
    actions.MarkActivity: _mark_activity,
    actions.RetryVersion: _retry_version,
    actions.PrepareVersion: _prepare_version,
    actions.KeepConfig: _keep_config,
    actions.StartConfigUpdate: _start_config_update,
    actions.SetScaleTimer: _set_scale_timer,
    actions.SetReplicaTarget: _set_replica_target,
    actions.MarkReady: _mark_ready,
    actions.ApplyConfigUpdate: _apply_config_update,
    actions.FailConfigUpdate: _fail_config_update,
    actions.ResetStartFailures: _reset_start_failures,
    actions.FailVersion: _fail_version,
    actions.RetireVersion: _retire_version,
    actions.DisableVersions: _disable_versions,
    actions.MoveAlias: _move_alias,
    actions.RemoveAlias: _remove_alias,
    actions.RemoveAliases: _remove_aliases,
    actions.ClearSplit: _clear_split,
    actions.SetEndpointState: _set_endpoint_state,
    actions.SetEndpointMessage: _set_endpoint_message,
}
