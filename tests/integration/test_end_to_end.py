"""The API driving the whole product: the real web server, Celery worker and model servers.

Enable the demo model and follow it to READY through get-status; then move a stage to a
new version and watch the stage alias move only once that version is ready.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from endpoints import registry
from endpoints.models import Replica, ReplicaState, ServingEndpoint
from tests.support import models
from tests.support.stack import wait_for

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
TRANSITION = "/api/2.0/mlflow/databricks/model-versions/transition-stage"
READY_TIMEOUT = 240


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, call: str, **args: Any) -> dict[str, Any]:
        response = self.session.get(self.base + V2 + call, params=args, timeout=30)
        assert response.status_code == 200, (call, response.status_code, response.text)
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.session.post(self.base + path, json=body, timeout=60)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def aliases(self, name: str) -> dict[str, str]:
        body = self.get("list-version-aliases", registered_model_name=name)
        return {a["alias"]: a["endpoint_version_name"] for a in body["aliases"]}

    def version_states(self, name: str) -> dict[str, str]:
        body = self.get("list-versions", registered_model_name=name)
        return {
            v["endpoint_version_name"]: v["service_status"]["state"]
            for v in body["endpoint_statuses"]
        }

    def state(self, name: str) -> str:
        status = self.get("get-status", registered_model_name=name)["endpoint_status"]
        assert status["state"] != "FAILED", status
        return status["state"]


@pytest.fixture
def api(stack, owner, make_token) -> Api:
    return Api(stack, make_token(owner))


def _stop_serving(name: str) -> None:
    """Disable and wait until the worker has stopped the model's replicas."""
    from endpoints.tasks import reconcile_all

    ServingEndpoint.objects.filter(registered_model_name=name).update(enabled=False)
    reconcile_all.delay()
    live = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)
    wait_for(
        lambda: (
            not Replica.objects.filter(
                version__endpoint__registered_model_name=name, state__in=live
            ).exists()
        ),
        timeout=60,
        what=f"{name}'s replicas to stop",
    )


@pytest.fixture
def copy_of_iris(stack) -> Iterator[str]:
    """A model of this test's own (iris-classifier's artifacts): v1 in Staging, v2 in None.

    The demo models stay as other tests expect them."""
    name = models.copy_of_iris("iris-copy", versions=2, stage="Staging")
    yield name
    _stop_serving(name)
    registry.client().delete_registered_model(name)


def test_enable_goes_ready_and_aliases_follow_the_registry_stages(api: Api):
    enabled = api.post(V2 + "enable", {"registered_model_name": "iris-classifier"})
    assert enabled["endpoint_status"]["state"] == "PENDING"

    wait_for(
        lambda: api.state("iris-classifier") == "READY",
        timeout=READY_TIMEOUT,
        what="iris-classifier to be READY",
        interval=0.5,
    )

    assert api.aliases("iris-classifier") == {"Staging": "2", "Production": "1"}
    assert api.version_states("iris-classifier") == {
        "1": "SERVICE_STATE_READY",
        "2": "SERVICE_STATE_READY",
    }
    replicas = api.get(
        "get-version-replicas", registered_model_name="iris-classifier", endpoint_version_name="1"
    )["replicas"]
    assert any(r["state"] == "Running" for r in replicas)
    events = api.get("get-event-history", registered_model_name="iris-classifier")["events"]
    assert {"ENDPOINT_ENABLED", "VERSION_READY"} <= {e["type"] for e in events}


def test_stage_alias_moves_only_once_the_new_version_is_ready(api: Api, copy_of_iris: str):
    name = copy_of_iris
    api.post(V2 + "enable", {"registered_model_name": name})
    wait_for(lambda: api.state(name) == "READY", timeout=READY_TIMEOUT, what=f"{name} to be READY")
    assert api.aliases(name) == {"Staging": "1"}

    moved = api.post(
        TRANSITION,
        {
            "name": name,
            "version": "2",
            "stage": "Staging",
            "archive_existing_versions": True,
            "comment": "Deploying version 2 to Staging",
        },
    )
    assert moved["model_version"]["current_stage"] == "Staging"
    assert moved["model_version"]["version"] == "2"

    # Observe the switch: the alias may name version 2 only when version 2 is READY.
    observations: list[tuple[str | None, str | None]] = []
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        alias = api.aliases(name).get("Staging")
        # Read after the alias: a version READY now was READY when the alias was read or
        # became so since, and a version never leaves READY while its alias points at it.
        state = api.version_states(name).get("2")
        observations.append((alias, state))
        if alias == "2":
            assert state == "SERVICE_STATE_READY", observations
            break
        assert alias == "1", observations
        time.sleep(0.3)
    else:
        pytest.fail(f"Staging never moved to version 2: {observations[-5:]}")
    # The old version answered while the new one came up.
    assert any(alias == "1" and state != "SERVICE_STATE_READY" for alias, state in observations)
    assert registry.get_version(name, "1").stage == "Archived"
