"""Replicas on a 2-node Ray cluster (``ray_stack``): placement over both nodes, scoring
through the gateway, a rollout and a lost node under load, a worker restart, scale to zero
and back, a hostile model confined on its node, a replica held to its memory limit there,
and nothing left once serving is disabled.
Every node, actor and socket is on 127.0.0.1.

The tests share the module's cluster; the lost node is the last test's doing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections import Counter

import psutil
import pytest
import requests
from django.conf import settings

from endpoints import services
from endpoints.models import Event, EventType, Replica, ReplicaState
from endpoints.runtime import get_runtime
from tests.support import hostile, sockets
from tests.support.load import Load
from tests.support.models import attacker_model, constant_model, copy_of_iris, register
from tests.support.serving import NOT_STOPPED, alias, running
from tests.support.stack import WEB_SERVERS, wait_for

# serial: a 2-node cluster takes gigabytes, and its latency guard times requests.
pytestmark = pytest.mark.serial

API = "/api/2.0/preview/mlflow/endpoints-v2/"
READY_TIMEOUT = 180


def spread_over_both_nodes(name: str, version: str) -> list[Replica]:
    """Wait for the version's two Running replicas, one on each node."""

    def both():
        replicas = running(name, version)
        return replicas if len({r.node for r in replicas}) == 2 else None

    return wait_for(both, timeout=READY_TIMEOUT, what=f"v{version} on both nodes")


def actors() -> dict[str, int]:
    return get_runtime().discover()


def no_replica_left(name: str) -> None:
    wait_for(
        lambda: (
            not Replica.objects.filter(
                version__endpoint__registered_model_name=name, state__in=NOT_STOPPED
            ).exists()
        ),
        timeout=90,
        what="every replica to stop",
    )


def disable_and_check_nothing_left(name: str, owner) -> None:
    """Disable serving: no replica row, no actor and no replica process stays."""
    ids = set(
        Replica.objects.filter(version__endpoint__registered_model_name=name).values_list(
            "replica_id", flat=True
        )
    )
    services.endpoint_disable(name=name, user=owner)
    no_replica_left(name)
    wait_for(lambda: not actors(), timeout=60, what="no actor left")
    wait_for(
        lambda: not any(_replica_processes(replica_id) for replica_id in ids),
        timeout=30,
        what="no replica process left",
    )


def enable_medium(name: str, owner) -> None:
    services.endpoint_enable(name=name, user=owner)
    services.compute_config_update(
        name=name,
        stage="Production",
        workload_size="Medium",
        scale_to_zero_enabled=False,
        user=owner,
    )


@pytest.fixture
def name() -> str:
    return f"ray-{uuid.uuid4().hex[:8]}"


def test_a_medium_endpoint_spreads_over_both_nodes_and_a_rollout_under_load_fails_nothing(
    ray_stack, transactional_db, owner, make_token, name: str
) -> None:
    register(name, constant_model("v1"), "Production")
    enable_medium(name, owner)
    replicas = spread_over_both_nodes(name, "1")
    live_nodes = {n["node"] for n in get_runtime().nodes() if n["alive"]}
    assert {r.node for r in replicas} == live_nodes
    # Each replica is the actor named by its id, at the address its node reported.
    assert {r.replica_id for r in replicas} <= set(actors())
    assert all(r.host == "127.0.0.1" for r in replicas)
    # Every socket Ray's nodes, the actors and their replicas listen on is on loopback.
    listening = _listening_addresses()
    assert {r.port for r in replicas} <= {port for _, port in listening}
    assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening

    token = make_token(owner)
    auth = {"Authorization": f"Bearer {token}"}
    listed = requests.get(
        ray_stack.base + API + "get-version-replicas",
        params={"registered_model_name": name, "endpoint_version_name": "1"},
        headers=auth,
        timeout=30,
    ).json()["replicas"]
    assert {r["node"] for r in listed if r["state"] == "Running"} == live_nodes
    # The Logs tab's source: each replica's output, read back through its actor.
    first = replicas[0]
    logs = requests.post(
        ray_stack.base + API + "get-version-logs",
        json={
            "registered_model_name": name,
            "endpoint_version_name": "1",
            "replica_id": first.replica_id,
        },
        headers=auth,
        timeout=30,
    ).json()["logs"]
    assert f"placed on node {first.node}" in logs
    assert "Uvicorn running on http://127.0.0.1" in logs  # its port, bound for it on the node

    with Load(ray_stack.base, token, name, "Production") as load:
        load.wait_for_more(20, "answers from v1")
        v2 = register(name, constant_model("v2"))
        services.model_version_transition(
            name=name, version=v2, stage="Production", archive_existing_versions=True, user=owner
        )
        wait_for(lambda: alias(name, "Production") == v2, timeout=READY_TIMEOUT, what="alias")
        wait_for(
            lambda: all(value == "v2" for _, value in load.answers[-10:]),
            timeout=60,
            what="answers from v2",
        )
        load.wait_for_more(10, "more answers from v2")
    statuses = Counter(status for status, _ in load.answers)
    failed = [text for status, text in load.answers if status != 200][:3]
    assert statuses == {200: len(load.answers)}, (statuses, failed)
    assert {value for _, value in load.answers} == {"v1", "v2"}
    spread_over_both_nodes(name, v2)
    wait_for(lambda: not running(name, "1"), timeout=90, what="v1 to stop")
    # v1's actors went with its replicas.
    wait_for(
        lambda: not {r.replica_id for r in replicas} & set(actors()),
        timeout=60,
        what="v1's actors to go",
    )

    disable_and_check_nothing_left(name, owner)


