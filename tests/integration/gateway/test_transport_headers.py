"""Scoring answers that pass the transport rules (HTTPS, ALLOWED_HOSTS) carry their
headers (HSTS only over HTTPS, nosniff): the front door's app in process, with the token
lookup's Redis and database (the refusals themselves: ``tests/unit/gateway/test_transport.py``)."""

from __future__ import annotations

import pytest

from tests.support import front_door
from tests.support.front_door import call

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]


@pytest.fixture
def fresh_gateway(monkeypatch):
    """``fresh_gateway()``: a gateway process built from the settings as the test left them."""
    return lambda: front_door.fresh_gateway(monkeypatch)


def test_gateway_answers_carry_nosniff_and_no_hsts_without_https(fresh_gateway, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    fresh_gateway()
    status, headers, body = call()
    assert status == 401 and body["error_code"] == "UNAUTHENTICATED"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"strict-transport-security" not in headers  # as Django: only over HTTPS


def test_https_behind_a_proxy_is_served_with_hsts(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    fresh_gateway()
    # The proxy's header says HTTPS: the request goes on (here: no token, so 401).
    status, headers, _ = call(headers=[(b"x-forwarded-proto", b"https")])
    assert status == 401
    assert headers[b"strict-transport-security"] == b"max-age=3600; includeSubDomains"
    # Without it, or with the scheme alone claiming https, it is plain HTTP to us.
    assert call(scheme="https")[0] == 403
    assert call(headers=[(b"x-forwarded-proto", b"http")])[0] == 403


def test_direct_https_is_served_with_hsts(fresh_gateway, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 60
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = False
    settings.SECURE_HSTS_PRELOAD = False
    settings.SECURE_PROXY_SSL_HEADER = None
    fresh_gateway()
    status, headers, _ = call(scheme="https")
    assert status == 401 and headers[b"strict-transport-security"] == b"max-age=60"


def test_scoring_request_with_an_allowed_host_goes_on(fresh_gateway, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", ".example.com"]
    fresh_gateway()
    assert call(host="serving.example.com:443")[0] == 401
    assert call(host="127.0.0.1:8000")[0] == 401
