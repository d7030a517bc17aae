"""Whether this installation can do its work: the checks behind the front door's
``/readyz``, and the heartbeat every Celery worker keeps in Redis for them.

``/readyz`` is ready when the database answers, Redis answers and at least one Celery
worker beat within ``HEARTBEAT_TTL_SECONDS`` (without a worker nothing is provisioned,
scaled or woken from zero). Each check is bounded by short timeouts, so a check never
hangs a load balancer's probe.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

from endpoints import kv

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
# A worker whose last heartbeat is older than this is gone (killed, frozen or cut off).
HEARTBEAT_TTL_SECONDS = 15.0
# Heartbeats of workers gone for this long are dropped from the set.
FORGET_AFTER_SECONDS = 3600.0


# --- the worker's side ----------------------------------------------------------------------


def beat(worker: str, *, at: float | None = None) -> None:
    now = time.time() if at is None else at
    pipe = kv.redis_client().pipeline(transaction=False)
    pipe.zadd(kv.WORKER_HEARTBEATS_KEY, {worker: now})
    pipe.zremrangebyscore(kv.WORKER_HEARTBEATS_KEY, 0, now - FORGET_AFTER_SECONDS)
    pipe.execute()


def forget(worker: str) -> None:
    kv.redis_client().zrem(kv.WORKER_HEARTBEATS_KEY, worker)


class Heartbeat:
    """A thread in the worker's main process that beats every ``HEARTBEAT_SECONDS``."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and say so at once: readiness need not wait for the beat to age."""
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_SECONDS)
        try:
            forget(self.worker)
        except Exception as exc:  # Redis away: the heartbeat ages out instead
            log.warning("worker heartbeat: could not remove %s: %s", self.worker, exc)

    def _run(self) -> None:
        while True:
            try:
                beat(self.worker)
            except Exception as exc:  # Redis away for a moment: beat again next time
                log.warning("worker heartbeat failed: %s", exc)
            if self._stop.wait(HEARTBEAT_SECONDS):
                return


# --- the checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(check["ok"] for check in self.checks.values())

    def as_json(self) -> dict[str, Any]:
        failed = [name for name, check in self.checks.items() if not check["ok"]]
        return {"status": "ready" if not failed else "unavailable", "failed": failed, **self.checks}


def check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"The database does not answer: {exc}"}
    finally:
        # Probes come from threads the web server reuses: never keep a connection open.
        if not connection.in_atomic_block:
            connection.close()


def check_redis() -> dict[str, Any]:
    try:
        kv.probe_client().ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"Redis does not answer: {exc}"}


def check_worker(*, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    try:
        live = kv.probe_client().zcount(
            kv.WORKER_HEARTBEATS_KEY, now - HEARTBEAT_TTL_SECONDS, "+inf"
        )
    except Exception as exc:
        return {"ok": False, "error": f"Worker heartbeats cannot be read (Redis): {exc}"}
    if not live:
        return {
            "ok": False,
            "error": f"No Celery worker has sent a heartbeat in the last "
            f"{HEARTBEAT_TTL_SECONDS:g} seconds.",
        }
    return {"ok": True, "workers": int(live)}


def readiness() -> Readiness:
    return Readiness(
        {"database": check_database(), "redis": check_redis(), "worker": check_worker()}
    )
