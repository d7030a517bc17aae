"""Timeouts and backpressure: a hung replica and a full queue cost callers a quick error,
never a hanging request. A second gateway process runs with small limits (a 2 s request
timeout and no queue beyond a replica's concurrency of 4)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from endpoints.models import ReplicaState
from tests.support.models import constant_model, gate_artifacts, gate_model, register
from tests.support.serving import READY_TIMEOUT
from tests.support.stack import serve_product, wait_for

pytestmark = pytest.mark.any_database

TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def small_gateway(live, stack_log_dir) -> Iterator[str]:
    env = {
        "SERVING_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "SERVING_QUEUE_PER_REPLICA": "0",
    }
    yield from serve_product("gateway-small-limits", stack_log_dir, workers=1, env=env)


def _post(base: str, deployment, body=None, timeout: float = 60) -> requests.Response:
    return requests.post(
        f"{base}/model-endpoint/{deployment.name}/Production/invocations",
        json=body or {"dataframe_records": [{"x": 1}]},
        headers={"Authorization": f"Bearer {deployment.token}"},
        timeout=timeout,
    )


# --- 5. a hung replica ------------------------------------------------------------------------


def test_a_hung_replica_answers_504_at_the_timeout_and_is_replaced_after_repeated_probes(
    deployment, small_gateway, settings
):
    register(deployment.name, constant_model("fresh"), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    [victim] = deployment.replicas("1")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        for _ in range(2):
            started = time.monotonic()
            response = _post(small_gateway, deployment, timeout=30)
            elapsed = time.monotonic() - started
            assert response.status_code == 504, response.text
            assert (
                response.json()["error_code"] == "DEADLINE_EXCEEDED"
                or response.json()["error_code"]
            )
            # The client gets its answer at the gateway's timeout, not whenever the model
            # server wakes up.
            assert elapsed < TIMEOUT_SECONDS + 5, elapsed

        limit = settings.SERVING["PROBE_FAILURES_BEFORE_RESTART"]
        assert limit > 1

        def counted_failures() -> int:
            rows = [r for r in deployment.replicas("1") if r.replica_id == victim.replica_id]
            return rows[0].probe_failures if rows else limit

        # One failed probe is not enough to replace it.
        wait_for(lambda: counted_failures() >= 1, timeout=30, what="a failed probe")
        seen = counted_failures()
        if seen < limit:
            assert victim.replica_id in {r.replica_id for r in deployment.replicas("1")}

        def replaced():
            fresh = deployment.replicas("1")
            return fresh and victim.replica_id not in {r.replica_id for r in fresh}

        wait_for(replaced, timeout=READY_TIMEOUT, what="a replacement for the hung replica")
        gone = deployment.replicas(states=tuple(ReplicaState))
        old = next(r for r in gone if r.replica_id == victim.replica_id)
        assert old.state == ReplicaState.ERROR
        assert f"failed {limit} health checks in a row" in old.state_message
        assert _post(small_gateway, deployment).json() == {"predictions": ["fresh"]}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGCONT)


# --- 6. backpressure ----------------------------------------------------------------------------


def test_a_full_queue_refuses_extra_requests_quickly_and_held_ones_succeed(
    deployment, small_gateway, gate
):
    register(deployment.name, gate_model("held"), "Production", artifacts=gate_artifacts())
    deployment.enable()
    deployment.wait_serving("Production", "1")
    body = {"dataframe_records": [{"gate": gate.key}]}
    held: list[requests.Response] = []

    def hold() -> None:
        held.append(_post(small_gateway, deployment, body))

    clients = [threading.Thread(target=hold) for _ in range(4)]
    for client in clients:
        client.start()
    wait_for(lambda: gate.arrived == 4, timeout=30, what="4 requests held")

    for _ in range(5):
        started = time.monotonic()
        refused = _post(small_gateway, deployment, timeout=10)
        assert time.monotonic() - started < 2
        assert refused.status_code in (429, 503), refused.text
        assert refused.headers["Retry-After"].isdigit()
        assert refused.json()["error_code"] in ("REQUEST_LIMIT_EXCEEDED", "TEMPORARILY_UNAVAILABLE")

    gate.open()
    for client in clients:
        client.join(timeout=60)
    assert [r.status_code for r in held] == [200] * 4
    assert all(r.json() == {"predictions": ["held"]} for r in held)
    # With the queue free again requests are admitted.
    assert _post(small_gateway, deployment).json() == {"predictions": ["held"]}


def test_limits_are_what_this_module_assumes(db, settings):
    """(Also makes the test database available when this file runs alone.)"""
    assert settings.SERVING["REPLICA_CONCURRENCY"] == 4
