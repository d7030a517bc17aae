"""The scoring path as ``make run`` serves it, in each way a replica can start: forked from
the zygote (the default), spawned (``SERVING_REPLICA_START=spawn``), in a per-model
virtualenv (``SERVING_ENVIRONMENT=virtualenv``) and MLflow's own server
(``SERVING_REPLICA_SERVER=mlflow``); the Ray runtime's is in ``tests/cluster``.

For each, a worker with no other setting than that (and this run's ports and paths: the
sandbox and the network are the defaults) enables a copy of the demo iris model; the
reconcile loop starts its replica. Then:

- every TCP socket on the path has Nagle off: the one the front door accepted, the one
  from the gateway to the replica and the one the replica accepted (``TCP_NODELAY``);
- the latency guard: 50 sequential keep-alive requests from ``http.client`` and from a
  ``requests.Session``, through the front door, have a median under 15 ms (in one of three
  rounds). This is the
  suite's one wall-clock assertion: it detects a cliff (Nagle against a client's delayed
  ACK costs 40 ms or more per request; an answer takes 1-3 ms here), not a speed, and the
  module is marked ``serial``: `make test` runs it alone, after the parallel part.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from endpoints import services
from endpoints.models import Replica, ReplicaState, ServingEndpoint, StageAlias
from tests.support import sockets
from tests.support.models import copy_of_iris
from tests.support.stack import WEB_SERVERS, pause_workers, start_worker, wait_for

# serial: the latency guard times requests, with nothing else running.
pytestmark = [pytest.mark.any_database, pytest.mark.serial, pytest.mark.timeout(900)]

MODES = {
    "zygote": {},
    "spawn": {"SERVING_REPLICA_START": "spawn"},
    "virtualenv": {"SERVING_ENVIRONMENT": "virtualenv"},
    "mlflow": {"SERVING_REPLICA_SERVER": "mlflow"},
}
# What the test settings set for the rest of the suite (shorter drains and quiet periods):
# none of it here.
TEST_OVERRIDES = ("SERVING_DRAIN_SECONDS", "SERVING_SCALE_TO_ZERO_AFTER_SECONDS")


@dataclass
class Served:
    mode: str
    base: str
    path: str
    token: str
    replica: Replica
    web_pid: int


@pytest.fixture(scope="module", params=list(MODES))
def served(
    request,
    demo_registry,
    celery_worker_process,
    web_server,
    stack_log_dir,
    django_db_blocker,
) -> Iterator[Served]:
    """The session's worker held still, a worker of this mode in its place."""
    from django.contrib.auth import get_user_model

    mode = request.param
    paused = pause_workers()
    worker = start_worker(stack_log_dir, f"worker-{mode}", MODES[mode], unset=TEST_OVERRIDES)
    try:
        with django_db_blocker.unblock():
            name = copy_of_iris(f"guard-{mode}")
            owner = get_user_model().objects.create_superuser(f"guard-{uuid.uuid4().hex[:6]}")
            endpoint = services.endpoint_enable(name=name, user=owner)
            _, token = services.token_create(user=owner, name="guard")
            # Serving: Production points at the version (it moves only once it is READY).
            wait_for(
                lambda: StageAlias.objects.filter(endpoint=endpoint, stage="Production").exists(),
                timeout=600,
                what=f"a version served in {mode} mode",
                interval=0.5,
            )
            replica = Replica.objects.get(version__endpoint=endpoint, state=ReplicaState.RUNNING)
        served = Served(
            mode=mode,
            base=web_server,
            path=f"/model-endpoint/{name}/Production/invocations",
            token=token,
            replica=replica,
            web_pid=_web_pid(web_server),
        )
        # A running replica is routed to once its version is READY and the front door has
        # seen it: the tests start from an endpoint that answers.
        wait_for(
            lambda: sockets.answers(served.base, served.path, served.token),
            timeout=120,
            what=f"{name} to answer",
            interval=0.5,
        )
        yield served
        with django_db_blocker.unblock():
            services.endpoint_disable(name=name, user=owner)
            wait_for(
                lambda: (
                    not Replica.objects.filter(
                        version__endpoint=endpoint, state=ReplicaState.RUNNING
                    ).exists()
                ),
                timeout=120,
                what="the replica to stop",
            )
            ServingEndpoint.objects.filter(pk=endpoint.pk).delete()
            owner.delete()  # and its token: later tests count the tokens they make
    finally:
        worker.stop()
        for paused_worker in paused:
            paused_worker.send_signal(signal.SIGCONT)


def _web_pid(base: str) -> int:
    return WEB_SERVERS[base].process.pid


def test_the_replica_started_as_the_mode_says(db, served: Served) -> None:
    import psutil

    from endpoints.runtime.local import arguments

    command = arguments(psutil.Process(served.replica.pid).cmdline())
    assert "endpoints.runtime.replica" in command
    server = command[command.index("--server") + 1]
    assert server == ("mlflow" if served.mode == "mlflow" else "serving-ui")
    parent = arguments(psutil.Process(served.replica.pid).parent().cmdline())
    forked = "--zygote" in parent
    assert forked == (served.mode in ("zygote", "virtualenv", "mlflow")), parent
    if served.mode == "virtualenv":
        assert "/envs/" in command[0], command


def test_every_socket_on_the_scoring_path_has_nagle_off(served: Served) -> None:
    sockets.assert_nagle_off(
        served.base,
        served.path,
        served.token,
        web_pid=served.web_pid,
        replica_pids=[served.replica.pid],
        replica=(served.replica.host, served.replica.port),
    )


@pytest.mark.parametrize("client", sockets.CLIENTS)
def test_keep_alive_requests_through_the_front_door_meet_no_delayed_ack(
    served: Served, client: str
) -> None:
    sockets.assert_no_cliff(served.base, served.path, served.token, client)
