"""The reconcile plan for versions: desired and observed state in, a list of actions out.
Pure: no database, Redis, runtime or clock (``now`` is passed in). ``converge`` calls
``plan_sync`` (the registry's versions), ``plan_version`` for each desired version and
``plan_heal``, then ``plan_serving``'s steps; docs/provisioning.md ("One pass") is the
policy they implement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from endpoints.models import EventType, ServiceState
from endpoints.targets import version_targets

from . import sizing
from .actions import (
    Action,
    ApplyConfigUpdate,
    CreateVersion,
    FailConfigUpdate,
    FailVersion,
    FollowUp,
    KeepConfig,
    MarkActivity,
    MarkReady,
    PrepareVersion,
    PublishRouting,
    RecordEvent,
    RedeployVersion,
    ResetStartFailures,
    RetryVersion,
    SetEndpointMessage,
    SetStage,
    StartConfigUpdate,
    StartReplica,
    StopReplica,
)
from .limits import describe_limits
from .snapshot import ConfigView, Limits, LoadView, ReplicaView, VersionView

# --- registry → versions ---------------------------------------------------------------


def plan_registry_unavailable(*, error: str) -> list[Action]:
    """Keep serving what runs; try again soon."""
    return [SetEndpointMessage(f"The model registry is unavailable: {error}"), FollowUp()]


def plan_sync(
    *,
    stages: Mapping[str, str],
    versions: Sequence[VersionView],
    aliases: Mapping[str, str] | None = None,
) -> list[Action]:
    """``stages`` is {version: stage} of the registry's Staging/Production versions,
    ``aliases`` {alias: version} of the registry's aliases the endpoint serves. A version
    is desired while it has a stage or a served alias."""
    by_version: dict[str, list[str]] = {}
    for alias, number in (aliases or {}).items():
        by_version.setdefault(number, []).append(alias)
    wanted = {n: (stages.get(n, ""), tuple(sorted(by_version.get(n, ())))) for n in stages}
    wanted |= {n: ("", tuple(sorted(names))) for n, names in by_version.items() if n not in stages}
    existing = {v.version: v for v in versions}
    actions: list[Action] = []
    for number, (stage, version_aliases) in wanted.items():
        version = existing.get(number)
        served = ", ".join(version_targets(stage, version_aliases))
        deploying = RecordEvent(
            EventType.VERSION_DEPLOYING,
            f"Version {number} is being deployed for {served}.",
            version=number,
        )
        if version is None:
            actions += [CreateVersion(number, stage, version_aliases), deploying]
        elif version.service_state == ServiceState.UNKNOWN:
            actions += [RedeployVersion(number, stage, version_aliases), deploying]
        elif not version.desired or version.stage != stage or version.aliases != version_aliases:
            actions.append(SetStage(number, stage, version_aliases))
            # Entering a target counts as activity: a version idle in Staging is not scaled
            # to zero the moment it takes over a scale-to-zero Production.
            entered = set(version_targets(stage, version_aliases)) - set(version.targets)
            if not version.desired or entered:
                actions.append(MarkActivity(number))
    actions += [SetStage(v.version, "") for v in versions if v.version not in wanted and v.desired]
    return actions


# --- one desired version ---------------------------------------------------------------


def plan_version(
    *,
    version: VersionView,
    config: ConfigView,
    load: LoadView | None,
    now: float,
    limits: Limits,
) -> list[Action]:
    """``config`` is the newest config of the version's stage; ``load`` is None when Redis
    could not be read (the version then keeps its replicas)."""
    actions: list[Action] = []
    if version.config_update_state == ServiceState.RETRY_REQUESTED:
        actions += _retry(version, config)
        version = _retried(version, config)
    if version.service_state == ServiceState.FAILED:
        if version.target_config is not None and version.target_config.pk == config.pk:
            return actions + stop_all(version, "The version failed.")
        actions += _retry(version, config)  # a new compute config: try again with it
        version = _retried(version, config)
    if not version.prepared:
        return [*actions, PrepareVersion(version.version, config.pk)]
    steps, version = _begin_config_update(version, config)
    actions += steps
    if version.config_update_state == ServiceState.FAILED and version.service_config:
        config = version.service_config  # keep what serves until the update is retried
    stale = sizing.stale(version)
    # While replicas are replaced, the old ones are the version's size: the new ones
    # beside them are not a scale-up, nor is stopping the old ones a scale-down.
    sized_as = replace(version, replicas=tuple(stale)) if stale else version
    count, sized = sizing.size(sized_as, config, load, now, limits)
    actions += sized
    if version.start_failures >= limits.start_failures_before_failed:
        return actions + _start_failed(version, config)
    if stale:
        return actions + _replace(version, config, count, stale, limits, now)
    stops = sizing.scale_down(version, count)
    actions += sizing.scale_up(version, count, limits, now) + stops
    stopped = {a.replica_id for a in stops}
    running = sum(1 for r in version.replicas if r.running and r.replica_id not in stopped)
    return actions + _settle(version, config, count, running)


def _replace(
    version: VersionView,
    config: ConfigView,
    count: int,
    stale: list[ReplicaView],
    limits: Limits,
    now: float,
) -> list[Action]:
    """Start replicas with the new config beside the old ones; stop the old ones only once
    enough new ones run, so the version keeps answering throughout."""
    fresh = replace(version, replicas=tuple(r for r in version.replicas if r not in stale))
    actions = sizing.scale_up(fresh, count, limits, now)
    running = sum(1 for r in fresh.replicas if r.running)
    if running < count:
        return actions
    reason = "Replaced by a replica with the new compute config."
    return [
        *actions,
        *(StopReplica(r.replica_id, reason) for r in stale),
        *_settle(fresh, config, count, running),
    ]


def _retry(version: VersionView, config: ConfigView) -> list[Action]:
    return [
        RetryVersion(
            version.version, config.pk, redeploy=version.service_state == ServiceState.FAILED
        ),
        RecordEvent(
            EventType.VERSION_DEPLOYING,
            f"Retrying version {version.version}.",
            version=version.version,
        ),
    ]


def _retried(version: VersionView, config: ConfigView) -> VersionView:
    if version.service_state == ServiceState.FAILED:
        changes = {
            "service_state": ServiceState.PENDING,
            "config_update_state": ServiceState.UNKNOWN,
        }
    else:
        changes = {"config_update_state": ServiceState.PENDING}
    return replace(version, start_failures=0, target_config=config, **changes)


def _begin_config_update(
    version: VersionView, config: ConfigView
) -> tuple[list[Action], VersionView]:
    """A READY version whose stage got a new compute config starts rolling it out."""
    if not version.ready:
        return [], version
    known = {c.pk for c in (version.service_config, version.target_config) if c is not None}
    if config.pk in known:
        return [], version
    if config.same_spec(version.service_config):
        return [KeepConfig(version.version, config.pk)], replace(version, service_config=config)
    text = f"Rolling out {config.described} to version {version.version}."
    serving = version.service_config
    if serving is not None and config.replica_limits != serving.replica_limits:
        text += (
            " Its replicas are replaced by ones with the new limits: "
            f"{describe_limits(config.replica_limits)}."
        )
    event = RecordEvent(EventType.CONFIG_UPDATE_STARTED, text, version=version.version)
    updated = replace(version, config_update_state=ServiceState.PENDING, target_config=config)
    return [StartConfigUpdate(version.version, config.pk), event], updated


def _start_failed(version: VersionView, config: ConfigView) -> list[Action]:
    """Replicas of this version failed to start too often."""
    reason = version.last_error or "The model server did not start."
    if not version.ready:
        return fail_version(version, f"The model could not be loaded. {reason}", config=config.pk)
    actions: list[Action] = []
    if version.config_update_state != ServiceState.FAILED:
        actions += [
            FailConfigUpdate(version.version, f"Replicas failed to start: {reason}"),
            RecordEvent(
                EventType.CONFIG_UPDATE_FAILED,
                f"The compute config update of version {version.version} failed.",
                version=version.version,
            ),
        ]
    return [*actions, ResetStartFailures(version.version)]


def fail_version(
    version: VersionView, message: str, *, config: int | None = None, build: bool = False
) -> list[Action]:
    """The version is FAILED and its replicas stop (``build``: preparing it failed)."""
    actions: list[Action] = [
        FailVersion(version.version, message[:4000], config),
        *stop_all(version, "The version failed."),
    ]
    if build:
        actions.append(
            RecordEvent(
                EventType.BUILD_FAILED,
                f"Preparing version {version.version} failed.",
                version=version.version,
            )
        )
    failed = f"Version {version.version} failed: {message[:500]}"
    return [*actions, RecordEvent(EventType.VERSION_FAILED, failed, version=version.version)]


def stop_all(version: VersionView, message: str) -> list[Action]:
    return [StopReplica(r.replica_id, message) for r in version.replicas]


def _settle(version: VersionView, config: ConfigView, count: int, running: int) -> list[Action]:
    """Mark a version READY, or a config update applied, once its replicas run."""
    if version.service_state == ServiceState.PENDING and running >= 1:
        return [
            MarkReady(version.version, config.pk),
            PublishRouting(),
            RecordEvent(
                EventType.VERSION_READY,
                f"Version {version.version} is ready.",
                version=version.version,
            ),
        ]
    if version.config_update_state == ServiceState.PENDING and running >= count:
        applied = version.target_config or config
        return [
            ApplyConfigUpdate(version.version, applied.pk),
            PublishRouting(),
            RecordEvent(
                EventType.CONFIG_UPDATE_APPLIED,
                f"Version {version.version} now runs with {applied.described}.",
                version=version.version,
            ),
        ]
    return []


def plan_heal(*, version: VersionView) -> list[Action]:
    """A version that left its stage but still answers it keeps at least one replica."""
    if not version.replicas and version.prepared:
        return [StartReplica(version.version, version.replacing)]
    return []
