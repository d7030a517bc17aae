"""Provisioning on the real stack: Redis, a Celery worker with beat, the web server, and real
model server processes started by the reconcile loop.

Small models made here (a constant answer per version, a model that cannot load) keep each
test to one or two replicas; the demo ``iris-classifier`` shows the real thing.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections import Counter

import psutil
import pytest
import requests
from django.conf import settings

from endpoints import services
from endpoints.models import (
    EndpointState,
    EndpointVersion,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    StageAlias,
)
from endpoints.provisioning import environments
from endpoints.runtime import get_runtime
from tests.support.load import Load
from tests.support.models import constant_model, register, unloadable_model
from tests.support.serving import (
    READY_TIMEOUT,
    alias,
    endpoint_of,
    events,
    running,
    score,
    wait_ready,
    wait_until_stopped,
)
from tests.support.stack import wait_for


@pytest.fixture
def new_name() -> str:
    return f"prov-{uuid.uuid4().hex[:8]}"


# --- helpers --------------------------------------------------------------------------------


def our_processes() -> dict[str, int]:
    return get_runtime().discover(within=str(environments.data_dir()))


# --- tests ----------------------------------------------------------------------------------


def test_enabling_reaches_ready_every_version_answers_and_disabling_stops_every_process(
    stack: str, owner
) -> None:
    services.endpoint_enable(name="iris-classifier", user=owner)
    endpoint = wait_ready("iris-classifier")
    assert {alias("iris-classifier", "Staging"), alias("iris-classifier", "Production")} == {
        "2",
        "1",
    }
    runtime = get_runtime()
    replicas = running("iris-classifier")
    assert sorted(r.version.version for r in replicas) == ["1", "2"]
    for replica in replicas:
        assert runtime.probe(replica.host, replica.port)
        assert runtime.is_alive(replica.pid, replica.replica_id)
    if settings.SERVING["REPLICA_START"] == "zygote":
        # Forked from the zygote of the product's environment, not launched afresh.
        zygotes = runtime.discover_zygotes(str(environments.zygote_dir())).values()
        assert {psutil.Process(r.pid).ppid() for r in replicas} <= set(zygotes)
    versions = EndpointVersion.objects.filter(endpoint=endpoint)
    assert {v.service_state for v in versions} == {ServiceState.READY}
    assert all(v.service_config_id for v in versions)
    assert events("iris-classifier", EventType.VERSION_READY)
    assert events("iris-classifier", EventType.BUILD_FINISHED)

    services.endpoint_disable(name="iris-classifier", user=owner)
    wait_until_stopped(version__endpoint=endpoint)
    for replica in replicas:
        assert not runtime.is_alive(replica.pid, replica.replica_id)
    assert not {r.replica_id for r in replicas} & set(our_processes())
    assert not StageAlias.objects.filter(endpoint=endpoint).exists()


def test_a_new_version_takes_the_stage_under_load_without_a_failed_request(
    stack: str, owner, make_token, new_name: str
) -> None:
    register(new_name, constant_model("v1"), "Staging")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    token = make_token(owner)
    with Load(stack, token, new_name, "Staging") as load:
        wait_for(lambda: len(load.answers) >= 20, timeout=30, what="requests to v1")
        v2 = register(new_name, constant_model("v2"))
        services.model_version_transition(
            name=new_name,
            version=v2,
            stage="Staging",
            archive_existing_versions=True,
            user=owner,
        )
        wait_for(lambda: alias(new_name, "Staging") == v2, timeout=READY_TIMEOUT, what="alias")
        load.wait_for_only("v2", "answers from v2")
    statuses = Counter(status for status, _ in load.answers)
    assert statuses == {200: len(load.answers)}, statuses
    assert {value for _, value in load.answers} == {"v1", "v2"}
    # The alias moved only once v2 was READY; v1 was then drained and stopped.
    ready = events(new_name, EventType.VERSION_READY)
    moved = events(new_name, EventType.VERSION_ALIAS_MOVED)
    v2_ready = next(e for e in ready if e.endpoint_version_name == v2)
    v2_alias = next(e for e in moved if e.endpoint_version_name == v2)
    assert (v2_ready.timestamp, v2_ready.pk) < (v2_alias.timestamp, v2_alias.pk)
    wait_for(lambda: not running(new_name, "1"), timeout=60, what="v1 to stop")
    assert events(new_name, EventType.VERSION_RETIRED)


def test_a_version_that_cannot_load_fails_and_the_stage_keeps_serving_the_old_one(
    stack: str, owner, make_token, new_name: str
) -> None:
    register(new_name, constant_model("good"), "Staging")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    broken = register(new_name, unloadable_model())
    services.model_version_transition(
        name=new_name, version=broken, stage="Staging", archive_existing_versions=True, user=owner
    )

    def failed():
        version = EndpointVersion.objects.filter(
            endpoint__registered_model_name=new_name, version=broken
        ).first()
        return version if version and version.service_state == ServiceState.FAILED else None

    version = wait_for(failed, timeout=READY_TIMEOUT, what="the broken version to fail")
    assert "refuses to load" in version.service_message
    assert alias(new_name, "Staging") == "1"
    response = score(stack, make_token(owner), new_name, "Staging")
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": ["good"]}
    assert not running(new_name, broken)
    assert any(e.endpoint_version_name == broken for e in events(new_name, "VERSION_FAILED"))
    endpoint = endpoint_of(new_name)
    assert endpoint.state == EndpointState.READY
    assert f"version {broken} failed" in endpoint.state_message


def test_a_killed_replica_is_replaced_without_any_call(
    stack: str, owner, make_token, new_name: str
) -> None:
    register(new_name, constant_model("alive"), "Production")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    [victim] = running(new_name)
    os.kill(victim.pid, signal.SIGKILL)

    def replaced():
        fresh = running(new_name)
        return fresh if fresh and fresh[0].replica_id != victim.replica_id else None

    [fresh] = wait_for(replaced, timeout=READY_TIMEOUT, what="a replacement replica")
    assert fresh.restarts == 1
    victim.refresh_from_db()
    assert victim.state == ReplicaState.ERROR
    assert events(new_name, EventType.REPLICA_CRASHED)
    assert events(new_name, EventType.REPLICA_RESTARTED)
    response = score(stack, make_token(owner), new_name, "Production")
    assert response.json() == {"predictions": ["alive"]}
    # A crash in a row: the replacement waits out a doubled backoff (2 s), and says so.
    victim = fresh
    os.kill(victim.pid, signal.SIGKILL)
    [fresh] = wait_for(replaced, timeout=READY_TIMEOUT, what="a second replacement replica")
    assert fresh.restarts == 2
    victim.refresh_from_db()
    assert (fresh.created_at - victim.stopped_at).total_seconds() >= 2
    crashes = [e.message for e in events(new_name, EventType.REPLICA_CRASHED)]
    assert any("A replacement starts in 2 s (restart 2 in a row)." in m for m in crashes)


def test_a_worker_killed_mid_provisioning_converges_to_exactly_the_desired_replicas(
    stack: str, owner, new_name: str, restartable_worker
) -> None:
    register(new_name, constant_model("a"), "Staging")
    register(new_name, constant_model("b"), "Production")
    services.endpoint_enable(name=new_name, user=owner)
    # Kill the worker as soon as it has written a replica row: mid-provisioning.
    wait_for(
        lambda: Replica.objects.filter(version__endpoint__registered_model_name=new_name).exists(),
        timeout=60,
        what="the first replica row",
        interval=0.05,
    )
    restartable_worker()
    wait_ready(new_name)
    # Converged: one live replica per version, and one process per live replica.
    wait_for(
        lambda: (
            not Replica.objects.filter(
                version__endpoint__registered_model_name=new_name,
                state__in=[ReplicaState.PENDING, ReplicaState.TERMINATING],
            ).exists()
        ),
        timeout=60,
        what="no replica starting or stopping",
    )
    live = running(new_name)
    assert sorted(r.version.version for r in live) == ["1", "2"]
    ours = set(
        Replica.objects.filter(version__endpoint__registered_model_name=new_name).values_list(
            "replica_id", flat=True
        )
    )
    wait_for(
        lambda: set(our_processes()) & ours == {r.replica_id for r in live},
        timeout=30,
        what="exactly one process per live replica",
    )


def test_scale_to_zero_stops_the_last_replica_and_a_request_wakes_exactly_one(
    stack: str, owner, make_token, new_name: str
) -> None:
    assert settings.SERVING["SCALE_TO_ZERO_AFTER_SECONDS"] <= 10
    register(new_name, constant_model("awake"), "Production")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    services.compute_config_update(
        name=new_name,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=True,
        user=owner,
    )
    version = EndpointVersion.objects.get(endpoint__registered_model_name=new_name)
    wait_until_stopped(version=version)
    version.refresh_from_db()
    assert version.service_state == ServiceState.READY
    assert version.config_update_state == ServiceState.READY
    assert events(new_name, EventType.SCALED_TO_ZERO)
    before = set(version.replicas.values_list("replica_id", flat=True))

    token = make_token(owner)
    answers: list[requests.Response] = []

    def call() -> None:
        answers.append(score(stack, token, new_name, "Production", timeout=120))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert all(a.json() == {"predictions": ["awake"]} for a in answers)
    started = set(version.replicas.values_list("replica_id", flat=True)) - before
    assert len(started) == 1
    assert events(new_name, EventType.WOKEN_FROM_ZERO)
