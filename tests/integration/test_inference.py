"""Inference tables on the real stack: the front door captures scoring requests into
Parquet files that pandas reads, and a gateway whose capture queue is full still answers
every request and counts the ones it left out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import requests
from conftest import serve_product, wait_for
from fakes import constant_model, register

from endpoints import inference, services, traffic
from endpoints.models import AccessToken

from .test_provisioning import wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def new_name() -> str:
    return f"capture-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tiny_queue_gateway(stack, stack_log_dir) -> Iterator[str]:
    """One more front door (one process) whose capture queue holds 5 requests and whose
    writer never gets to empty it during a test."""
    env = {"SERVING_CAPTURE_QUEUE_SIZE": "5", "SERVING_CAPTURE_FLUSH_SECONDS": "3600"}
    yield from serve_product("web-tiny-queue", stack_log_dir, workers=1, env=env)


def post_many(base: str, token: str, name: str, count: int) -> list[requests.Response]:
    with requests.Session() as session:
        return [
            session.post(
                f"{base}/model-endpoint/{name}/Production/invocations",
                json={"dataframe_records": [{"x": i}]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            for i in range(count)
        ]


def test_every_request_is_captured_and_pandas_reads_the_table(
    stack: str, owner, make_token, new_name: str
) -> None:
    register(new_name, constant_model("v1"), "Production")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    traffic.inference_table_update(name=new_name, enabled=True, sample_rate=1.0, user=owner)
    token = make_token(owner)
    answers = post_many(stack, token, new_name, 500)
    assert {r.status_code for r in answers} == {200}

    directory = inference.table_dir(new_name)
    wait_for(lambda: inference.count_rows(new_name) >= 500, timeout=60, what="500 rows")
    table = pd.read_parquet(directory)
    assert len(table) == 500
    assert set(table.columns) >= {*inference.COLUMNS, "date"}
    assert set(table["status"]) == {200}
    assert set(table["version"]) == {"1"}
    assert set(table["selector"]) == {"Production"}
    assert set(table["endpoint"]) == {new_name}
    token_row = AccessToken.objects.get(user=owner, prefix=token[:12])
    assert set(table["token_id"]) == {token_row.pk}
    assert not table["request"].str.contains(token).any()
    sent = sorted(json.loads(body)["dataframe_records"][0]["x"] for body in table["request"])
    assert sent == list(range(500))
    assert {json.dumps(json.loads(body)) for body in table["response"]} == {
        json.dumps({"predictions": ["v1"]})
    }
    assert (table["latency_ms"] > 0).all()
    assert inference.dropped(new_name) == 0


def test_a_full_capture_queue_drops_and_counts_but_every_request_succeeds(
    stack: str, tiny_queue_gateway: str, owner, make_token, new_name: str
) -> None:
    register(new_name, constant_model("v1"), "Production")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    traffic.inference_table_update(name=new_name, enabled=True, sample_rate=1.0, user=owner)
    answers = post_many(tiny_queue_gateway, make_token(owner), new_name, 60)
    assert [r.status_code for r in answers] == [200] * 60
    assert all(r.json() == {"predictions": ["v1"]} for r in answers)
    # The queue kept 5; the other 55 were dropped and counted (reported within a second).
    wait_for(lambda: inference.dropped(new_name) == 55, timeout=30, what="55 dropped")
