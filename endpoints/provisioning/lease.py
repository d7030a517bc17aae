"""A Redis lock held while its holder works: renewed in the background, and valid on the
holder's own clock only for a while after each renewal Redis confirmed.

A holder that cannot reach Redis (frozen, partitioned) cannot renew, so the lock expires
there and another worker may take it; the holder must have stopped acting by then, on its
own. ``Lease.check`` raises once that time has come; callers check before each step that
changes something.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError

# Renewed every third of the timeout. After a renewal sent at t, Redis keeps the lock until
# t + timeout at the earliest; the holder stops acting at t + VALID_SHARE * timeout, so a
# step checked just before that has the rest (5 s of 20) to finish before another worker can
# take the lock. A renewal that fails once, or answers a few seconds late, costs nothing.
RENEW_SHARE = 1 / 3
VALID_SHARE = 3 / 4


class LeaseExpired(Exception):
    """The lock may have expired in Redis: its holder must not act any more."""


class Lease:
    """A held Redis lock (``acquire`` first): ``check`` before each step that acts."""

    def __init__(self, client: redis.Redis, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        # thread_local=False: the keep-alive thread renews the token its holder acquired.
        self._lock = client.lock(name, timeout=timeout, thread_local=False)
        self._valid_until = 0.0  # on time.monotonic()
        self._lost = False
        self._done = threading.Event()
        self._keeper: threading.Thread | None = None
        self.renewals = 0

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another holder has it."""
        sent_at = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return False
        self._valid_until = sent_at + self.timeout * VALID_SHARE
        self._keeper = threading.Thread(
            target=self._keep_alive, name=f"lock:{self.name}", daemon=True
        )
        self._keeper.start()
        return True

    @property
    def lost(self) -> bool:
        """Redis said the lock is not this holder's any more (expired, perhaps taken)."""
        return self._lost

    def check(self) -> None:
        """Raise ``LeaseExpired`` when the lock may no longer be this holder's.

        A renewal Redis confirms after the deadline makes it valid again: the token was
        still there, so the lock never left this holder."""
        if self._lost:
            raise LeaseExpired(f"{self.name} was taken over or expired in Redis")
        if time.monotonic() >= self._valid_until:
            raise LeaseExpired(f"{self.name} was not renewed in time (Redis did not answer)")

    def release(self) -> None:
        self._done.set()
        if self._keeper is not None:
            self._keeper.join()
        with suppress(LockError, RedisError):
            self._lock.release()

    def _keep_alive(self) -> None:
        while not self._done.wait(self.timeout * RENEW_SHARE):
            sent_at = time.monotonic()
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                self._lost = True  # expired there, perhaps taken: never ours again
                return
            except (LockError, RedisError):
                continue  # not renewed: the deadline stays where it was
            self._valid_until = sent_at + self.timeout * VALID_SHARE
            self.renewals += 1


@contextmanager
def held(client: redis.Redis, name: str, timeout: float) -> Iterator[Lease | None]:
    """The lease on ``name`` while the block runs, or None when another holder has it."""
    lease = Lease(client, name, timeout)
    if not lease.acquire():
        yield None
        return
    try:
        yield lease
    finally:
        lease.release()
