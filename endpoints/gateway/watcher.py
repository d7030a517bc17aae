"""How a gateway process learns that the cache generation moved, without asking Redis
on every request (client-side tracking pushes; see ``endpoints.kv``)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis
from django.conf import settings

from endpoints import kv

log = logging.getLogger(__name__)

# After Redis failed to answer, it is not asked again for this long, so an outage costs
# one failed call per interval instead of one per request.
REDIS_RETRY_SECONDS = 1.0


class GenerationWatcher:
    """Learns that the generation moved without a round trip to Redis per request.

    One RESP3 connection per process has CLIENT TRACKING on, in broadcast mode for the
    generation key: when anyone changes the key, Redis pushes an invalidation onto this
    connection before it answers the command that changed it. So once ``bump_generation``
    has returned, every gateway process sees the push on its next check, and a check is a
    poll of one socket (a few microseconds, against tens for a GET). Without tracking
    (Redis older than 6, a failure) ``poll`` returns None and callers ask for the
    generation on every request instead."""

    def __init__(self) -> None:
        self._conn: redis.connection.AbstractConnection | None = None
        self._lock = threading.Lock()
        self._failed_at = -REDIS_RETRY_SECONDS
        # Grows by one for each batch of invalidations (and each new connection, which
        # may have missed some): a snapshot is current while it has seen them all.
        self.changes = 0

    def poll(self) -> int | None:
        with self._lock:
            if self._conn is None and not self._connect():
                return None
            try:
                if not self._conn.is_connected:
                    # can_read would reconnect, without tracking: never let it.
                    raise redis.ConnectionError("disconnected")
                if self._conn.can_read(timeout=0):
                    while self._conn.can_read(timeout=0):
                        self._conn.read_response(push_request=True)
                    self.changes += 1
            except (redis.RedisError, OSError) as exc:
                log.warning("gateway: invalidation connection lost (%s)", exc)
                self._drop()
                return None
            return self.changes

    def _connect(self) -> bool:
        if time.monotonic() - self._failed_at < REDIS_RETRY_SECONDS:
            return False
        try:
            pool = redis.ConnectionPool.from_url(
                settings.REDIS_URL, protocol=3, socket_timeout=2, socket_connect_timeout=2
            )
            conn = pool.make_connection()
            conn.connect()
            conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", kv.GENERATION_KEY)
            if conn.read_response() not in (b"OK", "OK"):
                raise redis.RedisError("CLIENT TRACKING was refused")
        except (redis.RedisError, OSError) as exc:
            self._failed_at = time.monotonic()
            log.info("gateway: no invalidation pushes (%s); asking Redis per request", exc)
            return False
        self._conn = conn
        self.changes += 1
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
        self._conn = None
        self._failed_at = time.monotonic()
