"""What a plan asks for: one frozen value per step, executed in order by ``apply``.

Versions are named by their registry version number (unique in an endpoint, and known
before a new version's row exists), replicas by their replica id, configs by primary key.
"""

from __future__ import annotations

from dataclasses import dataclass


class Action:
    """Base class of every planned step."""


# --- the pass as a whole ---------------------------------------------------------------------


@dataclass(frozen=True)
class FollowUp(Action):
    """Something is starting or stopping: run another pass in ``seconds``."""

    seconds: float = 1.0


@dataclass(frozen=True)
class AwaitStarted(Action):
    """The replicas started in this pass come up within moments (forked from a warm
    interpreter): wait up to ``seconds`` for them to answer, then settle them (Running,
    version READY, alias) in the same pass instead of the next one."""

    seconds: float


@dataclass(frozen=True)
class PublishRouting(Action):
    """The routing table changed: bump the generation so gateways rebuild it."""


@dataclass(frozen=True)
class RecordEvent(Action):
    type: str
    message: str
    version: str = ""
    replica_id: str = ""
    # The MLflow alias (without "@") the event is about, if any.
    alias: str = ""


# --- replicas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdoptProcess(Action):
    """A row without a pid gets the process that carries its replica id."""

    replica_id: str
    pid: int


@dataclass(frozen=True)
class MarkRunning(Action):
    replica_id: str


@dataclass(frozen=True)
class SetProbeFailures(Action):
    replica_id: str
    count: int


@dataclass(frozen=True)
class KillProcess(Action):
    replica_id: str


@dataclass(frozen=True)
class MarkError(Action):
    replica_id: str
    message: str
    # Append the model server's last lines of output to the message.
    with_log_tail: bool = False


@dataclass(frozen=True)
class MarkStopped(Action):
    replica_id: str
    message: str


@dataclass(frozen=True)
class StartReplica(Action):
    """Write a Pending row, then start its process."""

    version: str
    # Restarts of the replica this one replaces (0: a new replica).
    restarts: int = 0


@dataclass(frozen=True)
class StopReplica(Action):
    """Take a replica out of routing now; its process gets SIGTERM after the drain."""

    replica_id: str
    message: str


# --- versions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountStartFailure(Action):
    version: str


@dataclass(frozen=True)
class NoteReplacement(Action):
    """A serving replica failed: the version's next replica replaces it."""

    version: str
    restarts: int


@dataclass(frozen=True)
class CreateVersion(Action):
    version: str
    stage: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class RedeployVersion(Action):
    """A version that stopped serving entered a stage or alias again: deploy it afresh."""

    version: str
    stage: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetStage(Action):
    """The registry wants the version served in ``stage`` and under ``aliases`` (neither:
    not served any more)."""

    version: str
    stage: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class MarkActivity(Action):
    """Count as a request for the scale-to-zero quiet period."""

    version: str


@dataclass(frozen=True)
class RetryVersion(Action):
    version: str
    config: int
    # True: a FAILED version deploys again; False: a config update is rolled out again.
    redeploy: bool


@dataclass(frozen=True)
class PrepareVersion(Action):
    """Download the model and choose its Python; on failure the version fails."""

    version: str
    config: int


@dataclass(frozen=True)
class KeepConfig(Action):
    """A new config with the spec the version serves: nothing to roll out."""

    version: str
    config: int


@dataclass(frozen=True)
class StartConfigUpdate(Action):
    version: str
    config: int


@dataclass(frozen=True)
class SetScaleTimer(Action):
    """Store the autoscaler's scale-down timer and consume a wake-up request."""

    version: str
    low_since: float | None
    clear_wake: bool


@dataclass(frozen=True)
class SetReplicaTarget(Action):
    version: str
    count: int


@dataclass(frozen=True)
class MarkReady(Action):
    version: str
    config: int


@dataclass(frozen=True)
class ApplyConfigUpdate(Action):
    version: str
    config: int


@dataclass(frozen=True)
class FailConfigUpdate(Action):
    """A READY version's new config could not start: it keeps serving the old one."""

    version: str
    message: str


@dataclass(frozen=True)
class ResetStartFailures(Action):
    version: str


@dataclass(frozen=True)
class FailVersion(Action):
    version: str
    message: str
    # The config it failed with (it is retried once its stage gets another one).
    config: int | None = None


@dataclass(frozen=True)
class RetireVersion(Action):
    version: str


@dataclass(frozen=True)
class DisableVersions(Action):
    """Serving was disabled: every version forgets its state."""


# --- aliases and the endpoint ------------------------------------------------------------


@dataclass(frozen=True)
class MoveAlias(Action):
    """Point a target's URL (a stage, or an alias as ``@<alias>``) at a version."""

    stage: str
    version: str


@dataclass(frozen=True)
class RemoveAlias(Action):
    stage: str


@dataclass(frozen=True)
class RemoveAliases(Action):
    pass


@dataclass(frozen=True)
class ClearSplit(Action):
    """A target's traffic split is over (promoted, or the target is no longer served)."""

    target: str


@dataclass(frozen=True)
class SetEndpointState(Action):
    state: str
    message: str


@dataclass(frozen=True)
class SetEndpointMessage(Action):
    message: str