def test_a_restarted_worker_adopts_the_actors_and_stops_an_orphan(
    ray_stack, transactional_db, owner, name: str
) -> None:
    register(name, constant_model("v1"), "Production")
    enable_medium(name, owner)
    before = {r.replica_id for r in spread_over_both_nodes(name, "1")}
    started = Event.objects.filter(type=EventType.REPLICA_STARTED).count()

    # The worker dies; meanwhile an actor of this installation appears that no row
    # accounts for (as if a worker died after starting it and its row was lost).
    ray_stack.kill_worker()
    from endpoints.runtime import ReplicaSpec

    orphan = f"orphan-{uuid.uuid4().hex[:6]}"
    replica = Replica.objects.filter(replica_id__in=before).first()
    get_runtime().start(
        ReplicaSpec(
            replica_id=orphan,
            model_path="",
            host="127.0.0.1",
            port=0,
            log_path=replica.log_path + ".orphan",
            python="python",
            model_uri=f"models:/{name}/1",
            registry_uri=settings.MLFLOW_REGISTRY_URI,
        )
    )
    assert set(actors()) == {*before, orphan}

    ray_stack.start_new_worker()
    wait_for(lambda: orphan not in actors(), timeout=60, what="the orphan actor to stop")
    # Several periodic passes of the new worker later: the same replicas, no new ones.
    wait_for(
        lambda: ray_stack.worker.output().count("reconcile_all") >= 10,
        timeout=60,
        what="the new worker's periodic passes",
    )
    assert {r.replica_id for r in running(name, "1")} == before
    assert set(actors()) == before
    assert Event.objects.filter(type=EventType.REPLICA_STARTED).count() == started

    disable_and_check_nothing_left(name, owner)


