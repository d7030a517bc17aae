"""Faults of the product's own infrastructure: the Celery worker killed with ``kill -9``
in the middle of a deployment, and Redis frozen (SIGSTOP) for 10 seconds. Invocations of
READY versions keep working or fail fast, and the system converges without help."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import requests

from endpoints.models import Replica, ReplicaState
from tests.support.models import constant_model, register
from tests.support.serving import READY_TIMEOUT
from tests.support.stack import wait_for

REDIS_PAUSE_SECONDS = 10


def test_worker_killed_mid_deploy_keeps_serving_and_converges(deployment, restartable_worker):
    name = deployment.name
    register(name, constant_model("v1"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    with deployment.load("Staging", rate=20, threads=2) as load:
        v2 = register(name, constant_model("v2"))
        deployment.transition(v2, "Staging")
        # Kill the worker as soon as it wrote v2's first replica row: mid-deployment.
        wait_for(
            lambda: deployment.replicas(v2, states=tuple(ReplicaState)),
            timeout=60,
            what="v2's first replica row",
            interval=0.05,
        )
        restartable_worker()
        deployment.wait_serving("Staging", v2)
        wait_for(lambda: not deployment.replicas("1"), timeout=60, what="v1 to stop")
        after = load.count()
        wait_for(lambda: load.count() >= after + 20, timeout=30, what="load after convergence")
    statuses = Counter(status for status, _ in load.answers)
    assert statuses == {200: load.count()}, statuses
    assert {value for _, value in load.answers} == {"v1", "v2"}
    # Exactly the desired replicas: one live replica of v2, one process for it.
    live = deployment.replicas(states=(ReplicaState.PENDING, ReplicaState.RUNNING))
    assert [r.version.version for r in live] == [v2]
    ours = set(
        deployment.db(
            lambda: list(
                Replica.objects.filter(version__endpoint__registered_model_name=name).values_list(
                    "replica_id", flat=True
                )
            )
        )
    )
    from endpoints.provisioning import environments
    from endpoints.runtime import get_runtime

    wait_for(
        lambda: (
            set(get_runtime().discover(within=str(environments.data_dir()))) & ours
            == {r.replica_id for r in live}
        ),
        timeout=30,
        what="exactly one process per live replica",
    )


def test_redis_frozen_for_ten_seconds_costs_no_hanging_request_and_converges(
    deployment, redis_server
):
    name = deployment.name
    register(name, constant_model("v1"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    redis_pid = int(redis_server.info()["process_id"])
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def invoke() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = session.post(
                        deployment.url("Staging"),
                        json={"dataframe_records": [{"x": 1}]},
                        headers={"Authorization": f"Bearer {deployment.token}"},
                        timeout=30,
                    ).status_code
                except requests.RequestException:
                    status = 0
                answers.append((status, time.monotonic() - started))
                stop.wait(0.05)

    client = threading.Thread(target=invoke, daemon=True)
    client.start()
    wait_for(lambda: len(answers) >= 10, timeout=30, what="answers before the pause")
    before = len(answers)
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        paused_until = time.monotonic() + REDIS_PAUSE_SECONDS
        stop.wait(REDIS_PAUSE_SECONDS)  # the fault lasts this long; nothing to wait for
        during = answers[before:]
        assert time.monotonic() >= paused_until
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    stop.set()
    client.join(timeout=60)
    assert during, "no request completed while Redis was frozen: they hung"
    # Every invocation made while Redis was frozen was answered or refused promptly.
    assert all(status in (200, 503) for status, _ in during), Counter(s for s, _ in during)
    assert all(elapsed < 5 for _, elapsed in during), max(e for _, e in during)
    assert Counter(status for status, _ in answers[:before]) == {200: before}

    # Converges unaided: a new version deployed after the pause takes the stage.
    v2 = register(name, constant_model("v2"))
    deployment.transition(v2, "Staging")
    deployment.wait_serving("Staging", v2)
    wait_for(
        lambda: deployment.score("Staging").json() == {"predictions": ["v2"]},
        timeout=READY_TIMEOUT,
        what="v2 answering",
    )


def test_redis_is_the_one_this_run_started(db, redis_server, settings):
    """The pause above must freeze this run's Redis, nobody else's (and this test makes
    the test database available when this file runs alone)."""
    port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    assert int(redis_server.info()["tcp_port"]) == port
