"""The gateway honours the production settings on scoring answers (HTTPS, ALLOWED_HOSTS,
HSTS, nosniff) and never sends MLflow's stack trace to a client unless DEBUG is on: the
front door's app in process (the answers that need a token looked up:
``tests/integration/gateway/test_transport_headers.py``)."""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException

from endpoints.gateway.scoring import translate_answer
from endpoints.gateway.upstream import JSON
from tests.support import front_door
from tests.support.front_door import call

# --- stack traces ------------------------------------------------------------------------------


def _mlflow_error() -> bytes:
    """A replica's error body exactly as MLflow's scoring code writes it."""
    try:
        raise ValueError("could not convert string to float: 'abc'")
    except ValueError as exc:
        import traceback

        error = MlflowException(
            message=f"Failed to predict data: {exc}",
            error_code="BAD_REQUEST",
            stack_trace=traceback.format_exc(),
        )
    return error.serialize_as_json().encode()


def test_stack_trace_not_sent_unless_debug(settings):
    body = _mlflow_error()
    assert b"stack_trace" in body and b"Traceback" in body
    settings.DEBUG = False
    answer = translate_answer(400, JSON, body)
    sent = json.loads(answer.body)
    assert answer.status == 400
    assert "stack_trace" not in sent and b"Traceback" not in answer.body
    original = json.loads(body)
    del original["stack_trace"]
    assert sent == original and "Failed to predict" in sent["message"]
    settings.DEBUG = True
    assert json.loads(translate_answer(400, JSON, body).body)["stack_trace"]


def test_a_successful_answer_is_never_rewritten(settings):
    settings.DEBUG = False
    body = b'{"predictions": ["stack_trace"], "stack_trace": "a column of the model"}'
    assert translate_answer(200, JSON, body).body == body


def test_an_error_body_that_is_not_an_object_loses_its_content(settings):
    settings.DEBUG = False
    answer = translate_answer(500, JSON, b'["stack_trace", "Traceback ..."]')
    assert json.loads(answer.body)["error_code"] == "INTERNAL_ERROR"
    assert b"Traceback" not in answer.body


# --- production settings on the front door -------------------------------------------------------


@pytest.fixture
def fresh_gateway(monkeypatch):
    """``fresh_gateway()``: a gateway process built from the settings as the test left them."""
    return lambda: front_door.fresh_gateway(monkeypatch)


def test_scoring_over_plain_http_is_refused_when_ssl_redirect_is_on(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    fresh_gateway()
    status, headers, body = call(headers=[(b"authorization", b"Bearer sui_x")])
    assert status == 403 and body["error_code"] == "PERMISSION_DENIED"
    assert "HTTPS" in body["message"]
    assert headers[b"x-content-type-options"] == b"nosniff"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "", "127.0.0.1.evil"])
def test_scoring_request_with_a_host_not_in_allowed_hosts_is_refused(fresh_gateway, settings, host):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "serving.example.com"]
    fresh_gateway()
    status, _, body = call(host=host, headers=[(b"authorization", b"Bearer sui_x")])
    assert status == 400 and body["error_code"] == "BAD_REQUEST"
    assert "ALLOWED_HOSTS" in body["message"]


# --- /metrics follows the same rules; health probes only get the headers ------------------------


def test_metrics_over_plain_http_is_refused_when_ssl_redirect_is_on(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS = {"TOKEN": "scrape-secret", "LISTEN": ""}
    fresh_gateway()
    auth = [(b"authorization", b"Bearer scrape-secret")]
    status, headers, body = call(path="/metrics", method="GET", headers=auth)
    assert status == 403 and "HTTPS" in body["message"]
    assert headers[b"x-content-type-options"] == b"nosniff"


def test_metrics_from_a_host_not_in_allowed_hosts_is_refused(fresh_gateway, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    fresh_gateway()
    status, _, body = call(path="/metrics", method="GET", host="evil.example")
    assert status == 400 and "ALLOWED_HOSTS" in body["message"]


def test_metrics_over_https_carries_hsts(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 60
    settings.SECURE_PROXY_SSL_HEADER = None
    fresh_gateway()
    status, headers, _ = call(path="/metrics", method="GET", scheme="https")
    assert status == 401
    assert headers[b"strict-transport-security"] == b"max-age=60"


def test_health_probes_answer_any_host_over_plain_http(fresh_gateway, settings):
    # A probe reaches a process by its address, over plain HTTP (as Django's
    # SECURE_REDIRECT_EXEMPT would let it).
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["serving.example.com"]
    fresh_gateway()
    status, headers, body = call(path="/healthz", method="GET", host="10.0.0.7:8000")
    assert status == 200 and body == {"status": "ok"}
    assert headers[b"x-content-type-options"] == b"nosniff"
