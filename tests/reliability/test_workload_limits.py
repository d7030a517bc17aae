"""Workload limits hold: on a Small replica the product started (forked from the zygote,
sandboxed, without a network), a model that allocates 6 GiB is killed alone at its 4 GiB,
one that forks 1,000 processes is refused past 256, and one that writes 3 GiB to /tmp and
/dev/shm is refused past 1 GiB; the product and another endpoint answer throughout. A
replica launched afresh (``SERVING_REPLICA_START=spawn``) is held to its memory too.

Each attack costs at most the Small size's 4 GiB of this machine's memory."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from endpoints.dev.devstack import free_port
from endpoints.models import WORKLOAD_LIMITS, EventType, ReplicaState, WorkloadSize
from endpoints.provisioning.limits import replica_limits
from endpoints.runtime import cgroups, sandbox
from endpoints.runtime.base import ReplicaSpec
from endpoints.runtime.local import LocalRuntime, wait_until
from tests.support import iris
from tests.support.deployment import Live
from tests.support.models import attacker_model, register
from tests.support.serving import READY_TIMEOUT
from tests.support.stack import wait_for

pytestmark = [pytest.mark.serial, pytest.mark.any_database]

SMALL = WORKLOAD_LIMITS[WorkloadSize.SMALL]


class Neighbour:
    """Another endpoint (the suite's iris-classifier) scored in a loop through the front
    door, every answer kept."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    status = session.post(
                        self.live.url("Production"),
                        json=iris.SPLIT,
                        headers=self.live.headers("owner"),
                        timeout=30,
                    ).status_code
                except requests.RequestException:
                    status = 0
                self.statuses.append(status)

    def answered(self, more: int) -> None:
        """Wait until ``more`` answers came after this call."""
        seen = len(self.statuses)
        wait_for(lambda: len(self.statuses) >= seen + more, timeout=60, what="the neighbour")

    def __enter__(self) -> Neighbour:
        self.thread.start()
        self.answered(3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.answered(3)
        self.stop.set()
        self.thread.join(timeout=60)
        assert set(self.statuses) == {200}, self.statuses


@pytest.fixture
def attacker(deployment) -> Iterator:
    """A Small endpoint of ``attacker_model``, serving Production."""
    register(deployment.name, attacker_model(), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    yield deployment


def _hierarchy() -> cgroups.Hierarchy | None:
    return cgroups.hierarchy(cgroups.parent_group())


def _attack(deployment, columns: dict) -> requests.Response:
    return deployment.score("Production", {"dataframe_records": [columns]}, timeout=180)


def _replicas_api(deployment) -> list[dict]:
    answer = requests.get(
        f"{deployment.live.base}/api/2.0/preview/mlflow/endpoints-v2/get-version-replicas",
        params={"registered_model_name": deployment.name, "endpoint_version_name": "1"},
        headers={"Authorization": f"Bearer {deployment.token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["replicas"]


def test_replicas_start_with_their_sizes_limits_and_an_event_says_what_holds_them(attacker):
    [replica] = attacker.replicas("1")
    where = _hierarchy()
    held = f"held by {where.kind}" if where else "held by rlimits"
    [event] = [e for e in attacker.events(EventType.REPLICA_LIMITS_APPLIED)]
    assert event.message == (
        "Replicas of version 1 start with limits: 1 CPU, 4096 MiB memory, 256 processes, "
        f"1024 MiB per tmpfs; {held}."
    )
    if where is not None:
        assert replica.pid in cgroups.members(where, replica.replica_id)
        assert cgroups.memory_limit_mb(where, replica.replica_id) == SMALL["memory_mb"]


def test_a_model_allocating_6_gib_is_killed_alone_at_its_4_gib_and_replaced(attacker, live):
    if _hierarchy() is None:
        pytest.skip("without a cgroup the floor refuses the allocation instead (test_cgroups)")
    [victim] = attacker.replicas("1")
    with Neighbour(live):
        answer = _attack(attacker, {"allocate_mb": 6144})
        # The request was inside the replica when it died: the client hears that it stopped.
        assert answer.status_code == 502, answer.text
        assert answer.json()["error_code"] == "REPLICA_STOPPED"

        def replaced() -> bool:
            return bool(attacker.replicas("1")) and victim.replica_id not in {
                r.replica_id for r in attacker.replicas("1")
            }

        wait_for(replaced, timeout=READY_TIMEOUT, what="a replacement replica")
        assert attacker.score("Production").json() == {"predictions": ["alive"]}
    reason = f"out of memory (limit {SMALL['memory_mb']} MiB)"
    crashed = [e.message for e in attacker.events(EventType.REPLICA_OUT_OF_MEMORY)]
    assert crashed == [
        f"Replica {victim.replica_id} was stopped: {reason}, while serving."
        " A replacement starts in 1 s (restart 1 in a row)."
    ]
    # Where a replica's last failure is shown: its row, the API (and the Serving tab).
    rows = {r["replica_id"]: r for r in _replicas_api(attacker)}
    assert rows[victim.replica_id]["state"] == ReplicaState.ERROR
    assert reason in rows[victim.replica_id]["message"]
    [fresh] = attacker.replicas("1")
    assert fresh.restarts == 1


def test_a_model_forking_1000_processes_is_refused_past_its_limit_and_keeps_serving(attacker, live):
    [replica] = attacker.replicas("1")
    with Neighbour(live):
        answer = _attack(attacker, {"fork": 1000})
    assert answer.status_code == 200, answer.text
    report = json.loads(answer.json()["predictions"][0])
    # Its threads count too: the replica's own and every fork stay within 256.
    assert 0 < report["forked"] < SMALL["max_processes"], report
    assert "Resource temporarily unavailable" in report["error"], report
    # Refused, not killed: the same replica answers.
    assert [r.replica_id for r in attacker.replicas("1")] == [replica.replica_id]
    assert attacker.score("Production").json() == {"predictions": ["alive"]}
    assert attacker.events(EventType.REPLICA_CRASHED) == []


def test_a_model_writing_3_gib_to_tmp_and_shm_is_refused_past_its_tmpfs_size(attacker, live):
    [replica] = attacker.replicas("1")
    with Neighbour(live):
        answer = _attack(attacker, {"fill_mb": 3072})
    assert answer.status_code == 200, answer.text
    report = json.loads(answer.json()["predictions"][0])
    for where in ("/tmp", "/dev/shm"):
        written = report[where]
        # 1 GiB of tmpfs, less what the sandbox's own files take (the last write is cut).
        assert SMALL["tmp_mb"] - 8 <= written["written_mb"] <= SMALL["tmp_mb"] + 1, report
        assert "No space left on device" in written["error"], report
    assert [r.replica_id for r in attacker.replicas("1")] == [replica.replica_id]
    assert attacker.score("Production").json() == {"predictions": ["alive"]}


# --- launched afresh ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attacker_files(tmp_path_factory) -> str:
    import mlflow

    path = tmp_path_factory.mktemp("attacker") / "model"
    mlflow.pyfunc.save_model(str(path), python_model=attacker_model(), pip_requirements=["mlflow"])
    sandbox.make_readable(path)
    return str(path)


@pytest.fixture
def own_parent(monkeypatch) -> Iterator[str]:
    """A cgroup parent of this test's own: the worker's sweep never looks at it."""
    parent = f"serving-ui/test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(cgroups.PARENT_ENV, parent)
    yield parent
    where = cgroups.hierarchy(parent)
    for path in set(where.parents.values()) if where else ():
        with contextlib.suppress(OSError):
            Path(path).rmdir()


def test_a_launched_replica_is_killed_at_its_memory_limit_too(
    attacker_files, own_parent, live, settings, tmp_path
):
    where = _hierarchy()
    if where is None:
        pytest.skip("without a cgroup the floor refuses the allocation instead (test_cgroups)")
    spec = ReplicaSpec(
        replica_id="v1-spawned01",
        model_path=attacker_files,
        host="127.0.0.1",
        port=free_port(),
        log_path=str(tmp_path / "replica.log"),
        python=sys.executable,
        start_mode="spawn",
        sandbox=settings.SERVING["SANDBOX"],
        network=sandbox.NETWORK_NONE,
        limits=replica_limits(None),  # no compute config yet: a Small replica's
    )
    runtime = LocalRuntime()
    pid = runtime.start(spec)
    try:
        assert wait_until(lambda: runtime.probe(spec.host, spec.port, timeout=1), timeout=180)
        assert runtime.enforcement(spec.replica_id) == where.kind
        with Neighbour(live):
            with pytest.raises(requests.ConnectionError):
                requests.post(
                    f"http://{spec.host}:{spec.port}/invocations",
                    json={"dataframe_records": [{"allocate_mb": 6144}]},
                    timeout=180,
                )
            assert wait_until(lambda: not runtime.is_alive(pid, spec.replica_id), timeout=30)
        assert runtime.stop_reason(spec.replica_id) == "out of memory (limit 4096 MiB)"
    finally:
        runtime.kill(pid, spec.replica_id)
    assert spec.replica_id not in cgroups.groups(cgroups.hierarchy(own_parent))


def test_every_attack_here_goes_past_the_small_size(db):
    """(Also makes the test database available when this file runs alone.)"""
    assert replica_limits(None).memory_mb == SMALL["memory_mb"] < 6144
    assert SMALL["max_processes"] < 1000
    assert SMALL["tmp_mb"] < 3072
