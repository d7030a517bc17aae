"""Inference tables on the real stack: the front door captures scoring requests into
Parquet files that pandas reads; a web server whose capture queue (bounded in bytes) is
full still answers every request and counts the ones it left out; stopped with SIGTERM, it
writes what it still held; the download streams through the front door to managers only;
/metrics shows what was left out."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import requests
from django.test import Client

from endpoints import services
from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess
from endpoints.models import AccessToken, ServingEndpoint
from endpoints.services import traffic
from endpoints.telemetry import inference_tables
from tests.support.models import constant_model, register
from tests.support.serving import wait_ready
from tests.support.stack import wait_for


@pytest.fixture
def new_name() -> str:
    return f"capture-{uuid.uuid4().hex[:8]}"


# Room for a few captured requests of the tests below (each costs its bodies plus the
# queue's fixed cost per row, 512 bytes).
QUEUE_BYTES = 3000


@pytest.fixture
def held_capture_server(stack, stack_log_dir) -> Iterator[tuple[str, ManagedProcess]]:
    """One more web server (one process) whose capture queue holds QUEUE_BYTES and whose
    writer would wait an hour to write: only stopping the server writes what it holds."""
    from endpoints.management.commands.run_product import web_command

    port = devstack.free_port()
    env = {
        "SERVING_CAPTURE_QUEUE_BYTES": str(QUEUE_BYTES),
        "SERVING_CAPTURE_FLUSH_SECONDS": "3600",
    }
    command = web_command(host="127.0.0.1", port=port, processes=1)
    server = ManagedProcess("web-held-capture", command, stack_log_dir, env=env).start()
    base = f"http://127.0.0.1:{port}"
    server.wait_until(
        lambda: devstack.http_status(base + "/login/") == 200, timeout=60, what="the web server"
    )
    yield base, server
    server.stop()


def post(base: str, token: str, name: str, body: dict) -> requests.Response:
    return requests.post(
        f"{base}/model-endpoint/{name}/Production/invocations",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def post_many(
    base: str, token: str, name: str, count: int, *, first: int = 0
) -> list[requests.Response]:
    """``count`` requests, one after the other, sending x = first, first + 1, …"""
    with requests.Session() as session:
        return [
            session.post(
                f"{base}/model-endpoint/{name}/Production/invocations",
                json={"dataframe_records": [{"x": i}]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            for i in range(first, first + count)
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

    directory = inference_tables.table_dir(new_name)
    wait_for(lambda: inference_tables.count_rows(new_name) >= 500, timeout=60, what="500 rows")
    table = pd.read_parquet(directory)
    assert len(table) == 500
    assert set(table.columns) >= {*inference_tables.COLUMNS, "date"}
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
    assert inference_tables.dropped(new_name) == 0


def session_cookies(user) -> dict[str, str]:
    """A signed-in browser session of ``user`` (the real server reads it from the same
    database)."""
    client = Client()
    client.force_login(user)
    return {name: morsel.value for name, morsel in client.cookies.items()}


def test_a_stopping_web_server_writes_what_it_captured_and_counts_what_it_left_out(
    stack: str, held_capture_server, owner, member, admin_user, make_token, new_name: str
) -> None:
    base, server = held_capture_server
    register(new_name, constant_model("v1"), "Production")
    services.endpoint_enable(name=new_name, user=owner)
    wait_ready(new_name)
    traffic.inference_table_update(name=new_name, enabled=True, sample_rate=1.0, user=owner)
    token = make_token(owner)
    # Larger than the whole queue: left out although the queue is empty.
    big = {"dataframe_records": [{"x": 0, "pad": "p" * QUEUE_BYTES}]}
    assert post(base, token, new_name, big).status_code == 200
    answers = post_many(base, token, new_name, 60, first=10)
    assert [r.status_code for r in answers] == [200] * 60
    assert all(r.json() == {"predictions": ["v1"]} for r in answers)

    server.stop()  # SIGTERM, as an operator or the supervisor stops it
    assert server.process.returncode is not None
    kept = inference_tables.count_rows(new_name)
    assert 1 <= kept < 60
    counts = inference_tables.dropped_counts([new_name])[new_name]
    assert counts == {"queue_full": 61 - kept, "write_failed": 0, "shutdown": 0}
    table = pd.read_parquet(inference_tables.table_dir(new_name))
    sent = sorted(json.loads(body)["dataframe_records"][0]["x"] for body in table["request"])
    assert sent == list(range(10, 10 + kept))  # the first ones, until the queue was full

    metrics = requests.get(
        f"{stack}/metrics", headers={"Authorization": f"Bearer {make_token(admin_user)}"}
    )
    line = f'serving_ui_inference_rows_dropped_total{{endpoint="{new_name}",reason="queue_full"}}'
    assert f"{line} {float(61 - kept)}" in metrics.text.splitlines()

    # The download streams through the front door, to managers only.
    url = f"{stack}/models/{new_name}/serving/inference/download/"
    download = requests.get(url, cookies=session_cookies(owner), timeout=60)
    assert download.status_code == 200
    assert "Content-Length" not in download.headers  # streamed, not built first
    assert len(pd.read_parquet(io.BytesIO(download.content))) == kept
    services.permission_set(
        endpoint=ServingEndpoint.objects.get(registered_model_name=new_name),
        user=member,
        level="CAN_VIEW",
        by=owner,
    )
    refused = requests.get(url, cookies=session_cookies(member), timeout=60)
    assert refused.status_code == 403
