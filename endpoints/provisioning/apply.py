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
    ReplicaState,
    ServiceState,
)
from endpoints.telemetry import load_reports, metrics

from . import actions as a
from . import environments, replicas
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


def _follow_up(run: Pass, action: a.FollowUp) -> None:
    run.pending = True
    run.follow_up_seconds = min(run.follow_up_seconds, action.seconds)


def _await_started(run: Pass, action: a.AwaitStarted) -> None:
    run.await_seconds = max(run.await_seconds, action.seconds)


def _publish_routing(run: Pass, action: a.PublishRouting) -> None:
    run.routing_changed = True


def _record_event(run: Pass, action: a.RecordEvent) -> None:
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


def _adopt_process(run: Pass, action: a.AdoptProcess) -> None:
    replica = run.replica(action.replica_id)
    replica.pid = action.pid
    fields = ["pid"]
    placed = run.runtime.placement(replica.replica_id)
    if placed is not None:
        replica.host, replica.port, replica.node = placed.host, placed.port, placed.node
        fields += ["host", "port", "node"]
    replica.save(update_fields=fields)


def _mark_running(run: Pass, action: a.MarkRunning) -> None:
    replica = run.replica(action.replica_id)
    replica.state = ReplicaState.RUNNING
    replica.state_message = ""
    replica.started_at = timezone.now()
    replica.probe_failures = 0
    replica.save(update_fields=["state", "state_message", "started_at", "probe_failures"])


def _set_probe_failures(run: Pass, action: a.SetProbeFailures) -> None:
    replica = run.replica(action.replica_id)
    replica.probe_failures = action.count
    replica.save(update_fields=["probe_failures"])


def _kill_process(run: Pass, action: a.KillProcess) -> None:
    replica = run.replica(action.replica_id)
    if replica.pid:
        run.runtime.kill(replica.pid, replica.replica_id)


def _mark_error(run: Pass, action: a.MarkError) -> None:
    replica = run.replica(action.replica_id)
    message = action.message
    if action.with_log_tail:
        message = replicas.with_log_tail(run.runtime, message, replica)
    replicas.set_state(replica, ReplicaState.ERROR, message)


def _mark_stopped(run: Pass, action: a.MarkStopped) -> None:
    replicas.set_state(run.replica(action.replica_id), ReplicaState.TERMINATED, action.message)


def _start_replica(run: Pass, action: a.StartReplica) -> None:
    version = run.version(action.version)
    run.pending = True
    port = replicas.allocate_port(run.runtime, settings.SERVING["REPLICA_HOST"])
    if port is None:
        _save(version, service_message="No free port for a replica; retrying.")
        return
    if action.restarts:
        run.replaced.pop(action.version, None)
    name = run.endpoint.registered_model_name
    replica = replicas.create_row(version, name, port, action.restarts)
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
        _record_event(run, a.RecordEvent(EventType.ZYGOTE_STARTED, text, version.version))
    rid = replica.replica_id
    if action.restarts:
        text = f"Replica {rid} replaces a failed replica (restart {action.restarts})."
        _record_event(run, a.RecordEvent(EventType.REPLICA_RESTARTED, text, version.version, rid))
    text = f"Replica {rid} started on {replica.address} (pid {replica.pid}, node {replica.node})."
    _record_event(run, a.RecordEvent(EventType.REPLICA_STARTED, text, version.version, rid))


def _stop_replica(run: Pass, action: a.StopReplica) -> None:
    replica = run.replica(action.replica_id)
    run.routing_changed |= replicas.begin_stop(replica, action.message)
    run.to_terminate.append(replica)


# --- versions ------------------------------------------------------------------------------


def _count_start_failure(run: Pass, action: a.CountStartFailure) -> None:
    replicas.count_start_failure(run.version(action.version))


def _note_replacement(run: Pass, action: a.NoteReplacement) -> None:
    run.replaced[action.version] = action.restarts


def _create_version(run: Pass, action: a.CreateVersion) -> None:
    version = EndpointVersion.objects.create(
        endpoint=run.endpoint,
        version=action.version,
        registry_stage=action.stage,
        registry_aliases=list(action.aliases),
        service_message="Deploying.",
    )
    run.remember_version(version)


def _redeploy_version(run: Pass, action: a.RedeployVersion) -> None:
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


def _set_stage(run: Pass, action: a.SetStage) -> None:
    _save(
        run.version(action.version),
        desired=bool(action.stage or action.aliases),
        registry_stage=action.stage,
        registry_aliases=list(action.aliases),
    )


def _mark_activity(run: Pass, action: a.MarkActivity) -> None:
    with suppress(RedisError):
        load_reports.mark_request(run.version(action.version).pk)


def _retry_version(run: Pass, action: a.RetryVersion) -> None:
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


def _prepare_version(run: Pass, action: a.PrepareVersion) -> None:
    version = run.version(action.version)
    name = run.endpoint.registered_model_name
    text = f"Preparing version {version.version}: downloading the model."
    _record_event(run, a.RecordEvent(EventType.BUILD_STARTED, text, version.version))
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
    _record_event(run, a.RecordEvent(EventType.BUILD_FINISHED, text, version.version))


def _keep_config(run: Pass, action: a.KeepConfig) -> None:
    _save(run.version(action.version), service_config=_config(action.config))


