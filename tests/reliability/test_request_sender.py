"""The Serving tab's Send Request on the real stack: requests held inside a slow model hold
no page thread (the UI and the API keep answering), and UI requests are captured into the
inference table like any other.

A front door of one process (the ``one_process`` fixture) makes its page threads all there
is: with more held requests than threads, a page would have none left if a send took one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pandas as pd
import pytest
import requests

from endpoints.gateway.scoring import PAGE_SENDS
from endpoints.services import traffic
from endpoints.telemetry import inference_tables, load_reports
from serving_ui.asgi import PAGE_THREADS
from tests.support.deployment import Deployment
from tests.support.models import constant_model, gate_artifacts, gate_model, register
from tests.support.stack import serve_product, wait_for
from tests.support.ui_sender import UiClient

HELD = PAGE_THREADS + 2


@pytest.fixture(scope="module")
def one_process(django_db_setup, redis_server, stack_log_dir) -> Iterator[str]:
    yield from serve_product("web-one-process", stack_log_dir, workers=1)


def _signed_in(deployment: Deployment, base: str) -> UiClient:
    return UiClient(base, deployment.owner.username, "pw-owner-1234")


def _in_threads(count: int, send) -> tuple[list, list[threading.Thread]]:
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(send())) for _ in range(count)]
    for thread in threads:
        thread.start()
    return answers, threads


def _ui_and_api_answer(deployment: Deployment, ui: UiClient) -> None:
    """A page, the status poll and an API call all answer (a page thread is free)."""
    page = ui.get(f"/models/{deployment.name}/serving/")
    assert page.status_code == 200
    assert 'data-testid="endpoint-status"' in page.text
    api = requests.get(
        f"{ui.base}/api/2.0/preview/mlflow/endpoints-v2/get-status",
        params={"registered_model_name": deployment.name},
        headers={"Authorization": f"Bearer {deployment.token}"},
        timeout=30,
    )
    assert api.status_code == 200
    assert api.json()["endpoint_status"]["state"] == "READY"


def test_ui_sends_held_in_the_model_leave_the_ui_and_the_api_answering(
    deployment, gate, one_process
):
    register(deployment.name, gate_model("v1"), "Production", artifacts=gate_artifacts())
    deployment.enable()
    deployment.wait_serving("Production", "1")
    version = deployment.version("1")
    ui = _signed_in(deployment, one_process)
    form = ui.form(deployment.name, "1")
    body = {"dataframe_records": [{"gate": gate.key}]}
    answers, threads = _in_threads(HELD, lambda: ui.send(form, body))
    try:
        # More requests in flight than the process has page threads.
        wait_for(
            lambda: load_reports.current(version.pk).in_flight >= HELD,
            timeout=60,
            what=f"{HELD} UI requests in flight",
        )
        assert gate.arrived >= 1 and not answers
        _ui_and_api_answer(deployment, ui)
    finally:
        gate.open()
        for thread in threads:
            thread.join(timeout=90)
    assert [a.status_code for a in answers] == [200] * HELD, [a.text for a in answers]
    assert all(a.json() == {"predictions": ["v1"]} for a in answers)


def test_sends_without_javascript_beyond_the_cap_get_429_and_pages_keep_answering(
    deployment, gate, one_process
):
    register(deployment.name, gate_model("v1"), "Production", artifacts=gate_artifacts())
    deployment.enable()
    deployment.wait_serving("Production", "1")
    ui = _signed_in(deployment, one_process)
    form = ui.form(deployment.name, "1")
    body = {"dataframe_records": [{"gate": gate.key}]}
    answers, threads = _in_threads(HELD, lambda: ui.send_without_javascript(form, "1", body).text)
    try:
        wait_for(
            lambda: gate.arrived == PAGE_SENDS and len(answers) == HELD - PAGE_SENDS,
            timeout=60,
            what=f"{PAGE_SENDS} form sends held, the others refused",
        )
        assert all("Status <strong>429</strong>" in page for page in answers)
        assert all("REQUEST_LIMIT_EXCEEDED" in page for page in answers)
        _ui_and_api_answer(deployment, ui)
    finally:
        gate.open()
        for thread in threads:
            thread.join(timeout=90)
    answered = [page for page in answers if "Status <strong>200</strong>" in page]
    assert len(answered) == PAGE_SENDS


def test_ui_sends_are_captured_into_the_inference_table(deployment, one_process):
    register(deployment.name, constant_model("v1"), "Production")
    deployment.enable()
    deployment.wait_serving("Production", "1")
    deployment.db(
        traffic.inference_table_update,
        name=deployment.name,
        enabled=True,
        sample_rate=1.0,
        user=deployment.owner,
    )
    ui = _signed_in(deployment, one_process)
    form = ui.form(deployment.name, "1")
    assert ui.send(form, {"dataframe_records": [{"x": 1}]}).status_code == 200
    page = ui.send_without_javascript(form, "1", {"dataframe_records": [{"x": 2}]})
    assert "Status <strong>200</strong>" in page.text
    wait_for(
        lambda: inference_tables.count_rows(deployment.name) >= 2,
        timeout=60,
        what="2 captured rows",
    )
    table = pd.read_parquet(inference_tables.table_dir(deployment.name))
    assert sorted(table["request"]) == [
        '{"dataframe_records": [{"x": 1}]}',
        '{"dataframe_records": [{"x": 2}]}',
    ]
    assert set(table["token_id"]) == {0}  # the session's, not a token's
    assert set(table["selector"]) == {"1"}
    assert set(table["status"]) == {200}


def test_the_cap_on_sends_without_javascript_leaves_most_page_threads_free(db):
    """The cap is what keeps pages answering (and this test makes the test database
    available when this file runs alone)."""
    assert PAGE_SENDS <= PAGE_THREADS // 4
