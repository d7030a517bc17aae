"""The gateway honours the production settings on scoring answers (HTTPS, ALLOWED_HOSTS,
HSTS, nosniff) and never sends MLflow's stack trace to a client unless DEBUG is on."""

from __future__ import annotations

import asyncio
import json

import pytest
from mlflow.exceptions import MlflowException

from endpoints.gateway import front
from endpoints.gateway import scoring as gateway_app
from endpoints.gateway.scoring import translate_answer
from endpoints.gateway.upstream import JSON

SCORING = "/model-endpoint/iris/Production/invocations"


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


def _call(
    *,
    scheme: str = "http",
    host: str = "127.0.0.1:8000",
    headers=(),
    path: str = SCORING,
    method: str = "POST",
) -> tuple[int, dict[bytes, bytes], dict]:
    """One request through the front door; (status, headers, JSON body)."""
    pages = []

    async def django_app(scope, receive, send):
        pages.append(scope)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "scheme": scheme,
        "headers": [(b"host", host.encode()), *headers],
    }
    messages = iter([{"type": "http.request", "body": b"{}", "more_body": False}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    asyncio.run(front.FrontDoor(django_app)(scope, receive, send))
    assert not pages  # scoring never reaches Django
    start, body = sent[0], sent[1]
    return start["status"], dict(start["headers"]), json.loads(body["body"])


@pytest.fixture
def fresh_gateway(monkeypatch, settings):
    """A gateway process built from the settings as the test left them."""

    def use() -> gateway_app.Gateway:
        gw = gateway_app.Gateway()
        monkeypatch.setattr(front, "gateway", lambda: gw)
        return gw

    return use


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_server")
def test_gateway_answers_carry_nosniff_and_no_hsts_without_https(fresh_gateway, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    fresh_gateway()
    status, headers, body = _call()
    assert status == 401 and body["error_code"] == "UNAUTHENTICATED"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"strict-transport-security" not in headers  # as Django: only over HTTPS


def test_scoring_over_plain_http_is_refused_when_ssl_redirect_is_on(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    fresh_gateway()
    status, headers, body = _call(headers=[(b"authorization", b"Bearer sui_x")])
    assert status == 403 and body["error_code"] == "PERMISSION_DENIED"
    assert "HTTPS" in body["message"]
    assert headers[b"x-content-type-options"] == b"nosniff"


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_server")
def test_https_behind_a_proxy_is_served_with_hsts(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    fresh_gateway()
    # The proxy's header says HTTPS: the request goes on (here: no token, so 401).
    status, headers, _ = _call(headers=[(b"x-forwarded-proto", b"https")])
    assert status == 401
    assert headers[b"strict-transport-security"] == b"max-age=3600; includeSubDomains"
    # Without it, or with the scheme alone claiming https, it is plain HTTP to us.
    assert _call(scheme="https")[0] == 403
    assert _call(headers=[(b"x-forwarded-proto", b"http")])[0] == 403


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_server")
def test_direct_https_is_served_with_hsts(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 60
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = False
    settings.SECURE_HSTS_PRELOAD = False
    settings.SECURE_PROXY_SSL_HEADER = None
    fresh_gateway()
    status, headers, _ = _call(scheme="https")
    assert status == 401 and headers[b"strict-transport-security"] == b"max-age=60"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "", "127.0.0.1.evil"])
def test_scoring_request_with_a_host_not_in_allowed_hosts_is_refused(fresh_gateway, settings, host):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "serving.example.com"]
    fresh_gateway()
    status, _, body = _call(host=host, headers=[(b"authorization", b"Bearer sui_x")])
    assert status == 400 and body["error_code"] == "BAD_REQUEST"
    assert "ALLOWED_HOSTS" in body["message"]


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_server")
def test_scoring_request_with_an_allowed_host_goes_on(fresh_gateway, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", ".example.com"]
    fresh_gateway()
    assert _call(host="serving.example.com:443")[0] == 401
    assert _call(host="127.0.0.1:8000")[0] == 401


# --- /metrics follows the same rules; health probes only get the headers ------------------------


def test_metrics_over_plain_http_is_refused_when_ssl_redirect_is_on(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS = {"TOKEN": "scrape-secret", "LISTEN": ""}
    fresh_gateway()
    auth = [(b"authorization", b"Bearer scrape-secret")]
    status, headers, body = _call(path="/metrics", method="GET", headers=auth)
    assert status == 403 and "HTTPS" in body["message"]
    assert headers[b"x-content-type-options"] == b"nosniff"


def test_metrics_from_a_host_not_in_allowed_hosts_is_refused(fresh_gateway, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    fresh_gateway()
    status, _, body = _call(path="/metrics", method="GET", host="evil.example")
    assert status == 400 and "ALLOWED_HOSTS" in body["message"]


def test_metrics_over_https_carries_hsts(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 60
    settings.SECURE_PROXY_SSL_HEADER = None
    fresh_gateway()
    status, headers, _ = _call(path="/metrics", method="GET", scheme="https")
    assert status == 401
    assert headers[b"strict-transport-security"] == b"max-age=60"


def test_health_probes_answer_any_host_over_plain_http(fresh_gateway, settings):
    # A probe reaches a process by its address, over plain HTTP (as Django's
    # SECURE_REDIRECT_EXEMPT would let it).
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["serving.example.com"]
    fresh_gateway()
    status, headers, body = _call(path="/healthz", method="GET", host="10.0.0.7:8000")
    assert status == 200 and body == {"status": "ok"}
    assert headers[b"x-content-type-options"] == b"nosniff"
