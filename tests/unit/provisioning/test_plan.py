"""The reconcile plan decides from plain values: no database, Redis, worker or process.

Each test writes the observed state by hand and reads the actions the plan asks for.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from endpoints.models import EndpointState, EventType, ReplicaState, ServiceState
from endpoints.provisioning.actions import (
    AdoptProcess,
    ApplyConfigUpdate,
    AwaitStarted,
    CountStartFailure,
    CreateVersion,
    DisableVersions,
    FailConfigUpdate,
    FailVersion,
    FollowUp,
    KeepConfig,
    KillProcess,
    MarkActivity,
    MarkError,
    MarkReady,
    MarkRunning,
    MarkStopped,
    MoveAlias,
    NoteReplacement,
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
    SetProbeFailures,
    SetReplicaTarget,
    SetScaleTimer,
    SetStage,
    StartConfigUpdate,
    StartReplica,
    StopReplica,
)
from endpoints.provisioning.health import plan_replica
from endpoints.provisioning.plan import (
    plan_heal,
    plan_registry_unavailable,
    plan_sync,
    plan_version,
)
from endpoints.provisioning.plan_serving import endpoint_state, plan_serving, plan_teardown
from endpoints.provisioning.snapshot import (
    ConfigView,
    EndpointView,
    Health,
    Limits,
    LoadView,
    ReplicaView,
    VersionView,
)
from endpoints.runtime.base import ReplicaLimits
from tests.support.plan import NOW, SMALL, event_types, of, running, serving, starting

LIMITS = Limits()
MEDIUM = ConfigView(pk=2, workload_size="Medium", created_at=NOW - 10_000)
SMALL_TO_ZERO = ConfigView(pk=3, workload_size="Small", scale_to_zero=True, created_at=NOW - 10_000)
READY = ServiceState.READY
PENDING = ServiceState.PENDING
FAILED = ServiceState.FAILED
QUIET = LoadView(last_request_at=NOW - 10_000)


def version_plan(version: VersionView, config: ConfigView = SMALL, load=QUIET, **limits):
    return plan_version(version=version, config=config, load=load, now=NOW, limits=Limits(**limits))


# --- enable: new versions deploy -----------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "created"),
    [
        ({"1": "Production"}, [CreateVersion("1", "Production")]),
        (
            {"1": "Production", "2": "Staging"},
            [CreateVersion("1", "Production"), CreateVersion("2", "Staging")],
        ),
        ({}, []),
    ],
)
def test_enable_creates_a_deploying_version_for_each_staged_version(stages, created):
    planned = plan_sync(stages=stages, versions=[])
    assert of(planned, CreateVersion) == created
    assert event_types(planned) == [EventType.VERSION_DEPLOYING] * len(created)


def test_a_new_version_is_prepared_before_anything_starts():
    planned = version_plan(VersionView("1", stage="Production", prepared=False))
    assert planned == [PrepareVersion("1", SMALL.pk)]


def test_a_prepared_new_version_starts_one_replica_then_waits_for_it():
    planned = version_plan(VersionView("1", stage="Production"))
    assert of(planned, StartReplica) == [StartReplica("1")]
    pending = VersionView("1", stage="Production", replicas=(starting("v1-a"),))
    assert of(version_plan(pending), StartReplica) == []
    assert of(version_plan(pending), MarkReady) == []


@pytest.mark.parametrize(
    ("start_wait", "version", "expected"),
    [
        # Forked from a warm interpreter: the pass that starts replicas waits for them.
        (2.0, VersionView("1", stage="Production"), [StartReplica("1"), AwaitStarted(2.0)]),
        # Launched afresh (seconds to load): follow-up passes probe it instead.
        (0.0, VersionView("1", stage="Production"), [StartReplica("1")]),
        # Nothing started: nothing to wait for.
        (2.0, VersionView("1", stage="Production", replicas=(starting("v1-a"),)), []),
    ],
)
def test_a_pass_waits_for_the_replicas_it_starts_only_when_they_start_fast(
    start_wait, version, expected
):
    planned = version_plan(version, start_wait=start_wait)
    assert of(planned, StartReplica) + of(planned, AwaitStarted) == expected


def test_scaling_up_waits_once_for_all_new_replicas():
    planned = version_plan(serving("1"), config=MEDIUM, start_wait=2.0)
    assert of(planned, StartReplica) == [StartReplica("1")]
    assert of(planned, AwaitStarted) == [AwaitStarted(2.0)]
    assert planned.index(AwaitStarted(2.0)) > planned.index(StartReplica("1"))


@pytest.mark.parametrize(
    ("starting_follow_up", "age", "expected"),
    [(0.5, 1, [FollowUp(0.5)]), (1.0, 1, [FollowUp(1.0)]), (0.5, 119, [FollowUp(0.5)])],
)
def test_a_loading_replica_is_probed_again_sooner_than_other_follow_ups(
    starting_follow_up, age, expected
):
    replica = starting("v1-a", created_at=NOW - age)
    limits = Limits(starting_follow_up=starting_follow_up)
    planned = plan_replica(replica=replica, health=Health(healthy=False), now=NOW, limits=limits)
    assert planned == expected


def test_the_first_running_replica_makes_the_version_ready():
    version = VersionView("1", stage="Production", replicas=(running("v1-a"),))
    planned = version_plan(version)
    assert MarkReady("1", SMALL.pk) in planned
    assert PublishRouting() in planned
    assert EventType.VERSION_READY in event_types(planned)


def test_a_retired_version_entering_a_stage_again_deploys_from_scratch():
    retired = VersionView("1", desired=False, service_state=ServiceState.UNKNOWN)
    planned = plan_sync(stages={"1": "Staging"}, versions=[retired])
    assert planned[0] == RedeployVersion("1", "Staging")


# --- transition ----------------------------------------------------------------------------


def test_a_version_moving_stage_counts_as_activity():
    staging = serving("2", stage="Staging")
    planned = plan_sync(stages={"2": "Production"}, versions=[staging])
    assert planned == [SetStage("2", "Production"), MarkActivity("2")]


def test_a_version_leaving_its_stage_is_no_longer_desired():
    planned = plan_sync(stages={"2": "Production"}, versions=[serving("1"), serving("2")])
    assert planned == [SetStage("1", "")]


def test_transition_keeps_old_version_serving_until_new_is_ready():
    old = serving("1", desired=False, stage="")
    new = VersionView("2", stage="Production", replicas=(starting("v2-a", "2"),))
    planned = plan_serving(
        endpoint=EndpointView(EndpointState.READY),
        versions=[old, new],
        aliases={"Production": "1"},
    )
    assert of(planned, MoveAlias) == []
    assert of(planned, RetireVersion) == []
    assert of(planned, StopReplica) == []


def test_transition_moves_the_alias_once_the_new_version_is_ready_then_retires_the_old():
    old = serving("1", desired=False, stage="")
    new = serving("2")
    planned = plan_serving(
        endpoint=EndpointView(EndpointState.READY, "Ready"),
        versions=[old, new],
        aliases={"Production": "1"},
    )
    assert planned.index(MoveAlias("Production", "2")) < planned.index(RetireVersion("1"))
    assert of(planned, StopReplica) == [
        StopReplica("v1-a", "The version no longer serves a stage or alias.")
    ]
    assert event_types(planned) == [EventType.VERSION_ALIAS_MOVED, EventType.VERSION_RETIRED]


@pytest.mark.parametrize(
    ("states", "alias"),
    [
        ({"1": READY, "2": READY, "10": READY}, "10"),
        ({"1": READY, "2": PENDING}, "1"),
        ({"1": READY, "3": FAILED}, "1"),
        ({"2": PENDING}, None),
    ],
)
def test_a_stage_alias_points_at_the_newest_ready_version_only(states, alias):
    versions = [VersionView(n, stage="Production", service_state=s) for n, s in states.items()]
    planned = plan_serving(
        endpoint=EndpointView(EndpointState.PENDING), versions=versions, aliases={}
    )
    moved = of(planned, MoveAlias)
    assert moved == ([MoveAlias("Production", alias)] if alias else [])


def test_an_old_version_still_answering_its_stage_gets_a_replica_back():
    old = serving("1", desired=False, stage="", replicas=())
    assert plan_heal(version=old) == [StartReplica("1")]
    assert plan_heal(version=serving("1", desired=False, stage="")) == []


# --- failed start --------------------------------------------------------------------------


@pytest.mark.parametrize(("failures", "fails"), [(0, False), (1, False), (2, True), (3, True)])
def test_a_version_fails_once_start_failures_reach_the_limit(failures, fails):
    version = VersionView(
        "1",
        stage="Production",
        start_failures=failures,
        replicas=(starting("v1-b"),),
        last_error="ImportError: no module named nope",
    )
    planned = version_plan(version, start_failures_before_failed=2)
    failed = of(planned, FailVersion)
    assert bool(failed) == fails
    if fails:
        assert "ImportError" in failed[0].message
        assert of(planned, StopReplica) == [StopReplica("v1-b", "The version failed.")]
        assert EventType.VERSION_FAILED in event_types(planned)


def test_a_failed_config_update_keeps_the_ready_version_serving():
    version = serving(
        "1",
        config_update_state=PENDING,
        target_config=MEDIUM,
        start_failures=2,
        last_error="out of memory",
    )
    planned = version_plan(version, config=MEDIUM)
    assert of(planned, FailConfigUpdate) == [
        FailConfigUpdate("1", "Replicas failed to start: out of memory")
    ]
    assert ResetStartFailures("1") in planned
    assert of(planned, FailVersion) == []
    assert of(planned, StopReplica) == []


def test_a_failed_version_stays_stopped_until_its_stage_gets_a_new_config():
    failed = VersionView(
        "1", stage="Production", service_state=FAILED, target_config=SMALL, prepared=True
    )
    assert of(version_plan(failed, config=SMALL), RetryVersion) == []
    newer = ConfigView(pk=9, workload_size="Small")
    retried = version_plan(failed, config=newer)
    assert retried[0] == RetryVersion("1", newer.pk, redeploy=True)
    assert of(retried, StartReplica) == [StartReplica("1")]


def test_a_new_config_for_a_ready_version_starts_a_rollout_and_applies_when_it_runs():
    planned = version_plan(serving("1"), config=MEDIUM)
    assert StartConfigUpdate("1", MEDIUM.pk) in planned
    assert of(planned, StartReplica) == [StartReplica("1")]  # Medium needs 2
    assert of(planned, ApplyConfigUpdate) == []
    both = serving(
        "1",
        running("v1-a"),
        running("v1-b"),
        config_update_state=PENDING,
        target_config=MEDIUM,
    )
    assert ApplyConfigUpdate("1", MEDIUM.pk) in version_plan(both, config=MEDIUM)


def test_a_new_config_with_the_same_spec_rolls_nothing_out():
    same = ConfigView(pk=9, workload_size="Small", created_at=NOW - 10_000)
    planned = version_plan(serving("1"), config=same)
    assert planned[0] == KeepConfig("1", 9)
    assert of(planned, StartConfigUpdate) == []


BATCHED = ConfigView(pk=4, workload_size="Small", created_at=NOW - 1_000, batching=(32, 5))


def test_turning_batching_on_is_a_rollout_not_the_same_spec():
    planned = version_plan(serving("1"), config=BATCHED)
    assert StartConfigUpdate("1", BATCHED.pk) in planned
    assert of(planned, KeepConfig) == []


@pytest.mark.parametrize(
    ("replicas", "starts", "stops", "applied"),
    [
        # Only the old replica: a new one starts beside it, nothing stops yet.
        ((running("v1-old"),), 1, [], False),
        # The new one is still loading: the old one keeps answering.
        ((running("v1-old"), starting("v1-new", created_at=NOW - 10)), 0, [], False),
        # The new one runs: the old one is replaced and the update applied.
        ((running("v1-old"), running("v1-new", created_at=NOW - 10)), 0, ["v1-old"], True),
    ],
)
def test_a_batching_rollout_replaces_old_replicas_only_once_new_ones_run(
    replicas, starts, stops, applied
):
    version = serving(
        "1", *replicas, config_update_state=PENDING, target_config=BATCHED, service_config=SMALL
    )
    planned = version_plan(version, config=BATCHED)
    assert len(of(planned, StartReplica)) == starts
    assert [stop.replica_id for stop in of(planned, StopReplica)] == stops
    assert bool(of(planned, ApplyConfigUpdate)) == applied
    # Replacing is not scaling: no scaling event, the target stays one replica.
    assert not {EventType.SCALED_UP, EventType.SCALED_DOWN} & set(event_types(planned))
    assert of(planned, SetReplicaTarget) == [SetReplicaTarget("1", 1)]


def test_a_rollout_of_how_many_replicas_run_keeps_the_replicas_it_has():
    version = serving("1", running("v1-old"), config_update_state=PENDING, target_config=MEDIUM)
    planned = version_plan(version, config=MEDIUM)
    assert of(planned, StopReplica) == []
    assert of(planned, StartReplica) == [StartReplica("1")]


SMALL_LIMITS = ReplicaLimits(cpus=1, memory_mb=4096, max_processes=256, tmp_mb=1024)
LIMITED = ConfigView(pk=1, created_at=NOW - 10_000, replica_limits=SMALL_LIMITS)
MORE_MEMORY = ConfigView(
    pk=5,
    created_at=NOW - 1_000,
    replica_limits=replace(SMALL_LIMITS, memory_mb=8192),
    summary="Small, 8192 MiB memory",
)


def test_a_rollout_of_new_limits_says_its_replicas_are_replaced():
    planned = version_plan(serving("1", service_config=LIMITED), config=MORE_MEMORY)
    assert StartConfigUpdate("1", MORE_MEMORY.pk) in planned
    (event,) = [e for e in of(planned, RecordEvent) if e.type == EventType.CONFIG_UPDATE_STARTED]
    assert event.message == (
        "Rolling out Small, 8192 MiB memory to version 1. Its replicas are replaced by ones "
        "with the new limits: 1 CPU, 8192 MiB memory, 256 processes, 1024 MiB tmpfs."
    )


@pytest.mark.parametrize(
    ("replicas", "starts", "stops", "applied"),
    [
        ((running("v1-old"),), 1, [], False),
        ((running("v1-old"), starting("v1-new", created_at=NOW - 10)), 0, [], False),
        ((running("v1-old"), running("v1-new", created_at=NOW - 10)), 0, ["v1-old"], True),
    ],
)
def test_a_limits_rollout_replaces_old_replicas_only_once_new_ones_run(
    replicas, starts, stops, applied
):
    version = serving(
        "1",
        *replicas,
        config_update_state=PENDING,
        target_config=MORE_MEMORY,
        service_config=LIMITED,
    )
    planned = version_plan(version, config=MORE_MEMORY)
    assert len(of(planned, StartReplica)) == starts
    assert [stop.replica_id for stop in of(planned, StopReplica)] == stops
    assert bool(of(planned, ApplyConfigUpdate)) == applied


def test_a_gpu_rollout_replaces_replicas_like_new_limits():
    gpu = replace(MORE_MEMORY, replica_limits=replace(SMALL_LIMITS, gpus=1.0))
    version = serving("1", config_update_state=PENDING, target_config=gpu, service_config=LIMITED)
    assert len(of(version_plan(version, config=gpu), StartReplica)) == 1


def test_an_autoscaling_rollout_keeps_replicas_and_applies_at_once():
    tuned = replace(LIMITED, pk=6, target_concurrency=8, scale_down_after=30.0)
    planned = version_plan(serving("1", service_config=LIMITED), config=tuned)
    assert StartConfigUpdate("1", tuned.pk) in planned
    assert of(planned, StartReplica) == []
    assert ApplyConfigUpdate("1", tuned.pk) in planned


def test_a_configs_min_replicas_sizes_the_version():
    two = replace(SMALL, pk=7, min_replicas=2)
    version = serving("1", service_config=two)
    planned = version_plan(version, config=two)
    assert of(planned, StartReplica) == [StartReplica("1")]
    assert of(planned, SetReplicaTarget) == [SetReplicaTarget("1", 2)]


# --- replicas: crash, probes, start timeout, worker restart ------------------------------


def test_a_crashed_serving_replica_is_replaced_with_one_more_restart():
    planned = plan_replica(
        replica=running("v1-a", restarts=1, started_at=NOW - 30),
        health=Health(alive=False),
        now=NOW,
        limits=LIMITS,
    )
    assert NoteReplacement("1", 2) in planned
    assert PublishRouting() in planned
    # Its last output may hold request data: it stays in the logs (CAN_MANAGE), out of
    # the replica's message that CAN_VIEW reads.
    assert MarkError("v1-a", "The model server exited unexpectedly.", False) in planned
    assert of(planned, CountStartFailure) == []
    (event,) = of(planned, RecordEvent)
    assert event.message == (
        "Replica v1-a exited while serving. A replacement starts in 2 s (restart 2 in a row)."
    )
    # The replacement starts once the backoff has passed, without a scaling event.
    replacing = serving("1", replicas=(), replacing=2, crashed_at=NOW - 2.5)
    assert of(version_plan(replacing), StartReplica) == [StartReplica("1", 2)]
    assert event_types(version_plan(replacing)) == []


def test_a_replacement_waits_out_a_backoff_that_doubles_with_each_crash_in_a_row():
    assert [LIMITS.restart_delay(n) for n in (1, 2, 3, 4, 10, 40)] == [1, 2, 4, 8, 300, 300]
    # Crashed a moment ago, third in a row: 4 s to wait, then a pass starts it.
    just_crashed = serving("1", replicas=(), replacing=3, crashed_at=NOW - 1)
    planned = version_plan(just_crashed)
    assert of(planned, StartReplica) == []
    assert of(planned, FollowUp) == [FollowUp(3.0)]
    later = replace(just_crashed, crashed_at=NOW - 4)
    assert of(version_plan(later), StartReplica) == [StartReplica("1", 3)]


def test_a_replica_that_served_past_the_reset_starts_the_count_again():
    limits = Limits(restart_backoff_reset=600)
    assert limits.next_restart(5, served=601) == 1
    assert limits.next_restart(5, served=599) == 6
    planned = plan_replica(
        replica=running("v1-a", restarts=5, started_at=NOW - 601),
        health=Health(alive=False),
        now=NOW,
        limits=limits,
    )
    assert NoteReplacement("1", 1) in planned


@pytest.mark.parametrize(
    "replica", [running("v1-a", restarts=1), starting("v1-a", created_at=NOW - 3)]
)
def test_a_replica_lost_with_its_node_is_replaced_and_the_event_names_the_node(replica):
    planned = plan_replica(
        replica=replica,
        health=Health(alive=False, lost_node="10.0.0.7/5f3a"),
        now=NOW,
        limits=LIMITS,
    )
    assert NoteReplacement("1", replica.restarts + 1) in planned
    assert PublishRouting() in planned
    # A lost node says nothing about the model: never a failed start.
    assert of(planned, CountStartFailure) == []
    (error,) = of(planned, MarkError)
    assert "10.0.0.7/5f3a" in error.message
    (event,) = of(planned, RecordEvent)
    assert event.type == EventType.REPLICA_CRASHED
    assert "lost with node 10.0.0.7/5f3a" in event.message


@pytest.mark.parametrize(
    ("replica", "when"),
    [
        (running("v1-a", restarts=1, started_at=NOW - 30), "while serving."),
        (starting("v1-a", created_at=NOW - 3), "while loading the model."),
    ],
)
def test_a_replica_its_memory_limit_stopped_says_so_and_is_replaced_like_a_crash(replica, when):
    """The runtime read the out-of-memory kill from the replica's group: its row and the
    event say so, and it is replaced (or counts as a failed start) like any crash."""
    reason = "out of memory (limit 4096 MiB)"
    planned = plan_replica(
        replica=replica, health=Health(alive=False, stop_reason=reason), now=NOW, limits=LIMITS
    )
    (error,) = of(planned, MarkError)
    assert error.message == f"The model server was stopped: {reason}, {when}"
    (event,) = of(planned, RecordEvent)
    assert event.type == EventType.REPLICA_OUT_OF_MEMORY
    assert event.message.startswith(f"Replica v1-a was stopped: {reason}, {when}")
    if replica.running:
        assert NoteReplacement("1", 2) in planned
        assert of(planned, CountStartFailure) == []
    else:
        assert of(planned, CountStartFailure) == [CountStartFailure("1")]


def test_a_replica_exiting_while_loading_counts_as_a_failed_start():
    planned = plan_replica(
        replica=starting("v1-a", created_at=NOW - 3),
        health=Health(alive=False),
        now=NOW,
        limits=LIMITS,
    )
    assert CountStartFailure("1") in planned
    assert of(planned, NoteReplacement) == []


@pytest.mark.parametrize(
    ("failures_before", "restarted"),
    [(0, False), (1, False), (2, True)],
)
def test_a_replica_is_restarted_only_after_n_failed_probes_in_a_row(failures_before, restarted):
    replica = running("v1-a", probe_failures=failures_before)
    planned = plan_replica(
        replica=replica,
        health=Health(healthy=False),
        now=NOW,
        limits=Limits(probe_failures_before_restart=3),
    )
    assert (KillProcess("v1-a") in planned) == restarted
    assert (NoteReplacement("1", 1) in planned) == restarted
    if not restarted:
        assert planned == [SetProbeFailures("v1-a", failures_before + 1), FollowUp()]


def test_a_healthy_probe_resets_the_failure_count():
    replica = running("v1-a", probe_failures=2)
    assert plan_replica(replica=replica, health=Health(healthy=True), now=NOW, limits=LIMITS) == [
        SetProbeFailures("v1-a", 0)
    ]
    assert (
        plan_replica(replica=running("v1-a"), health=Health(healthy=True), now=NOW, limits=LIMITS)
        == []
    )


@pytest.mark.parametrize(
    ("age", "outcome"),
    [(5, [FollowUp()]), (119, [FollowUp()]), (121, "killed")],
)
def test_a_replica_that_never_answers_is_killed_after_the_start_timeout(age, outcome):
    replica = starting("v1-a", created_at=NOW - age)
    planned = plan_replica(replica=replica, health=Health(healthy=False), now=NOW, limits=LIMITS)
    if outcome == "killed":
        assert planned[:2] == [KillProcess("v1-a"), CountStartFailure("1")]
    else:
        assert planned == outcome


def test_a_pending_replica_that_answers_becomes_running_and_routable():
    planned = plan_replica(
        replica=starting("v1-a"), health=Health(healthy=True), now=NOW, limits=LIMITS
    )
    assert planned[:2] == [MarkRunning("v1-a"), PublishRouting()]


@pytest.mark.parametrize(
    ("found_pid", "age", "expected"),
    [
        (4242, 100.0, AdoptProcess("v1-a", 4242)),
        (None, 10.0, FollowUp()),
        (None, 31.0, MarkError("v1-a", "The replica process never started.")),
    ],
)
def test_after_a_worker_restart_a_row_without_pid_is_adopted_or_expires(found_pid, age, expected):
    row = starting("v1-a", pid=None, created_at=NOW - age)
    planned = plan_replica(
        replica=row, health=Health(alive=False, found_pid=found_pid), now=NOW, limits=LIMITS
    )
    assert planned[0] == expected


@pytest.mark.parametrize(
    ("alive", "stopping_for", "expected"),
    [
        (True, 5.0, [FollowUp()]),
        (True, 131.0, [KillProcess("v1-a"), MarkStopped("v1-a", "Scaled down.")]),
        (False, 5.0, [MarkStopped("v1-a", "Scaled down.")]),
    ],
)
def test_a_draining_replica_finishes_its_requests_then_is_stopped(alive, stopping_for, expected):
    replica = ReplicaView(
        "v1-a",
        "1",
        state=ReplicaState.TERMINATING,
        stopped_at=NOW - stopping_for,
        message="Scaled down.",
    )
    planned = plan_replica(replica=replica, health=Health(alive=alive), now=NOW, limits=LIMITS)
    assert [x for x in planned if not isinstance(x, RecordEvent)] == expected


# --- scaling -------------------------------------------------------------------------------


def test_load_scales_up_at_once():
    version = serving("1", running("v1-a"), running("v1-b"), service_config=MEDIUM)
    planned = version_plan(
        version, config=MEDIUM, load=LoadView(peak_in_flight=13, last_request_at=NOW)
    )
    assert of(planned, StartReplica) == [StartReplica("1")] * 2
    assert event_types(planned) == [EventType.SCALED_UP]
    assert SetReplicaTarget("1", 4) in planned


@pytest.mark.parametrize(("low_for", "stopped"), [(None, 0), (30.0, 0), (61.0, 1)])
def test_scale_down_waits_for_low_load_then_stops_one_replica(low_for, stopped):
    replicas = tuple(running(f"v1-{i}", created_at=NOW - 5_000 + i) for i in range(4))
    low_since = None if low_for is None else NOW - low_for
    planned = version_plan(
        serving("1", *replicas, service_config=MEDIUM),
        config=MEDIUM,
        load=LoadView(last_request_at=NOW, low_since=low_since),
    )
    stops = of(planned, StopReplica)
    assert len(stops) == stopped
    if stopped:
        assert stops == [StopReplica("v1-3", "Scaled down.")]  # the newest goes first


def test_scale_down_stops_a_replica_that_is_not_ready_before_a_serving_one():
    replicas = (running("v1-a", created_at=NOW - 10), starting("v1-b", created_at=NOW - 20))
    planned = version_plan(serving("1", *replicas), config=SMALL)
    assert of(planned, StopReplica) == [StopReplica("v1-b", "Scaled down.")]


def test_scale_to_zero_after_the_quiet_period_keeps_the_version_ready():
    asleep_soon = serving("1", service_config=SMALL_TO_ZERO)
    planned = version_plan(asleep_soon, config=SMALL_TO_ZERO, scale_to_zero_after=900)
    assert of(planned, StopReplica) == [StopReplica("v1-a", "Scaled down.")]
    assert event_types(planned) == [EventType.SCALED_TO_ZERO]
    assert of(planned, FailVersion) == of(planned, MarkReady) == []
    recent = LoadView(last_request_at=NOW - 100)
    assert of(version_plan(asleep_soon, config=SMALL_TO_ZERO, load=recent), StopReplica) == []


def test_a_waiting_request_wakes_a_version_from_zero():
    asleep = serving("1", replicas=(), service_config=SMALL_TO_ZERO)
    planned = version_plan(asleep, config=SMALL_TO_ZERO, load=LoadView(wake=True))
    assert of(planned, StartReplica) == [StartReplica("1")]
    assert event_types(planned) == [EventType.WOKEN_FROM_ZERO]
    assert of(planned, SetScaleTimer) == [SetScaleTimer("1", None, clear_wake=True)]
    assert of(version_plan(asleep, config=SMALL_TO_ZERO), StartReplica) == []


def test_without_load_figures_a_version_keeps_its_replicas():
    version = serving("1", running("v1-a"), running("v1-b"))
    planned = version_plan(version, config=SMALL, load=None)
    assert of(planned, StopReplica) == of(planned, StartReplica) == []
    assert of(planned, SetReplicaTarget) == []


# --- disable, registry ---------------------------------------------------------------------


def test_disable_removes_aliases_and_stops_every_replica():
    versions = [serving("1"), serving("2", running("v2-a", "2"), running("v2-b", "2"))]
    planned = plan_teardown(
        endpoint=EndpointView(EndpointState.READY, "Ready"),
        versions=versions,
        has_aliases=True,
        replicas_left=True,
    )
    assert planned[:2] == [RemoveAliases(), PublishRouting()]
    assert {s.replica_id for s in of(planned, StopReplica)} == {"v1-a", "v2-a", "v2-b"}
    assert DisableVersions() in planned
    assert of(planned, SetEndpointMessage) == []


def test_disable_reports_disabled_once_nothing_runs():
    planned = plan_teardown(
        endpoint=EndpointView(EndpointState.READY, "Ready"),
        versions=[serving("1", replicas=())],
        has_aliases=False,
        replicas_left=False,
    )
    assert planned == [DisableVersions(), SetEndpointMessage("Serving is disabled.")]


def test_registry_unavailable_keeps_serving_and_only_says_so():
    planned = plan_registry_unavailable(error="connection refused")
    assert planned == [
        SetEndpointMessage("The model registry is unavailable: connection refused"),
        FollowUp(),
    ]


def test_a_model_deleted_from_the_registry_fails_the_endpoint():
    versions = [serving("1", desired=False, stage="")]
    assert plan_sync(stages={}, versions=[serving("1")]) == [SetStage("1", "")]
    planned = plan_serving(
        endpoint=EndpointView(EndpointState.READY, "Ready"),
        versions=versions,
        aliases={"Production": "1"},
        model_exists=False,
    )
    assert RemoveAlias("Production") in planned
    assert (
        SetEndpointState(
            EndpointState.FAILED, "The registered model no longer exists in the model registry."
        )
        in planned
    )
    assert EventType.ENDPOINT_FAILED in event_types(planned)


@pytest.mark.parametrize(
    ("versions", "served", "state"),
    [
        ([], set(), EndpointState.READY),
        (
            [VersionView("1", stage="Production", service_state=READY)],
            {"Production"},
            EndpointState.READY,
        ),
        ([VersionView("1", stage="Production")], set(), EndpointState.PENDING),
        ([VersionView("1", stage="Production", service_state=FAILED)], set(), EndpointState.FAILED),
        (
            [
                VersionView("1", stage="Production", service_state=READY),
                VersionView("2", stage="Production", service_state=FAILED, message="boom"),
            ],
            {"Production"},
            EndpointState.READY,
        ),
    ],
)
def test_the_endpoint_is_ready_when_every_stage_with_versions_is_served(versions, served, state):
    assert endpoint_state(versions, served)[0] == state


def test_a_replicas_last_output_reaches_its_message_only_if_it_never_served():
    """A model's output may hold the requests it served: a replica that crashed while
    serving is marked with its reason only (its output stays in the logs, CAN_MANAGE);
    one that died loading the model, before any request, keeps its last lines (why the
    version failed, for CAN_VIEW readers)."""
    served = plan_replica(
        replica=running("v1-a"), health=Health(alive=False), now=NOW, limits=LIMITS
    )
    loading = plan_replica(
        replica=starting("v1-b"), health=Health(alive=False), now=NOW, limits=LIMITS
    )
    assert [m.with_log_tail for m in served if isinstance(m, MarkError)] == [False]
    assert [m.with_log_tail for m in loading if isinstance(m, MarkError)] == [True]
