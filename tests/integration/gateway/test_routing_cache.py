"""The gateway's per-process routing cache: kept until the generation in Redis moves (told
by a push, or asked when pushes are lost), rebuilt when old, and serving what it has while
Redis is away. Real Redis and database rows; no web server."""

from __future__ import annotations

import threading

import pytest

from endpoints.gateway import routing
from endpoints.gateway.routing import RoutingCache
from endpoints.kv import bump_generation, redis_client
from tests.support.rows import iris_with_two_stages, version_on_ports

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(owner):
    return iris_with_two_stages(owner)


@pytest.fixture
def generation(redis_server):
    return bump_generation


def test_the_snapshot_is_kept_until_the_generation_moves(endpoint, generation):
    version_on_ports(endpoint, 1, "Production", ports=(20001,))
    cache = RoutingCache()
    first = cache.current()
    assert cache.current() is first
    version_on_ports(endpoint, 2, "Staging", ports=(20002,))
    assert cache.current() is first  # not yet told
    generation()
    second = cache.current()
    assert second is not first
    assert second.table.resolve("iris", "Staging").version == "2"


def test_an_old_snapshot_is_rebuilt_even_without_a_generation_change(endpoint, generation):
    cache = RoutingCache()
    first = cache.current()
    first.built_at -= routing.MAX_AGE_SECONDS + 1
    cache.refresh_if_old()
    assert cache.current() is not first


def test_routing_survives_redis_being_unreachable(endpoint, generation, settings):
    version_on_ports(endpoint, 1, "Production", ports=(20001,))
    cache = RoutingCache()
    first = cache.current()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    assert cache.current() is first
    assert cache.current().table.resolve("iris", "1").replicas


def test_without_a_change_no_request_asks_redis(endpoint, generation, monkeypatch):
    cache = RoutingCache()
    first = cache.current()
    asked = []
    real, this_thread = routing.kv.current_generation, threading.current_thread()

    def counted() -> int:
        # Only this test's requests count: a gateway an earlier test of this process left
        # behind may still refresh its own cache from a thread of its own.
        if threading.current_thread() is this_thread:
            asked.append(1)
        return real()

    monkeypatch.setattr(routing.kv, "current_generation", counted)
    for _ in range(50):
        assert cache.current() is first
    assert asked == []
    # The push for a change is there as soon as the bump returns: the next request sees it.
    generation()
    assert cache.current() is not first
    assert len(asked) == 1


def test_without_pushes_every_request_asks_for_the_generation(endpoint, generation, monkeypatch):
    cache = RoutingCache()
    monkeypatch.setattr(cache.watcher, "poll", lambda: None)
    first = cache.current()
    assert cache.current() is first
    generation()
    assert cache.current() is not first


def test_a_lost_invalidation_connection_falls_back_to_asking(endpoint, generation):
    cache = RoutingCache()
    first = cache.current()
    cache.watcher._conn.disconnect()
    generation()
    assert cache.current() is not first


def test_a_redis_restart_is_noticed_on_the_invalidation_connection(endpoint, generation):
    cache = RoutingCache()
    first = cache.current()
    conn = cache.watcher._conn
    conn.send_command("CLIENT", "ID")
    client_id = conn.read_response()
    # Closed on the server side: what a Redis restart looks like to the gateway.
    redis_client().client_kill_filter(_id=client_id)
    generation()
    assert cache.current() is not first
