"""The reconcile plan's last steps, pure like ``plan``: which version each target's URL
answers with (a pointer moves only to a READY version), the traffic splits that ended,
the versions nothing serves any more, the endpoint's state (``plan_serving``); and
taking everything down when serving is disabled (``plan_teardown``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from endpoints.models import EndpointState, EventType, ServiceState, Stage
from endpoints.targets import is_alias

from .actions import (
    Action,
    ClearSplit,
    DisableVersions,
    MoveAlias,
    PublishRouting,
    RecordEvent,
    RemoveAlias,
    RemoveAliases,
    RetireVersion,
    SetEndpointMessage,
    SetEndpointState,
)
from .plan import stop_all
from .snapshot import EndpointView, VersionView

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
