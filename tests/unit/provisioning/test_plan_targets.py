"""The reconcile plan for MLflow aliases as serving targets: plain values in, actions out
(no database, Redis, worker or process), in the style of ``test_plan``."""

from __future__ import annotations

import pytest

from endpoints.models import EndpointState, EventType
from endpoints.provisioning.actions import (
    ClearSplit,
    CreateVersion,
    MarkActivity,
    MoveAlias,
    PublishRouting,
    RecordEvent,
    RemoveAlias,
    RetireVersion,
    SetStage,
    StopReplica,
)
from endpoints.provisioning.plan import plan_sync
from endpoints.provisioning.plan_serving import endpoint_state, plan_serving
from endpoints.provisioning.snapshot import EndpointView, VersionView
from endpoints.targets import config_target, served_aliases, valid_target
from tests.support.plan import event_types, of, running, serving, starting

READY_ENDPOINT = EndpointView(EndpointState.READY, "Ready")


def aliased(version: str, *aliases: str, **kwargs) -> VersionView:
    """A READY version served only through ``aliases``."""
    return serving(version, *kwargs.pop("replicas", ()), stage="", aliases=aliases, **kwargs)


# --- registry → versions ---------------------------------------------------------------------


def test_a_version_named_only_by_an_alias_is_deployed_for_it():
    planned = plan_sync(stages={}, aliases={"champion": "3"}, versions=[])
    assert of(planned, CreateVersion) == [CreateVersion("3", "", ("champion",))]
    assert event_types(planned) == [EventType.VERSION_DEPLOYING]
    assert "@champion" in of(planned, RecordEvent)[0].message


def test_a_version_in_a_stage_with_aliases_is_created_once_with_all_of_them():
    planned = plan_sync(
        stages={"1": "Production"}, aliases={"champion": "1", "stable": "1"}, versions=[]
    )
    assert of(planned, CreateVersion) == [CreateVersion("1", "Production", ("champion", "stable"))]


def test_moving_an_alias_makes_the_new_version_desired_and_the_old_one_not():
    planned = plan_sync(stages={}, aliases={"champion": "2"}, versions=[aliased("1", "champion")])
    assert of(planned, CreateVersion) == [CreateVersion("2", "", ("champion",))]
    assert of(planned, SetStage) == [SetStage("1", "")]


def test_gaining_an_alias_counts_as_activity_losing_one_does_not():
    gained = plan_sync(
        stages={"1": "Production"}, aliases={"champion": "1"}, versions=[serving("1")]
    )
    assert gained == [SetStage("1", "Production", ("champion",)), MarkActivity("1")]
    kept = serving("1", aliases=("champion",))
    lost = plan_sync(stages={"1": "Production"}, aliases={}, versions=[kept])
    assert lost == [SetStage("1", "Production", ())]


def test_unchanged_aliases_change_nothing():
    assert (
        plan_sync(stages={}, aliases={"champion": "1"}, versions=[aliased("1", "champion")]) == []
    )


# --- pointers ------------------------------------------------------------------------------


def test_an_alias_pointer_goes_to_its_version_once_ready():
    planned = plan_serving(endpoint=READY_ENDPOINT, versions=[aliased("1", "champion")], aliases={})
    assert of(planned, MoveAlias) == [MoveAlias("@champion", "1")]
    [moved] = of(planned, RecordEvent)
    assert (moved.type, moved.alias) == (EventType.VERSION_ALIAS_MOVED, "champion")


def test_a_moved_alias_keeps_the_old_version_until_the_new_one_is_ready():
    old = serving("1", stage="", desired=False)
    new = VersionView("2", aliases=("champion",), replicas=(starting("v2-a", "2"),))
    planned = plan_serving(endpoint=READY_ENDPOINT, versions=[old, new], aliases={"@champion": "1"})
    assert of(planned, MoveAlias) == []
    assert of(planned, RetireVersion) == []
    assert of(planned, StopReplica) == []


def test_a_moved_alias_switches_once_ready_then_the_old_version_drains():
    old = serving("1", stage="", desired=False)
    new = aliased("2", "champion", replicas=(running("v2-a", "2"),))
    planned = plan_serving(endpoint=READY_ENDPOINT, versions=[old, new], aliases={"@champion": "1"})
    assert planned.index(MoveAlias("@champion", "2")) < planned.index(RetireVersion("1"))
    assert of(planned, StopReplica) == [
        StopReplica("v1-a", "The version no longer serves a stage or alias.")
    ]


