"""The per-endpoint reconcile lock stays held for as long as its holder works."""

from __future__ import annotations

import pytest

from endpoints.provisioning import reconcile
from tests.conftest import wait_for


@pytest.fixture
def short_lock(monkeypatch, redis_server):
    monkeypatch.setattr(reconcile, "LOCK_TIMEOUT_SECONDS", 1)
    return redis_server


def test_lock_is_renewed_by_its_keep_alive_thread_while_held(short_lock):
    name = "serving-ui:test:reconcile-lock"
    short_lock.delete(name)
    with reconcile._held(name) as held:
        assert held
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
