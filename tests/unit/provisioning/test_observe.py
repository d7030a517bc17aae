"""What the reconcile loop reads from the rows: here, whether a replica that crashed while
serving is still owed a replacement, and which restart in a row that is (the plan's restart
backoff waits on it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints.models import ReplicaState
from endpoints.provisioning import observe
from tests.support.rows import add_replica, add_version, iris_with_two_stages

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(owner):
    return add_version(iris_with_two_stages(owner), "1", "Production")


def crashed(version, *, ago: float, served: float, restarts: int = 0):
    stopped = timezone.now() - timedelta(seconds=ago)
    return add_replica(
        version,
        ("127.0.0.1", 20001),
        state=ReplicaState.ERROR,
        created_at=stopped - timedelta(seconds=served + 1),
        started_at=stopped - timedelta(seconds=served),
        stopped_at=stopped,
        restarts=restarts,
    )


def test_a_replica_that_crashed_a_moment_ago_is_owed_its_next_restart(version):
    replica = crashed(version, ago=1, served=30, restarts=2)
    view = observe.version_view(version)
    assert view.replacing == 3
    assert view.crashed_at == pytest.approx(replica.stopped_at.timestamp())


def test_one_that_served_past_the_reset_is_owed_restart_1(version):
    crashed(version, ago=1, served=700, restarts=4)
    assert observe.version_view(version).replacing == 1


def test_one_replaced_already_or_long_ago_is_owed_nothing(version):
    replica = crashed(version, ago=1, served=30)
    add_replica(version, ("127.0.0.1", 20002))  # its replacement, created after the crash
    view = observe.version_view(version)
    assert (view.crashed_at, view.replacing) == (None, 0)
    replica.stopped_at = timezone.now() - timedelta(seconds=700)
    replica.save()
    version.replicas.exclude(pk=replica.pk).delete()
    view = observe.version_view(version)  # e.g. a version woken from zero much later
    assert (view.crashed_at, view.replacing) == (None, 0)


def test_one_that_never_served_is_a_failed_start_not_a_crash(version):
    replica = crashed(version, ago=1, served=30)
    replica.started_at = None
    replica.save()
    view = observe.version_view(version)
    assert (view.crashed_at, view.replacing) == (None, 0)