def test_an_alias_that_is_no_longer_served_loses_its_url():
    gone = serving("1", stage="Production")
    planned = plan_serving(
        endpoint=READY_ENDPOINT, versions=[gone], aliases={"Production": "1", "@champion": "1"}
    )
    assert of(planned, RemoveAlias) == [RemoveAlias("@champion")]
    assert of(planned, RetireVersion) == []  # still Production's


def test_an_alias_of_a_version_in_a_stage_points_at_it_beside_the_stage():
    both = serving("1", aliases=("champion",))
    planned = plan_serving(endpoint=READY_ENDPOINT, versions=[both], aliases={"Production": "1"})
    assert of(planned, MoveAlias) == [MoveAlias("@champion", "1")]


def test_the_endpoint_waits_for_an_alias_s_first_version():
    waiting = VersionView("1", aliases=("champion",))
    assert endpoint_state([waiting], set())[0] == EndpointState.PENDING
    assert endpoint_state([aliased("1", "champion")], {"@champion"})[0] == EndpointState.READY


# --- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "aliases", "expected"),
    [
        ("Production", ("champion",), "Production"),
        ("", ("zeta", "alpha"), "@alpha"),
        ("", (), ""),
    ],
)
def test_a_version_runs_with_its_stage_s_config_else_its_first_alias_s(stage, aliases, expected):
    assert config_target(stage, aliases) == expected


def test_only_the_aliases_an_endpoint_serves_count():
    registry = {"champion": "1", "challenger": "2", "bad name": "3"}
    assert served_aliases(registry, None) == {"champion": "1", "challenger": "2"}
    assert served_aliases(registry, ["challenger"]) == {"challenger": "2"}
    assert served_aliases(registry, []) == {}


@pytest.mark.parametrize(
    ("target", "valid"),
    [
        ("Production", True),
        ("@champion", True),
        ("@a-b_c9", True),
        ("@", False),
        ("@latest", False),
        ("@v2", False),
        ("@with space", False),
        ("Archived", False),
    ],
)
def test_targets_are_stages_or_valid_aliases(target, valid):
    assert valid_target(target) is valid


# --- traffic splits -------------------------------------------------------------------------


def test_every_version_of_a_split_stays_deployed():
    old = serving("1", stage="", desired=False)
    new = aliased("2", "champion")
    planned = plan_serving(
        endpoint=READY_ENDPOINT,
        versions=[old, new],
        aliases={"@champion": "2"},
        splits={"@champion": {"1": 10, "2": 90}},
    )
    assert of(planned, RetireVersion) == []
    assert of(planned, StopReplica) == []
    assert of(planned, ClearSplit) == []


def test_a_version_with_no_weight_left_is_retired():
    old = serving("1", stage="", desired=False)
    planned = plan_serving(
        endpoint=READY_ENDPOINT,
        versions=[old, aliased("2", "champion"), aliased("3", "other")],
        aliases={"@champion": "2", "@other": "3"},
        splits={"@champion": {"1": 0, "2": 50, "3": 50}},
    )
    assert of(planned, RetireVersion) == [RetireVersion("1")]


def test_a_promotion_ends_its_split_once_the_pointer_names_the_promoted_version():
    promoted = {"@champion": {"2": 100}}
    old = serving("1", stage="", desired=False)
    waiting = plan_serving(
        endpoint=READY_ENDPOINT,
        versions=[old, VersionView("2", aliases=("champion",))],
        aliases={"@champion": "1"},
        splits=promoted,
    )
    assert of(waiting, ClearSplit) == []
    done = plan_serving(
        endpoint=READY_ENDPOINT,
        versions=[old, aliased("2", "champion")],
        aliases={"@champion": "1"},
        splits=promoted,
    )
    assert of(done, MoveAlias) == [MoveAlias("@champion", "2")]
    assert of(done, ClearSplit) == [ClearSplit("@champion")]
    assert EventType.TRAFFIC_SPLIT_CHANGED in event_types(done)
    assert of(done, RetireVersion) == [RetireVersion("1")]


def test_a_split_of_a_target_that_is_no_longer_served_ends():
    planned = plan_serving(
        endpoint=READY_ENDPOINT,
        versions=[serving("1"), serving("2", stage="Staging")],
        aliases={"Production": "1", "Staging": "2"},
        splits={"@gone": {"1": 50, "2": 50}},
    )
    assert of(planned, ClearSplit) == [ClearSplit("@gone")]
    assert PublishRouting() in planned
