"""Zero downtime and self-healing under load, on the real stack.

Small models made here (a constant answer per version, one that cannot load, one that
holds requests until a gate file exists) keep each test to a few replicas. Load is paced
(about 50 requests/s from several client threads) and bounded in time. The suite's
package-wide deployment is committed outside test transactions, so these tests write
through ``django_db_blocker`` and clean up after themselves instead of using
``transactional_db``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import wait_for

from endpoints import registry, services
from endpoints.models import (
    EndpointVersion,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    StageAlias,
)

from .conftest import Live

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

READY_TIMEOUT = 120
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)


# --- models ---------------------------------------------------------------------------------


def _constant_model(value: str):
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [value] * len(model_input)

    return Constant()


def _unloadable_model():
    import mlflow

    class Unloadable(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            raise RuntimeError("this model refuses to load: its weights are corrupt")

        def predict(self, context, model_input, params=None):
            return []

    return Unloadable()


def _gate_model(value: str):
    """Answers ``value``; a request with ``gate``/``arrived`` columns first notes its
    arrival in the ``arrived`` directory and waits (at most a minute) for the ``gate`` file."""
    import mlflow

    class Gate(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import os
            import time
            import uuid

            if "gate" in model_input.columns:
                gate, arrived = str(model_input["gate"][0]), str(model_input["arrived"][0])
                open(os.path.join(arrived, uuid.uuid4().hex), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.02)
            return [value] * len(model_input)

    return Gate()


def register(name: str, model, stage: str | None = None) -> str:
    import mlflow

    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("reliability-tests")):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            registered_model_name=name,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    if stage:
        registry.transition_stage(name, version, stage, archive_existing_versions=True)
    return version


# --- the stack, without transactional_db -----------------------------------------------------


class Deployment:
    """One model served for the test; disabled and removed afterwards."""

    def __init__(self, live: Live, blocker) -> None:
        self.live = live
        self.blocker = blocker
        self.name = f"rel-{uuid.uuid4().hex[:8]}"
        self.owner = live.users["owner"]
        self.token = live.tokens["owner"]

    def db(self, fn: Callable, *args, **kwargs):
        with self.blocker.unblock():
            return fn(*args, **kwargs)

    def enable(self) -> None:
        self.db(services.endpoint_enable, name=self.name, user=self.owner)

    def transition(self, version: str, stage: str) -> None:
        self.db(
            services.model_version_transition,
            name=self.name,
            version=version,
            stage=stage,
            archive_existing_versions=True,
            user=self.owner,
        )

    def configure(self, stage: str, size: str, scale_to_zero: bool = False) -> None:
        self.db(
            services.compute_config_update,
            name=self.name,
            stage=stage,
            workload_size=size,
            scale_to_zero_enabled=scale_to_zero,
            user=self.owner,
        )

    def alias(self, stage: str) -> str | None:
        row = self.db(
            lambda: (
                StageAlias.objects.filter(endpoint__registered_model_name=self.name, stage=stage)
                .select_related("version")
                .first()
            )
        )
        return row.version.version if row else None

    def version(self, version: str) -> EndpointVersion | None:
        return self.db(
            lambda: EndpointVersion.objects.filter(
                endpoint__registered_model_name=self.name, version=version
            ).first()
        )

    def replicas(self, version: str | None = None, states=(ReplicaState.RUNNING,)) -> list:
        def query():
            rows = Replica.objects.filter(
                version__endpoint__registered_model_name=self.name, state__in=states
            )
            if version is not None:
                rows = rows.filter(version__version=version)
            return list(rows.select_related("version"))

        return self.db(query)

    def events(self, type: str) -> list[Event]:
        return self.db(
            lambda: list(Event.objects.filter(endpoint__registered_model_name=self.name, type=type))
        )

    def wait_serving(self, stage: str, version: str) -> None:
        def ready():
            row = self.version(version)
            assert row is None or row.service_state != ServiceState.FAILED, row.service_message
            return self.alias(stage) == version and self.replicas(version)

        wait_for(ready, timeout=READY_TIMEOUT, what=f"{self.name} v{version} serving {stage}")

    def url(self, selector: str) -> str:
        return f"{self.live.base}/model-endpoint/{self.name}/{selector}/invocations"

    def score(self, selector: str, body: dict | None = None, **kwargs) -> requests.Response:
        return requests.post(
            self.url(selector),
            json=body or {"dataframe_records": [{"x": 1}]},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    def remove(self) -> None:
        def disable():
            ServingEndpoint.objects.filter(registered_model_name=self.name).update(enabled=False)
            endpoint = ServingEndpoint.objects.filter(registered_model_name=self.name).first()
            if endpoint is not None:
                services.request_reconcile(endpoint)

        self.db(disable)
        wait_for(
            lambda: not self.replicas(states=NOT_STOPPED),
            timeout=60,
            what=f"{self.name} replicas to stop",
        )
        self.db(lambda: ServingEndpoint.objects.filter(registered_model_name=self.name).delete())


@pytest.fixture
def deployment(live, django_db_blocker) -> Iterator[Deployment]:
    deployment = Deployment(live, django_db_blocker)
    yield deployment
    deployment.remove()


class PacedLoad:
    """About ``rate`` requests/s to one URL from ``threads`` clients until stopped; keeps
    every answer as ``(status, first prediction or error text)``."""

    def __init__(self, deployment: Deployment, selector: str, *, rate: float = 50, threads=4):
        self.url = deployment.url(selector)
        self.headers = {"Authorization": f"Bearer {deployment.token}"}
        self.interval = threads / rate
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        next_at = time.monotonic()
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    response = session.post(
                        self.url,
                        json={"dataframe_records": [{"x": 1}]},
                        headers=self.headers,
                        timeout=60,
                    )
                    value = response.json().get("predictions", [None])[0] if response.ok else ""
                    self.answers.append((response.status_code, value or response.text))
                except requests.RequestException as exc:
                    self.answers.append((0, repr(exc)))
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def count(self) -> int:
        return len(self.answers)

    def __enter__(self) -> PacedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


# --- 1. a Staging transition under load ---------------------------------------------------------


def test_staging_transition_under_load_drops_no_request_and_switches_to_v2(deployment):
    name = deployment.name
    register(name, _constant_model("v1"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    with PacedLoad(deployment, "Staging") as load:
        wait_for(lambda: load.count() >= 100, timeout=30, what="load on v1")
        v2 = register(name, _constant_model("v2"))
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
    assert statuses == {200: load.count()}, statuses
    assert {value for _, value in load.answers} == {"v1", "v2"}
    assert load.count() >= 300
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
    register(name, _constant_model("good"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    with PacedLoad(deployment, "Staging", rate=20, threads=2) as load:
        broken = register(name, _unloadable_model())
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
    deployment, tmp_path
):
    name = deployment.name
    register(name, _gate_model("v1"), "Staging")
    deployment.enable()
    deployment.wait_serving("Staging", "1")
    [old] = deployment.replicas("1")
    gate, arrived = tmp_path / "gate", tmp_path / "arrived"
    arrived.mkdir()
    held: list[requests.Response] = []
    body = {"dataframe_records": [{"gate": str(gate), "arrived": str(arrived)}]}
    client = threading.Thread(target=lambda: held.append(deployment.score("Staging", body)))
    client.start()
    wait_for(lambda: any(arrived.iterdir()), timeout=30, what="the request inside v1")

    v2 = register(name, _constant_model("v2"))
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
    gate.touch()
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
    register(name, _constant_model("alive"), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    deployment.configure("Production", "Medium")  # 2 replicas at least
    wait_for(lambda: len(deployment.replicas("1")) >= 2, timeout=READY_TIMEOUT, what="2 replicas")
    with PacedLoad(deployment, "Production") as load:
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
    assert Counter(load.answers) == {(200, "alive"): load.count()}
    assert deployment.events(EventType.REPLICA_CRASHED)


# --- 7. scale from zero --------------------------------------------------------------------


def test_twenty_concurrent_requests_wake_a_scaled_to_zero_stage_with_one_replica(deployment):
    name = deployment.name
    register(name, _constant_model("awake"), "Production")
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
