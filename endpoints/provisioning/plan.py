"""The reconcile plan: desired and observed state in, a list of actions out. Pure: no
database, Redis, runtime or clock (``now`` is passed in).

Policy, step by step (each step is one function; ``converge`` calls them in this order):
- ``plan_sync``: a version newly in Staging/Production is created (PENDING, event
  VERSION_DEPLOYING); a retired one that comes back deploys from scratch; one that left
  its stage is marked not desired but keeps serving while its stage still points at it.
  The registry being unavailable changes nothing but the endpoint's message.
- ``plan_version`` for each desired version: a requested retry or a new config for a
  FAILED version tries again; an unprepared version is prepared first; a new config for a
  READY version starts a rollout; ``autoscale.decide`` sizes it (at least one replica
  before it is READY); ``start_failures_before_failed`` failed starts make it FAILED, or
  fail only the config update of a READY version, which keeps serving; otherwise replicas
  are started or stopped (not-ready ones first, then the newest) to reach the count, and
  the first Running replica makes the version READY. With ``limits.start_wait`` (replicas
  forked from a warm interpreter) the pass waits that long for the replicas it started, so
  they become Running and the version READY in the same pass.
- ``plan_heal``: a version that left its stage but still answers it keeps one replica.
- ``plan_serving``: each stage's alias points at the newest READY desired version of the
  stage, so it moves only once the new version is READY; a version neither desired nor an
  alias target is retired (its replicas leave routing and drain); then the endpoint state.
- ``plan_teardown``: serving disabled removes aliases and stops every replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from endpoints.models import EndpointState, EventType, ServiceState, Stage
from endpoints.targets import is_alias, version_targets

from . import sizing
from .actions import (
    Action,
    ApplyConfigUpdate,
    ClearSplit,
    CreateVersion,
    DisableVersions,
    FailConfigUpdate,
    FailVersion,
    FollowUp,
    KeepConfig,
    MarkActivity,
    MarkReady,
    MoveAlias,
    PrepareVersion,
    PublishRouting,
    RecordEvent,
    RedeployVersion,
    RemoveAlias,
    RemoveAliases,
    ResetStartFailures,
    RetireVersion,
    RetryVersion,
    SetEndpointMessage,
    SetEndpointState,
    SetStage,
    StartConfigUpdate,
    StartReplica,
    StopReplica,
)
from .snapshot import ConfigView, EndpointView, Limits, LoadView, ReplicaView, VersionView

DISABLED_MESSAGE = "Serving is disabled."
MODEL_DELETED_MESSAGE = "The registered model no longer exists in the model registry."


class Candidate(Protocol):
    service_state: str

    @property
    def version_number(self) -> int: ...


C = TypeVar("C", bound=Candidate)


def choose_alias(candidates: Iterable[C]) -> C | None:
    """The version a stage URL should answer with: the newest READY one of the stage."""
    ready = [v for v in candidates if v.service_state == ServiceState.READY]
    return max(ready, key=lambda v: v.version_number, default=None)


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
        return actions + _replace(version, config, count, stale, limits)
    stops = sizing.scale_down(version, count)
    actions += sizing.scale_up(version, count, limits) + stops
    stopped = {a.replica_id for a in stops}
    running = sum(1 for r in version.replicas if r.running and r.replica_id not in stopped)
    return actions + _settle(version, config, count, running)


def _replace(
    version: VersionView,
    config: ConfigView,
    count: int,
    stale: list[ReplicaView],
    limits: Limits,
) -> list[Action]:
    """Start replicas with the new config beside the old ones; stop the old ones only once
    enough new ones run, so the version keeps answering throughout."""
    fresh = replace(version, replicas=tuple(r for r in version.replicas if r not in stale))
    actions = sizing.scale_up(fresh, count, limits)
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
    event = RecordEvent(
        EventType.CONFIG_UPDATE_STARTED,
        f"Rolling out {config.workload_size}"
        f"{' with scale to zero' if config.scale_to_zero else ''} "
        f"to version {version.version}.",
        version=version.version,
    )
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
        zero = " and scale to zero" if applied.scale_to_zero else ""
        return [
            ApplyConfigUpdate(version.version, applied.pk),
            PublishRouting(),
            RecordEvent(
                EventType.CONFIG_UPDATE_APPLIED,
                f"Version {version.version} now runs with {applied.workload_size}{zero}.",
                version=version.version,
            ),
        ]
    return []


def plan_heal(*, version: VersionView) -> list[Action]:
    """A version that left its stage but still answers it keeps at least one replica."""
    if not version.replicas and version.prepared:
        return [StartReplica(version.version, version.replacing)]
    return []


# --- aliases, retiring, endpoint state --------------------------------------------------


def plan_serving(
    *,
    endpoint: EndpointView,
    versions: Sequence[VersionView],
    aliases: Mapping[str, str],
    model_exists: bool = True,
    splits: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Action]:
    """Move pointers, end finished splits, retire what nothing serves, then say how the
    endpoint is.

    ``aliases`` is {target: version} as stored before this step, ``splits`` {target:
    {version: weight}} of the traffic splits."""
    actions = _plan_aliases(versions, aliases)
    after = dict(aliases)
    for action in actions:
        if isinstance(action, MoveAlias):
            after[action.stage] = action.version
        elif isinstance(action, RemoveAlias):
            del after[action.stage]
    ended, kept = _plan_splits(splits or {}, after)
    actions += ended
    actions += _plan_retire(versions, set(after.values()) | kept)
    if model_exists:
        new_state, message = endpoint_state(versions, set(after))
    else:
        new_state, message = EndpointState.FAILED, MODEL_DELETED_MESSAGE
    return actions + _set_endpoint_state(endpoint, new_state, message)


def _plan_aliases(versions: Sequence[VersionView], aliases: Mapping[str, str]) -> list[Action]:
    """Each target's pointer goes to the newest READY desired version of that target: for
    a stage, the newest of its versions; for an alias, the one version it names."""
    targets = [*Stage.values]
    targets += sorted({t for v in versions if v.desired for t in v.targets} - set(targets))
    targets += sorted(t for t in aliases if t not in targets)
    actions: list[Action] = []
    for target in targets:
        in_target = [v for v in versions if v.desired and target in v.targets]
        best = choose_alias(in_target)
        current = aliases.get(target)
        alias = _alias_of(target)
        if best is not None and current != best.version:
            was = f" (was version {current})" if current else ""
            actions += [
                MoveAlias(target, best.version),
                PublishRouting(),
                RecordEvent(
                    EventType.VERSION_ALIAS_MOVED,
                    f"{target} now serves version {best.version}{was}.",
                    version=best.version,
                    alias=alias,
                ),
            ]
        elif best is None and not in_target and current is not None:
            actions += [RemoveAlias(target), PublishRouting()]
    return actions


def _plan_splits(
    splits: Mapping[str, Mapping[str, int]], pointers: Mapping[str, str]
) -> tuple[list[Action], set[str]]:
    """End the splits whose target lost its pointer or whose whole weight is on the
    version the pointer now names (a promotion is complete); every version of the others
    stays deployed. Returns (actions, the versions kept for splits)."""
    actions: list[Action] = []
    kept: set[str] = set()
    for target, weights in sorted(splits.items()):
        live = {version for version, weight in weights.items() if weight > 0}
        pointer = pointers.get(target)
        if pointer is None:
            reason = f"The traffic split of {target} ended: {target} is no longer served."
        elif live == {pointer}:
            reason = f"{target} now serves version {pointer} alone: the promotion is complete."
        else:
            kept |= live
            continue
        actions += [
            ClearSplit(target),
            PublishRouting(),
            RecordEvent(EventType.TRAFFIC_SPLIT_CHANGED, reason, alias=_alias_of(target)),
        ]
    return actions, kept


def _alias_of(target: str) -> str:
    return target[1:] if is_alias(target) else ""


def _plan_retire(versions: Sequence[VersionView], targets: set[str]) -> list[Action]:
    """Drain and stop versions the registry no longer wants served that no pointer
    targets."""
    actions: list[Action] = []
    for version in versions:
        if version.desired or version.service_state == ServiceState.UNKNOWN:
            continue
        if version.version in targets:
            continue
        actions += [
            *stop_all(version, "The version no longer serves a stage or alias."),
            RetireVersion(version.version),
            PublishRouting(),
            RecordEvent(
                EventType.VERSION_RETIRED,
                f"Version {version.version} no longer serves a stage or alias: drained and "
                "stopped.",
                version=version.version,
            ),
        ]
    return actions


def endpoint_state(versions: Sequence[VersionView], served_stages: set[str]) -> tuple[str, str]:
    """READY when every target (stage or alias) with desired versions is served, PENDING
    while one waits for its first version, FAILED when a target's only versions failed."""
    desired = [v for v in versions if v.desired]
    if not desired:
        return (
            EndpointState.READY,
            "No version of this model is in Staging or Production or has a served alias: "
            "nothing to serve.",
        )
    pending = [v for v in desired if v.service_state == ServiceState.PENDING]
    failed = [v for v in desired if v.service_state == ServiceState.FAILED]
    unserved = {t for v in desired for t in v.targets} - served_stages
    notes = []
    if pending:
        notes.append(f"deploying version {', '.join(v.version for v in pending)}")
    if failed:
        notes.append("; ".join(f"version {v.version} failed: {v.message}" for v in failed))
    if not unserved:
        return EndpointState.READY, "Ready" + (f" ({'; '.join(notes)})" if notes else "")
    if any(set(v.targets) & unserved for v in pending):
        return EndpointState.PENDING, "Pending: " + "; ".join(notes)
    return EndpointState.FAILED, "; ".join(notes) or "No version could serve."


