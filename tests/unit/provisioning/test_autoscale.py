"""The replica count the autoscaler chooses, and the version a stage alias points at."""

from __future__ import annotations

import pytest

from endpoints.models import EndpointVersion, ServiceState
from endpoints.provisioning.autoscale import Scaling, decide, resolve
from endpoints.provisioning.reconcile import choose_alias
from endpoints.provisioning.sizing import scaling
from endpoints.provisioning.snapshot import ConfigView, Limits

NOW = 1_000_000.0


SCALING_ARGS = {
    "workload_size": "Small",
    "scale_to_zero": False,
    "per_replica": 4,
    "max_replicas": 16,
    "min_wanted": None,
    "max_wanted": None,
    "scale_to_zero_after": 900,
    "scale_down_after": 60,
}


def plan(**overrides):
    """``decide`` with a Small version's defaults, any of them (or of its scaling) changed."""
    scaling_args = {k: overrides.pop(k, v) for k, v in SCALING_ARGS.items()}
    args = {
        "current": 1,
        "peak_in_flight": 0,
        "last_activity": NOW,
        "wake": False,
        "low_since": None,
        "now": NOW,
    }
    args.update(overrides)
    return decide(**args, scaling=resolve(**scaling_args))


@pytest.mark.parametrize(
    ("size", "scale_to_zero", "expected"),
    [
        ("Small", False, (1, 1)),
        ("Medium", False, (2, 4)),
        ("Large", False, (4, 16)),
        ("Small", True, (0, 1)),
        ("Large", True, (0, 16)),
    ],
)
def test_workload_sizes_are_concurrency_ranges_of_four_per_replica(size, scale_to_zero, expected):
    assert resolve(size, scale_to_zero, per_replica=4, max_replicas=16).range == expected


def test_the_max_replicas_bounds_the_largest_size():
    assert resolve("Large", False, per_replica=4, max_replicas=6).range == (4, 6)


def test_load_scales_up_at_once_within_the_range():
    assert plan(workload_size="Medium", current=2, peak_in_flight=13).replicas == 4
    assert plan(workload_size="Medium", current=2, peak_in_flight=100).replicas == 4
    assert plan(workload_size="Large", current=4, peak_in_flight=30).replicas == 8


def test_below_the_minimum_the_minimum_is_restored():
    decision = plan(workload_size="Medium", current=0)
    assert decision.replicas == 2
    assert decision.reason == "the minimum is 2"


def test_scaling_down_waits_for_the_load_to_stay_low_then_goes_one_at_a_time():
    first = plan(workload_size="Large", current=8, peak_in_flight=0)
    assert first.replicas == 8
    assert first.low_since == NOW
    still = plan(workload_size="Large", current=8, low_since=NOW - 30)
    assert still.replicas == 8
    later = plan(workload_size="Large", current=8, low_since=NOW - 61)
    assert later.replicas == 7
    # A burst in between resets the clock.
    burst = plan(workload_size="Large", current=8, peak_in_flight=32, low_since=NOW - 61)
    assert (burst.replicas, burst.low_since) == (8, None)


def test_a_smaller_size_takes_effect_without_waiting():
    assert plan(workload_size="Small", current=4).replicas == 1


def test_scale_to_zero_after_the_quiet_period_only():
    busy = plan(scale_to_zero=True, last_activity=NOW - 100, scale_to_zero_after=120)
    assert busy.replicas == 1
    quiet = plan(scale_to_zero=True, last_activity=NOW - 121, scale_to_zero_after=120)
    assert quiet.replicas == 0
    in_flight = plan(
        scale_to_zero=True, last_activity=NOW - 500, scale_to_zero_after=120, peak_in_flight=1
    )
    assert in_flight.replicas == 1


def test_without_scale_to_zero_a_quiet_version_keeps_its_minimum():
    assert plan(last_activity=NOW - 10_000, scale_to_zero_after=1).replicas == 1


def test_a_waiting_request_wakes_a_version_at_zero_with_one_replica():
    woken = plan(scale_to_zero=True, current=0, wake=True, last_activity=NOW - 10_000)
    assert woken.replicas == 1
    asleep = plan(scale_to_zero=True, current=0, last_activity=NOW - 10_000)
    assert asleep.replicas == 0


# --- a config's own autoscaling ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "settings", "expected"),
    [
        # Bounds of its own replace the size's.
        ("Medium", {"min_wanted": 1, "max_wanted": 6}, (1, 6)),
        # A minimum above the size's maximum raises it; a maximum below its minimum lowers it.
        ("Small", {"min_wanted": 3}, (3, 3)),
        ("Large", {"max_wanted": 2}, (2, 2)),
        # The installation's cap holds whatever the config asks.
        ("Small", {"min_wanted": 40, "max_wanted": 50}, (16, 16)),
        # More requests per replica: fewer replicas for the same concurrency range.
        ("Large", {"per_replica": 8}, (2, 8)),
        ("Medium", {"per_replica": 16}, (1, 1)),
    ],
)
def test_a_configs_bounds_and_concurrency_per_replica_shape_the_range(size, settings, expected):
    args = {"per_replica": 4, "max_replicas": 16, **settings}
    assert resolve(size, False, **args).range == expected


def test_scale_to_zero_keeps_the_configs_minimum_while_awake():
    awake = plan(scale_to_zero=True, min_wanted=2, current=1, last_activity=NOW - 10)
    assert (awake.replicas, awake.reason) == (2, "the minimum is 2")
    quiet = plan(scale_to_zero=True, min_wanted=2, current=2, last_activity=NOW - 1_000)
    assert quiet.replicas == 0


def test_a_configs_delays_replace_the_installations():
    assert plan(workload_size="Large", current=8, low_since=NOW - 20).replicas == 8
    assert (
        plan(workload_size="Large", current=8, low_since=NOW - 20, scale_down_after=15).replicas
        == 7
    )
    quiet = {"scale_to_zero": True, "last_activity": NOW - 100}
    assert plan(**quiet).replicas == 1
    assert plan(**quiet, scale_to_zero_after=60).replicas == 0


def test_sizing_reads_the_configs_settings_over_the_installations():
    config = ConfigView(
        pk=1,
        workload_size="Medium",
        target_concurrency=2,
        max_replicas=5,
        scale_down_after=5.0,
    )
    found = scaling(config, Limits(replica_concurrency=4, scale_to_zero_after=300))
    assert found == Scaling(
        least=4, most=5, per_replica=2, scale_down_after=5.0, scale_to_zero_after=300
    )
    # Nothing set: the size's range and the installation's settings.
    assert scaling(ConfigView(pk=2, workload_size="Medium"), Limits()) == Scaling(
        least=2, most=4, per_replica=4, scale_down_after=60.0, scale_to_zero_after=900.0
    )


def _version(number: str, state: str) -> EndpointVersion:
    return EndpointVersion(version=number, service_state=state)


def test_a_stage_alias_points_at_the_newest_ready_version():
    v1 = _version("1", ServiceState.READY)
    v2 = _version("2", ServiceState.READY)
    v10 = _version("10", ServiceState.READY)
    assert choose_alias([v1, v10, v2]) is v10


def test_a_stage_alias_never_points_at_a_version_that_is_not_ready():
    v1 = _version("1", ServiceState.READY)
    assert choose_alias([v1, _version("2", ServiceState.PENDING)]) is v1
    assert choose_alias([v1, _version("3", ServiceState.FAILED)]) is v1
    assert choose_alias([_version("2", ServiceState.PENDING)]) is None
