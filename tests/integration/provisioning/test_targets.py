"""MLflow aliases as serving targets and traffic splits, on the real stack: Redis, a
Celery worker with beat, the front door and real model servers. Each version answers a
constant, so every answer names the version that gave it (and ``X-Serving-Version`` must
agree)."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from endpoints import registry, services
from endpoints.models import EventType, ServiceState, ServingEndpoint
from endpoints.services import traffic
from tests.support.load import Load
from tests.support.models import constant_model, register
from tests.support.serving import READY_TIMEOUT, alias, events, running, score, wait_ready
from tests.support.stack import wait_for


@pytest.fixture
def new_name() -> str:
    return f"target-{uuid.uuid4().hex[:8]}"


def test_an_alias_url_answers_and_moving_the_alias_in_mlflow_rolls_traffic_without_a_failure(
    stack: str, owner, make_token, new_name: str
) -> None:
    v1 = register(new_name, constant_model("v1"))
    registry.client().set_registered_model_alias(new_name, "champion", v1)
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    token = make_token(owner)
    for prefix in ("model-endpoint", "model"):
        response = requests.post(
            f"{stack}/{prefix}/{new_name}/@champion/invocations",
            json={"dataframe_records": [{"x": 1}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": ["v1"]}
        assert response.headers["X-Serving-Version"] == v1
    assert score(stack, token, new_name, "@nobody").status_code == 404

    with Load(stack, token, new_name, "@champion") as load:
        wait_for(lambda: len(load.answers) >= 20, timeout=30, what="requests to v1")
        v2 = register(new_name, constant_model("v2"))
        # Straight in MLflow, as a user of the registry would: the loop picks it up.
        registry.client().set_registered_model_alias(new_name, "champion", v2)
        wait_for(lambda: alias(new_name, "@champion") == v2, timeout=READY_TIMEOUT, what="move")
        load.wait_for_only("v2", "answers from v2")
    statuses = Counter(status for status, _ in load.answers)
    assert statuses == {200: len(load.answers)}, statuses
    assert {value for _, value in load.answers} == {"v1", "v2"}
    # The pointer moved only once v2 was READY; then v1 was drained and stopped.
    ready = next(
        e for e in events(new_name, EventType.VERSION_READY) if e.endpoint_version_name == v2
    )
    moved = next(
        e for e in events(new_name, EventType.VERSION_ALIAS_MOVED) if e.endpoint_version_name == v2
    )
    assert moved.alias == "champion"
    assert (ready.timestamp, ready.pk) < (moved.timestamp, moved.pk)
    wait_for(lambda: not running(new_name, v1), timeout=60, what="v1 to stop")
    assert events(new_name, EventType.VERSION_RETIRED)


def test_an_endpoint_serves_only_the_aliases_it_is_limited_to(
    stack: str, owner, make_token, new_name: str
) -> None:
    v1 = register(new_name, constant_model("v1"))
    v2 = register(new_name, constant_model("v2"))
    services.endpoint_enable(name=new_name, user=owner)
    traffic.served_aliases_set(name=new_name, aliases=["champion"], user=owner)
    traffic.model_alias_set(name=new_name, alias="champion", version=v1, user=owner)
    traffic.model_alias_set(name=new_name, alias="challenger", version=v2, user=owner)
    wait_for(lambda: alias(new_name, "@champion") == v1, timeout=READY_TIMEOUT, what="champion")
    wait_ready(new_name)
    token = make_token(owner)
    assert score(stack, token, new_name, "@champion").json() == {"predictions": ["v1"]}
    assert score(stack, token, new_name, "@challenger").status_code == 404
    assert not running(new_name, v2)  # not served: never deployed

    traffic.served_aliases_set(name=new_name, aliases=None, user=owner)
    wait_for(lambda: alias(new_name, "@challenger") == v2, timeout=READY_TIMEOUT, what="all")
    wait_for(
        lambda: score(stack, token, new_name, "@challenger").status_code == 200,
        timeout=30,
        what="the challenger URL",
    )
    response = score(stack, token, new_name, "@challenger")
    assert response.json() == {"predictions": ["v2"]}
    assert response.headers["X-Serving-Version"] == v2
    version = running(new_name, v2)[0].version
    assert version.service_state == ServiceState.READY
    assert version.registry_aliases == ["challenger"]


def test_a_90_10_split_lands_within_3_percent_and_promote_and_roll_back_take_effect_at_once(
    stack: str, owner, make_token, new_name: str
) -> None:
    v1 = register(new_name, constant_model("v1"))
    v2 = register(new_name, constant_model("v2"))
    registry.client().set_registered_model_alias(new_name, "champion", v1)
    registry.client().set_registered_model_alias(new_name, "challenger", v2)
    services.endpoint_enable(name=new_name, user=owner)
    wait_for(lambda: alias(new_name, "@challenger") == v2, timeout=READY_TIMEOUT, what="v2")
    wait_ready(new_name)
    traffic.traffic_split_set(
        name=new_name, target="@champion", weights={v1: 90, v2: 10}, user=owner
    )
    token = make_token(owner)

    def answers(count: int) -> list[tuple[str, str]]:
        """(X-Serving-Version, predicted value) of ``count`` requests, from 4 threads."""

        def one(session: requests.Session) -> tuple[str, str]:
            response = session.post(
                f"{stack}/model-endpoint/{new_name}/@champion/invocations",
                json={"dataframe_records": [{"x": 1}]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            return response.headers["X-Serving-Version"], response.json()["predictions"][0]

        def batch(n: int) -> list[tuple[str, str]]:
            with requests.Session() as session:
                return [one(session) for _ in range(n)]

        with ThreadPoolExecutor(4) as pool:
            return [a for part in pool.map(batch, [count // 4] * 4) for a in part]

    split = answers(2000)
    assert len(split) == 2000
    # Every answer names its version, and the version named is the one that answered.
    assert all(value == f"v{version}" for version, value in split)
    share = sum(1 for version, _ in split if version == v1) / len(split)
    assert 0.87 <= share <= 0.93, share

    # Roll back: everything goes to what @champion points at, at once.
    traffic.traffic_split_rollback(name=new_name, target="@champion", user=owner)
    assert {version for version, _ in answers(200)} == {v1}

    # Promote: everything goes to v2 at once; the registry follows, then the split ends.
    traffic.traffic_split_set(
        name=new_name, target="@champion", weights={v1: 50, v2: 50}, user=owner
    )
    traffic.traffic_split_promote(name=new_name, target="@champion", version=v2, user=owner)
    assert {version for version, _ in answers(200)} == {v2}
    assert registry.get_model(new_name).aliases["champion"] == v2
    wait_for(lambda: alias(new_name, "@champion") == v2, timeout=60, what="@champion to move")
    endpoint = ServingEndpoint.objects.get(registered_model_name=new_name)
    wait_for(lambda: not endpoint.traffic_splits.exists(), timeout=60, what="the split to end")
    assert {version for version, _ in answers(40)} == {v2}
    assert events(new_name, EventType.TRAFFIC_SPLIT_CHANGED)
