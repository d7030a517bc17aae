"""The run's embedded Redis refuses a connection without its generated password (the
password file and what replicas get: ``tests/unit/serving_ui/test_redis_auth.py``)."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings


def test_an_unauthenticated_redis_connection_is_refused(redis_server):
    url = redis.connection.parse_url(settings.REDIS_URL)
    anonymous = redis.Redis(host=url["host"], port=url["port"], socket_connect_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    guessing = redis.Redis(host=url["host"], port=url["port"], password="guessed")
    with pytest.raises(redis.AuthenticationError):
        guessing.ping()
    assert redis_server.ping()
