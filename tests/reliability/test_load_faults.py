"""Zero downtime and self-healing under load, on the real stack.

Small models made here (a constant answer per version, one that cannot load, one that
holds requests until a gate opens, one whose process ends on a marked row) keep each test
to a few replicas. Load is paced
(about 50 requests/s from several client threads) and bounded in time. The suite's
package-wide deployment is committed outside test transactions, so these tests write
through ``django_db_blocker`` and clean up after themselves instead of using
``transactional_db``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pandas as pd
import requests

from endpoints.models import EventType, ReplicaState, ServiceState
from tests.support.models import (
    constant_model,
    gate_artifacts,
    gate_model,
    register,
    unloadable_model,
)
from tests.support.serving import NOT_STOPPED, READY_TIMEOUT
from tests.support.stack import wait_for

# --- 1. a Staging transition under load ---------------------------------------------------------


def test_staging_transition_under_load_drops_no_request_and_switches_to_v2(deployment):
    name = deployment.name
    register(name, constant_model("v1"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    # A brisk pace: a version forked from a warm interpreter switches in a fraction of a
    # second, and the switch itself must happen under load.
    with deployment.load("Staging", rate=200, threads=8) as load:
        wait_for(lambda: load.count() >= 100, timeout=30, what="load on v1")
        v2 = register(name, constant_model("v2"))
        switch_started_at = load.count()
        deployment.transition(v2, "Staging")
        wait_for(lambda: deployment.alias("Staging") == v2, timeout=READY_TIMEOUT, what="alias")
        moved_at = load.count()
        # Shortly after v2 is READY (the alias moves only then) every answer is v2's.
        wait_for(
            lambda: (
                load.count() > moved_at + 100
                and all(value == "v2" for _, value in load.answers[-50:])
            ),
            timeout=15,
            what="only v2 answering",
        )
    statuses = Counter(status for status, _ in load.answers)
    failed = [value for status, value in load.answers if status != 200][:3]
    assert statuses == {200: load.count()}, (statuses, failed)
    assert {value for _, value in load.answers} == {"v1", "v2"}
    # Requests kept arriving while v2 was deployed and the alias moved: the switch itself
    # happened under load, however fast it was.
    assert moved_at > switch_started_at
    ready = next(
        e for e in deployment.events(EventType.VERSION_READY) if e.endpoint_version_name == v2
    )
    moved = next(
        e for e in deployment.events(EventType.VERSION_ALIAS_MOVED) if e.endpoint_version_name == v2
    )
    assert (ready.timestamp, ready.pk) < (moved.timestamp, moved.pk)


# --- 2. a version that cannot load never gets traffic ---------------------------------------------


def test_a_version_that_fails_to_load_never_receives_traffic(deployment):
    name = deployment.name
    register(name, constant_model("good"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    with deployment.load("Staging", rate=20, threads=2) as load:
        broken = register(name, unloadable_model())
        deployment.transition(broken, "Staging")

        def failed():
            row = deployment.version(broken)
            return row if row and row.service_state == ServiceState.FAILED else None

        row = wait_for(failed, timeout=READY_TIMEOUT, what="the broken version to fail")
        wait_for(lambda: load.count() >= 40, timeout=30, what="load")
    assert Counter(load.answers) == {(200, "good"): load.count()}
    assert "refuses to load" in row.service_message
    assert deployment.alias("Staging") == "1"
    assert not deployment.replicas(broken)
    assert any(e.endpoint_version_name == broken for e in deployment.events("VERSION_FAILED"))
    status = requests.get(
        f"{deployment.live.base}/api/2.0/preview/mlflow/endpoints-v2/get-version-status",
        params={"registered_model_name": name, "endpoint_version_name": broken},
        headers={"Authorization": f"Bearer {deployment.token}"},
    ).json()["endpoint_status"]
    assert status["service_status"]["state"] == "SERVICE_STATE_FAILED"


# --- 3. draining ---------------------------------------------------------------------------


def test_a_request_held_in_the_old_version_during_the_switch_still_gets_its_answer(
    deployment, gate
):
    name = deployment.name
    register(name, gate_model("v1"), "Staging", artifacts=gate_artifacts())
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    [old] = deployment.replicas("1")
    held: list[requests.Response] = []
    body = {"dataframe_records": [{"gate": gate.key}]}
    client = threading.Thread(target=lambda: held.append(deployment.score("Staging", body)))
    client.start()
    wait_for(lambda: gate.arrived, timeout=30, what="the request inside v1")

    v2 = register(name, constant_model("v2"))
    deployment.transition(v2, "Staging")
    deployment.wait_serving("Staging", v2)
    # v1 is out of routing and asked to stop while the request is still inside it.
    wait_for(
        lambda: (
            deployment.replicas("1", states=(ReplicaState.TERMINATING, ReplicaState.TERMINATED))
            or not deployment.replicas("1")
        ),
        timeout=60,
        what="v1 to be stopping",
    )
    assert not held
    assert deployment.score("Staging").json() == {"predictions": ["v2"]}
    gate.open()
    client.join(timeout=60)
    assert held[0].status_code == 200, held[0].text
    assert held[0].json() == {"predictions": ["v1"]}
    wait_for(
        lambda: not deployment.replicas("1", states=NOT_STOPPED),
        timeout=60,
        what="v1 to stop",
    )
    assert not _alive(old.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


# --- 4. kill -9 under load ------------------------------------------------------------------------


def test_a_replica_killed_under_load_costs_no_request_and_is_replaced(deployment):
    name = deployment.name
    register(name, constant_model("alive"), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    deployment.configure("Production", "Medium")  # 2 replicas at least
    wait_for(lambda: len(deployment.replicas("1")) >= 2, timeout=READY_TIMEOUT, what="2 replicas")
    with deployment.load("Production") as load:
        wait_for(lambda: load.count() >= 50, timeout=30, what="load on both replicas")
        victim = deployment.replicas("1")[0]
        os.kill(victim.pid, signal.SIGKILL)

        def replaced():
            fresh = deployment.replicas("1")
            ids = {r.replica_id for r in fresh}
            return len(fresh) >= 2 and victim.replica_id not in ids

        wait_for(replaced, timeout=READY_TIMEOUT, what="a replacement replica")
        after = load.count()
        wait_for(lambda: load.count() >= after + 50, timeout=30, what="load after replacement")
    # A request the victim had read when it died may have run its model (and cannot be
    # told from one that killed it): 502, not a second replica. At most one per client was
    # in flight; every other request is answered by the replicas left.
    failed = [(status, text) for status, text in load.answers if status != 200]
    assert all(status == 502 and "REPLICA_STOPPED" in text for status, text in failed), failed
    assert len(failed) <= len(load.threads), failed
    assert Counter(a for a in load.answers if a[0] == 200) == {
        (200, "alive"): load.count() - len(failed)
    }
    assert deployment.events(EventType.REPLICA_CRASHED)


# --- 4b. a request that kills its replica ----------------------------------------------------


def exiting_model(value: str):
    """Answers ``value``; a request with an ``exit`` column ends its replica's process
    inside ``predict`` (``os._exit``), as a model that crashes on some input would. Defined
    in a function, so it is stored by value (replicas do not import this module)."""
    import mlflow

    class Exiting(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame, params=None):
            import os

            if "exit" in model_input.columns:
                os._exit(3)
            return [value] * len(model_input)

    return Exiting()


def test_a_request_that_kills_its_replica_kills_no_other_and_gets_a_502(deployment):
    name = deployment.name
    register(name, exiting_model("alive"), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    deployment.configure("Production", "Medium")  # 2 replicas at least
    wait_for(lambda: len(deployment.replicas("1")) >= 2, timeout=READY_TIMEOUT, what="2 replicas")
    # The gateway now holds kept connections to the replicas: one that closes before an
    # answer must not be taken for a stale one.
    for _ in range(20):
        assert deployment.score("Production").status_code == 200
    before = deployment.replicas("1")

    answer = deployment.score("Production", {"dataframe_records": [{"exit": 1}]})
    assert answer.status_code == 502, answer.text
    body = answer.json()
    assert body["error_code"] == "REPLICA_STOPPED"
    assert "not sent to another replica" in body["message"]

    # The product's own records: one crash, one replacement; the others served throughout.
    wait_for(lambda: deployment.events(EventType.REPLICA_CRASHED), timeout=60, what="the crash")
    wait_for(
        lambda: len(deployment.replicas("1")) >= len(before),
        timeout=READY_TIMEOUT,
        what="a replacement",
    )
    assert len(deployment.events(EventType.REPLICA_CRASHED)) == 1
    running = {r.replica_id for r in deployment.replicas("1")}
    survivors = [r for r in before if r.replica_id in running]
    assert len(survivors) == len(before) - 1
    assert all(_alive(r.pid) for r in survivors)
    assert deployment.score("Production").json() == {"predictions": ["alive"]}


# --- 7. scale from zero --------------------------------------------------------------------


def test_twenty_concurrent_requests_wake_a_scaled_to_zero_stage_with_one_replica(deployment):
    name = deployment.name
    register(name, constant_model("awake"), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    deployment.configure("Production", "Small", scale_to_zero=True)
    wait_for(
        lambda: not deployment.replicas(states=NOT_STOPPED),
        timeout=60,
        what="the stage to scale to zero",
    )
    before = {r.replica_id for r in deployment.replicas(states=tuple(ReplicaState))}
    start = threading.Barrier(20)
    answers: list[requests.Response] = []

    def call() -> None:
        start.wait()
        answers.append(deployment.score("Production", timeout=120))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert all(a.json() == {"predictions": ["awake"]} for a in answers)
    started = {r.replica_id for r in deployment.replicas(states=tuple(ReplicaState))} - before
    assert len(started) == 1, started


def test_the_stack_runs_with_short_drain_and_scale_to_zero_delays(db, settings):
    """These tests rely on the test settings' short delays (and this test makes the test
    database available when this file runs alone)."""
    assert settings.SERVING["DRAIN_SECONDS"] <= 1
    assert settings.SERVING["SCALE_TO_ZERO_AFTER_SECONDS"] <= 10
