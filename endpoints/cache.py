"""Redis access shared by the web, gateway and worker processes.

The *generation* is one integer in Redis that changes whenever routing, tokens or
permissions change; a gateway process compares it with the one its in-memory caches were
built at, so one cheap GET per request keeps every cache correct.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

GENERATION_KEY = "serving:generation"


@cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    return _client_for(settings.REDIS_URL)


def bump_generation() -> int:
    return int(redis_client().incr(GENERATION_KEY))


def current_generation() -> int:
    value = redis_client().get(GENERATION_KEY)
    return int(value) if value is not None else 0