def test_scale_to_zero_leaves_no_actor_and_a_request_wakes_exactly_one(
    ray_stack, transactional_db, owner, make_token, name: str
) -> None:
    assert settings.SERVING["SCALE_TO_ZERO_AFTER_SECONDS"] <= 10
    register(name, constant_model("awake"), "Production")
    services.endpoint_enable(name=name, user=owner)
    services.compute_config_update(
        name=name, stage="Production", workload_size="Small", scale_to_zero_enabled=True, user=owner
    )
    wait_for(
        lambda: Event.objects.filter(
            endpoint__registered_model_name=name, type=EventType.SCALED_TO_ZERO
        ).exists(),
        timeout=READY_TIMEOUT,
        what="the version to scale to zero",
    )
    no_replica_left(name)
    wait_for(lambda: not actors(), timeout=60, what="no actor left at zero")

    token = make_token(owner)
    answers: list[requests.Response] = []

    def call() -> None:
        answers.append(
            requests.post(
                f"{ray_stack.base}/model-endpoint/{name}/Production/invocations",
                json={"dataframe_records": [{"x": 1}]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=180,
            )
        )

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert all(a.json() == {"predictions": ["awake"]} for a in answers)
    woken = running(name, "1")
    assert len(woken) == 1
    assert set(actors()) == {woken[0].replica_id}

    disable_and_check_nothing_left(name, owner)


def test_a_hostile_model_on_a_ray_node_is_denied_everything(
    ray_stack, transactional_db, owner, demo_registry, name: str
) -> None:
    """The sandbox holds on a node as on the worker's host: the model sees its own files
    only and reaches neither the product's services nor the Ray cluster."""
    from endpoints.provisioning import environments
    from endpoints.runtime import ray_actor

    service = hostile.HostService()
    model_config = {"host_port": service.port}
    register(name, hostile.hostile_model(), "Production", model_config=model_config)
    services.endpoint_enable(name=name, user=owner)
    replica = wait_for(
        lambda: next(iter(running(name, "1")), None), timeout=READY_TIMEOUT, what="its replica"
    )
    node_models = ray_actor.node_dir(get_runtime().namespace) / "models"
    own_model = node_models / ray_actor._safe(f"models:/{name}/1")
    other = environments.prepare("iris-classifier", "1").model_path
    ray_port = int(ray_stack.cluster.address.rsplit(":", 1)[1])
    web_port = int(ray_stack.base.rsplit(":", 1)[1])
    try:
        targets = hostile.targets(
            str(own_model),
            other,
            {"the worker": ray_stack.worker.process.pid, "this Django process": os.getpid()},
            service.port,
            models_root=str(node_models),
            services={"the Ray cluster": ray_port, "the product": web_port},
        )
        hostile.assert_confined(hostile.probe((replica.host, replica.port), targets), targets)
        assert service.accepted == 0
    finally:
        service.close()

    disable_and_check_nothing_left(name, owner)


def test_a_ray_replica_has_nagle_off_on_every_hop_and_meets_no_delayed_ack(
    ray_stack, transactional_db, owner, make_token, demo_registry
) -> None:
    """The default-path checks of ``tests/reliability/test_default_path.py`` for a replica
    on a Ray node (the latency guard: the suite's one wall-clock assertion, a cliff)."""
    name = copy_of_iris("guard-ray")
    services.endpoint_enable(name=name, user=owner)
    replica = wait_for(
        lambda: next(iter(running(name, "1")), None), timeout=READY_TIMEOUT, what="its replica"
    )
    token = make_token(owner)
    path = f"/model-endpoint/{name}/Production/invocations"
    wait_for(
        lambda: sockets.answers(ray_stack.base, path, token),
        timeout=READY_TIMEOUT,
        what=f"{name} to answer",
        interval=0.5,
    )
    sockets.assert_nagle_off(
        ray_stack.base,
        path,
        token,
        web_pid=WEB_SERVERS[ray_stack.base].process.pid,
        replica_pids=[p.pid for p in _replica_processes(replica.replica_id)],
        replica=(replica.host, replica.port),
    )
    for client in sockets.CLIENTS:
        sockets.assert_no_cliff(ray_stack.base, path, token, client)
    disable_and_check_nothing_left(name, owner)


def test_a_replica_over_its_memory_on_a_node_is_killed_there_and_the_loop_says_why(
    ray_stack, transactional_db, owner, make_token, name: str
) -> None:
    """The actor reserves the Small size (1 CPU, 4 GiB) and its node holds the replica to
    it as the local runtime would: a model allocating 6 GiB is killed at 4 GiB, alone."""
    register(name, attacker_model(), "Production")
    services.endpoint_enable(name=name, user=owner)
    [victim] = wait_for(lambda: running(name, "1"), timeout=READY_TIMEOUT, what="a replica")
    started = Event.objects.filter(
        endpoint__registered_model_name=name, type=EventType.REPLICA_LIMITS_APPLIED
    )
    [note] = [e.message for e in started]
    assert note.startswith(
        "Replicas of version 1 start with limits: 1 CPU, 4096 MiB memory, 256 processes, "
        "1024 MiB per tmpfs; held by "
    ), note
    url = f"{ray_stack.base}/model-endpoint/{name}/Production/invocations"
    auth = {"Authorization": f"Bearer {make_token(owner)}"}

    def score(row: dict) -> requests.Response:
        return requests.post(url, json={"dataframe_records": [row]}, headers=auth, timeout=180)

    wait_for(lambda: score({"x": 1}).status_code == 200, timeout=60, what="the stage to answer")
    answer = score({"allocate_mb": 6144})
    if "held by rlimits" in note:  # no cgroup on the node: the allocation is refused instead
        assert answer.status_code >= 400, answer.text
        return
    assert (answer.status_code, answer.json()["error_code"]) == (502, "REPLICA_STOPPED")

    def crashed() -> list[str]:
        return list(
            Event.objects.filter(
                endpoint__registered_model_name=name, type=EventType.REPLICA_OUT_OF_MEMORY
            ).values_list("message", flat=True)
        )

    [event] = wait_for(crashed, timeout=60, what="the crash's event")
    assert event == (
        f"Replica {victim.replica_id} was stopped: out of memory (limit 4096 MiB), while serving."
        " A replacement starts in 1 s (restart 1 in a row)."
    )
    wait_for(
        lambda: [r for r in running(name, "1") if r.replica_id != victim.replica_id],
        timeout=READY_TIMEOUT,
        what="a replacement",
    )


def test_a_gpu_workload_type_is_refused_while_the_cluster_declares_no_gpu(
    ray_stack, transactional_db, owner, make_token, name: str
) -> None:
    """Asked of the cluster by the web server (through the API), as a user would."""
    register(name, constant_model("cpu"), "Production")
    services.endpoint_enable(name=name, user=owner)
    answer = requests.put(
        ray_stack.base + "/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config",
        json={
            "registered_model_name": name,
            "stage": "Production",
            "desired_workload_config_spec": {
                "workload_size_id": "Small",
                "workload_type": "GPU_SMALL",
            },
        },
        headers={"Authorization": f"Bearer {make_token(owner)}"},
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Invalid workload_type GPU_SMALL: this installation has no GPU "
        "(the Ray cluster declares no GPU resource).",
    }
    disable_and_check_nothing_left(name, owner)


def test_a_lost_node_is_replaced_on_the_other_under_load_without_a_client_error(
    ray_stack, transactional_db, owner, make_token, name: str
) -> None:
    register(name, constant_model("v1"), "Production")
    enable_medium(name, owner)
    replicas = spread_over_both_nodes(name, "1")
    token = make_token(owner)
    lost = next(r for r in replicas if r.node != _head_node(replicas, ray_stack))
    with Load(ray_stack.base, token, name, "Production") as load:
        load.wait_for_more(20, "answers before the node goes")
        ray_stack.cluster.remove_node(ray_stack.other_node)

        def replaced():
            fresh = running(name, "1")
            return len(fresh) == 2 and lost.node not in {r.node for r in fresh}

        wait_for(replaced, timeout=READY_TIMEOUT, what="replacements on the node left")
        load.wait_for_more(20, "answers after the replacement")
    statuses = Counter(status for status, _ in load.answers)
    # A request on its way to the lost node is retried once by the gateway; the one a lost
    # replica had already read (the client sends one at a time) may have run its model, so
    # it gets 502 instead of a second replica. No other error.
    failed = [text for status, text in load.answers if status != 200]
    assert set(statuses) <= {200, 502} and statuses[502] <= 1, (statuses, failed[:3])
    assert all("REPLICA_STOPPED" in text for text in failed), failed
    # The replica on the node that stayed served throughout: it was never replaced.
    kept = next(r for r in replicas if r.replica_id != lost.replica_id)
    assert kept.replica_id in {r.replica_id for r in running(name, "1")}
    # Its process died with its actor: nothing serves behind the product's back.
    wait_for(
        lambda: not _replica_processes(lost.replica_id),
        timeout=30,
        what="the lost node's replica process to go",
    )
    gone = Replica.objects.get(replica_id=lost.replica_id)
    assert gone.state == ReplicaState.ERROR
    assert lost.node in gone.state_message
    assert Event.objects.filter(
        type=EventType.REPLICA_CRASHED, message__contains=f"lost with node {lost.node}"
    ).exists()

    disable_and_check_nothing_left(name, owner)


def _head_node(replicas: list[Replica], ray_stack) -> str:
    """The node label of the head (the one that stays)."""
    head_id = ray_stack.cluster.head_node.node_id
    return next(r.node for r in replicas if head_id.startswith(r.node.split("/")[1]))


def _replica_processes(replica_id: str) -> list[psutil.Process]:
    """Processes of this host running the replica server of ``replica_id``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "endpoints.runtime.replica" in cmdline and replica_id in cmdline:
            found.append(process)
    return found


def _listening_addresses() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of this process's descendants (the
    Ray nodes were started from here; actors and replicas descend from them)."""
    found = set()
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found
