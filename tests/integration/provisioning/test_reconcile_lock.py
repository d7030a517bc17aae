"""The per-endpoint reconcile lock stays held for as long as its holder works, and a holder
that cannot renew it (Redis frozen) stops acting by itself before another worker can take it.

The freeze is a real redis-server of the test's own stopped with SIGSTOP: the session's
Redis, which other tests' processes use, is never frozen.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from endpoints import kv
from endpoints.dev import devstack
from endpoints.models import ServingEndpoint
from endpoints.provisioning import apply, converge, reconcile
from endpoints.provisioning.lease import LeaseExpired, held
from tests.support.stack import wait_for

# Longer than the lock's timeout below: the fault injected (the one timed wait).
FREEZE_SECONDS = 2.5


@pytest.fixture
def short_lock(monkeypatch, redis_server):
    monkeypatch.setattr(reconcile, "LOCK_TIMEOUT_SECONDS", 1)
    return redis_server


@dataclass
class OwnRedis:
    server: devstack.ManagedProcess
    url: str
    client: redis.Redis

    def freeze(self) -> None:
        self.server.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.server.send_signal(signal.SIGCONT)

    @property
    def frozen(self) -> bool:
        return psutil.Process(self.server.process.pid).status() == psutil.STATUS_STOPPED


@pytest.fixture
def own_redis(tmp_path: Path, settings, monkeypatch) -> Iterator[OwnRedis]:
    """A redis-server for this test alone, which the product's Redis client talks to."""
    url = f"redis://:{secrets.token_hex(8)}@127.0.0.1:{devstack.free_port()}/0"
    server = devstack.start_redis(url, tmp_path / "redis", tmp_path, timeout=20)
    settings.REDIS_URL = url
    monkeypatch.setattr(reconcile, "LOCK_TIMEOUT_SECONDS", 1)
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        yield OwnRedis(server, url, client)
    finally:
        server.send_signal(signal.SIGCONT)
        server.stop()


def test_lock_is_renewed_by_its_keep_alive_thread_while_held(short_lock):
    name = "serving-ui:test:reconcile-lock"
    short_lock.delete(name)
    with reconcile._held(name) as lease:
        assert lease
        first = short_lock.pttl(name)
        assert 0 < first <= 1000
        # The keeper renews every third of the timeout: the TTL climbs back up.
        seen = []

        def renewed() -> bool:
            ttl = short_lock.pttl(name)
            seen.append(ttl)
            return len(seen) > 1 and ttl > min(seen[:-1])

        wait_for(renewed, timeout=5, what="the lock's keep-alive renewal", interval=0.05)
        with reconcile._held(name) as second:
            assert not second
    assert short_lock.exists(name) == 0


def test_a_renewed_lease_stays_valid_long_past_its_timeout(own_redis):
    with held(own_redis.client, "serving:test:lease", timeout=1) as lease:
        # Four renewals, a third of a second apart: longer than the 1 s timeout.
        wait_for(lambda: lease.renewals >= 4, timeout=10, what="renewals", interval=0.05)
        lease.check()


def _raises_expired(check) -> bool:
    try:
        check()
    except LeaseExpired:
        return True
    return False


def test_a_holder_that_cannot_renew_stops_by_itself_while_redis_is_frozen(own_redis):
    name = "serving:test:lease"
    with held(own_redis.client, name, timeout=1) as lease:
        own_redis.freeze()
        try:
            wait_for(lambda: _raises_expired(lease.check), timeout=10, what="the holder to stop")
            # Nothing came from Redis: the holder measured its own deadline.
            assert own_redis.frozen
            time.sleep(FREEZE_SECONDS)  # the fault goes on past the lock's timeout
        finally:
            own_redis.thaw()
        other = own_redis.client.lock(name, timeout=10)
        wait_for(lambda: other.acquire(blocking=False), timeout=10, what="the lock to expire")
        # Not valid again, though Redis answers: the lock is someone else's now.
        wait_for(lambda: lease.lost, timeout=10, what="the failed renewal", interval=0.05)
        with pytest.raises(LeaseExpired, match="taken over or expired"):
            lease.check()
    assert own_redis.client.get(name) == other.local.token  # its release left other's lock


@dataclass(frozen=True)
class Step:
    """A step of a pass, recorded when it acts."""

    name: str


def test_a_pass_does_not_act_after_its_lock_expired_and_another_worker_took_it(
    own_redis, db, monkeypatch
):
    endpoint = ServingEndpoint.objects.create(registered_model_name="lease-test", enabled=False)
    name = kv.reconcile_lock_key(endpoint.pk)
    acted: list[str] = []
    other = own_redis.client.lock(name, timeout=30)

    def step(run, action: Step) -> None:
        acted.append(action.name)
        if action.name == "first":
            # Redis stops answering for longer than the lock's timeout, mid-pass.
            own_redis.freeze()
            try:
                time.sleep(FREEZE_SECONDS)  # the fault itself, not a wait for an event
            finally:
                own_redis.thaw()
            # The lock expired in Redis: another worker takes it and reconciles.
            wait_for(lambda: other.acquire(blocking=False), timeout=10, what="the lock")

    monkeypatch.setitem(apply.HANDLERS, Step, step)
    monkeypatch.setattr(
        converge, "check_replicas", lambda run: apply.execute(run, [Step("first"), Step("second")])
    )
    reconcile.reconcile_endpoint(endpoint.pk)
    assert acted == ["first"]
    assert own_redis.client.get(name) == other.local.token