def _set_endpoint_state(endpoint: EndpointView, new_state: str, message: str) -> list[Action]:
    message = message[:4000]
    if endpoint.state == new_state and endpoint.message == message:
        return []
    actions: list[Action] = [SetEndpointState(new_state, message)]
    if endpoint.state != new_state and new_state == EndpointState.READY:
        actions.append(RecordEvent(EventType.ENDPOINT_READY, "Serving is ready."))
    elif endpoint.state != new_state and new_state == EndpointState.FAILED:
        actions.append(RecordEvent(EventType.ENDPOINT_FAILED, f"Serving failed: {message[:500]}"))
    return actions


# --- disable --------------------------------------------------------------------------


def plan_teardown(
    *,
    endpoint: EndpointView,
    versions: Sequence[VersionView],
    has_aliases: bool,
    replicas_left: bool,
) -> list[Action]:
    """Serving disabled: requests get 404 at once, every replica stops gracefully.

    ``replicas_left``: some replica is not stopped yet (live or still terminating)."""
    actions: list[Action] = [RemoveAliases(), PublishRouting()] if has_aliases else []
    for version in versions:
        actions += stop_all(version, "Serving was disabled.")
    actions.append(DisableVersions())
    if not replicas_left and endpoint.message != DISABLED_MESSAGE:
        actions.append(SetEndpointMessage(DISABLED_MESSAGE))
    return actions