def _start_config_update(run: Pass, action: a.StartConfigUpdate) -> None:
    _save(
        run.version(action.version),
        config_update_state=ServiceState.PENDING,
        config_update_message="Pending",
        target_config=_config(action.config),
    )


def _set_scale_timer(run: Pass, action: a.SetScaleTimer) -> None:
    pk = run.version(action.version).pk
    client = kv.redis_client()
    with suppress(RedisError):
        if action.low_since is None:
            client.delete(kv.low_since_key(pk))
        else:
            client.set(kv.low_since_key(pk), repr(action.low_since), ex=3600)
        if action.clear_wake:
            load_reports.clear_wake(pk)


def _set_replica_target(run: Pass, action: a.SetReplicaTarget) -> None:
    version = run.version(action.version)
    if version.desired_replicas != action.count:
        _save(version, desired_replicas=action.count)
    with suppress(RedisError):
        metrics.record_replicas(version.pk, action.count)


def _mark_ready(run: Pass, action: a.MarkReady) -> None:
    version = run.version(action.version)
    _save(
        version,
        service_state=ServiceState.READY,
        service_message="Ready",
        service_config=_config(action.config),
        ready_at=version.ready_at or timezone.now(),
        start_failures=0,
    )


def _apply_config_update(run: Pass, action: a.ApplyConfigUpdate) -> None:
    _save(
        run.version(action.version),
        service_config=_config(action.config),
        config_update_state=ServiceState.READY,
        config_update_message="Applied",
        start_failures=0,
    )


def _fail_config_update(run: Pass, action: a.FailConfigUpdate) -> None:
    _save(
        run.version(action.version),
        config_update_state=ServiceState.FAILED,
        config_update_message=action.message,
    )


def _reset_start_failures(run: Pass, action: a.ResetStartFailures) -> None:
    _save(run.version(action.version), start_failures=0)


def _fail_version(run: Pass, action: a.FailVersion) -> None:
    fields: dict[str, Any] = {
        "service_state": ServiceState.FAILED,
        "service_message": action.message,
    }
    if action.config is not None:
        fields["target_config"] = _config(action.config)
    _save(run.version(action.version), **fields)


def _retire_version(run: Pass, action: a.RetireVersion) -> None:
    _save(
        run.version(action.version),
        service_state=ServiceState.UNKNOWN,
        service_message="Retired.",
        config_update_state=ServiceState.UNKNOWN,
        config_update_message="",
    )


def _disable_versions(run: Pass, action: a.DisableVersions) -> None:
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


def _move_alias(run: Pass, action: a.MoveAlias) -> None:
    run.endpoint.aliases.update_or_create(
        stage=action.stage, defaults={"version": run.version(action.version)}
    )


def _remove_alias(run: Pass, action: a.RemoveAlias) -> None:
    run.endpoint.aliases.filter(stage=action.stage).delete()


def _remove_aliases(run: Pass, action: a.RemoveAliases) -> None:
    run.endpoint.aliases.all().delete()


def _clear_split(run: Pass, action: a.ClearSplit) -> None:
    run.endpoint.traffic_splits.filter(target=action.target).delete()
    run.routing_changed = True


def _set_endpoint_state(run: Pass, action: a.SetEndpointState) -> None:
    run.endpoint.state = action.state
    run.endpoint.state_message = action.message
    run.endpoint.save(update_fields=["state", "state_message", "updated_at"])


def _set_endpoint_message(run: Pass, action: a.SetEndpointMessage) -> None:
    run.endpoint.state_message = action.message
    run.endpoint.save(update_fields=["state_message", "updated_at"])


HANDLERS: dict[type[Action], Callable[[Pass, Any], None]] = {
    a.FollowUp: _follow_up,
    a.AwaitStarted: _await_started,
    a.PublishRouting: _publish_routing,
    a.RecordEvent: _record_event,
    a.AdoptProcess: _adopt_process,
    a.MarkRunning: _mark_running,
    a.SetProbeFailures: _set_probe_failures,
    a.KillProcess: _kill_process,
    a.MarkError: _mark_error,
    a.MarkStopped: _mark_stopped,
    a.StartReplica: _start_replica,
    a.StopReplica: _stop_replica,
    a.CountStartFailure: _count_start_failure,
    a.NoteReplacement: _note_replacement,
    a.CreateVersion: _create_version,
    a.RedeployVersion: _redeploy_version,
    a.SetStage: _set_stage,
    a.MarkActivity: _mark_activity,
    a.RetryVersion: _retry_version,
    a.PrepareVersion: _prepare_version,
    a.KeepConfig: _keep_config,
    a.StartConfigUpdate: _start_config_update,
    a.SetScaleTimer: _set_scale_timer,
    a.SetReplicaTarget: _set_replica_target,
    a.MarkReady: _mark_ready,
    a.ApplyConfigUpdate: _apply_config_update,
    a.FailConfigUpdate: _fail_config_update,
    a.ResetStartFailures: _reset_start_failures,
    a.FailVersion: _fail_version,
    a.RetireVersion: _retire_version,
    a.DisableVersions: _disable_versions,
    a.MoveAlias: _move_alias,
    a.RemoveAlias: _remove_alias,
    a.RemoveAliases: _remove_aliases,
    a.ClearSplit: _clear_split,
    a.SetEndpointState: _set_endpoint_state,
    a.SetEndpointMessage: _set_endpoint_message,
}
