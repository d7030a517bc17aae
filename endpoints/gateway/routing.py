"""The per-process snapshot the gateway reads instead of the database: the routing table
(``routing_table``) with the token and permission look-ups made since it was built. It is
replaced when the cache generation in Redis moves (pushed: ``watcher``), after
``MAX_AGE_SECONDS``, and, while Redis does not answer, after ``UNCONFIRMED_MAX_AGE_SECONDS``:
a revoked token stops working within a second whatever Redis does (docs/security.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connections

from endpoints import kv
from endpoints.auth import active_tokens, hash_token, level_allows, permission_level
from endpoints.errors import Unavailable
from endpoints.models import unexpired

from .routing_table import EndpointRoutes, RoutingTable, build_table
from .watcher import REDIS_RETRY_SECONDS, GenerationWatcher

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_AGE_SECONDS = 5.0
# While Redis cannot tell whether anything changed, a snapshot is rebuilt from the database
# when it is older than this: a revoked token or a removed grant stops working within it.
UNCONFIRMED_MAX_AGE_SECONDS = 1.0
# Bounds the per-snapshot token cache (unknown tokens are cached too, see ``user_for``).
MAX_CACHED_TOKENS = 10_000


# --- tokens and permissions -----------------------------------------------------------------


@dataclass(frozen=True)
class CachedToken:
    token_pk: int
    user: AbstractBaseUser
    expires_at: datetime | None

    def usable(self) -> bool:
        return unexpired(self.expires_at)


def _load_token(digest: str) -> CachedToken | None:
    token = active_tokens(digest).only("pk", "expires_at", "user").first()
    if token is None:
        return None
    return CachedToken(token_pk=token.pk, user=token.user, expires_at=token.expires_at)


@dataclass
class Snapshot:
    """A routing table with the token and permission look-ups made since it was built.

    The caches only grow for one generation; a new snapshot starts them empty, which is
    how a revoked token or a removed permission stops working at once."""

    table: RoutingTable
    generation: int
    built_at: float
    # The watcher's change count when the snapshot was built (-1: unknown).
    changes: int = -1
    # Built while Redis could not be asked: it is rebuilt once Redis answers again (a
    # change made meanwhile may have bumped nothing) and after UNCONFIRMED_MAX_AGE_SECONDS.
    unconfirmed: bool = False
    _tokens: dict[str, CachedToken | None] = field(default_factory=dict)
    _permissions: dict[tuple[int, int], str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def user_for(self, raw_token: str) -> CachedToken | None:
        """The active token for a plaintext token, or None (unknown, revoked, expired).

        Unknown tokens are cached too: a token cannot be used before it exists, and
        creating one yields a hash nobody has tried, so a cached miss never hides a new
        token while it keeps a client that retries a wrong token from costing SQL."""
        digest = hash_token(raw_token)
        try:
            cached = self._tokens[digest]
        except KeyError:
            cached = run_db(_load_token, digest)
            with self._lock:
                if len(self._tokens) >= MAX_CACHED_TOKENS:
                    self._tokens.clear()
                self._tokens[digest] = cached
        if cached is None or not cached.usable():
            return None
        return cached

    def permission(self, user: AbstractBaseUser, routes: EndpointRoutes) -> str | None:
        key = (user.pk, routes.endpoint.pk)
        try:
            return self._permissions[key]
        except KeyError:
            level = run_db(permission_level, user, routes.endpoint)
            with self._lock:
                self._permissions[key] = level
            return level

    def may(self, user: AbstractBaseUser, routes: EndpointRoutes, level: str) -> bool:
        return level_allows(self.permission(user, routes), level)

    def needs_db(self, raw_token: str | None, name: str) -> bool:
        """Whether authenticating ``raw_token`` for model ``name`` would query the
        database (a token or permission not cached yet): the event loop then does it in a
        thread instead of blocking."""
        if raw_token is None:
            return False
        cached = self._tokens.get(hash_token(raw_token), _MISSING)
        if cached is _MISSING:
            return True
        if cached is None or not cached.usable():
            return False
        routes = self.table.endpoints.get(name)
        return routes is not None and (cached.user.pk, routes.endpoint.pk) not in self._permissions


_MISSING = object()


def run_db(fn: Callable[..., T], *args: Any) -> T:
    """Run database work from a gateway thread and close the thread's connection after.

    The gateway's raw WSGI path never sends Django's request_finished signal, so nothing
    else would close connections that worker threads open. A caller inside a transaction
    (a Django view calling ``scoring.invoke``) keeps its connection."""
    try:
        return fn(*args)
    finally:
        for conn in connections.all(initialized_only=True):
            if not conn.in_atomic_block:
                conn.close()


# --- the per-process cache --------------------------------------------------------------------


class RoutingCache:
    """The current snapshot of one gateway process, replaced when the generation moves."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._build_lock = threading.Lock()
        self._changed = threading.Condition()
        self._redis_failed_at = -REDIS_RETRY_SECONDS
        self.watcher = GenerationWatcher()

    def current(self) -> Snapshot:
        """The snapshot for this request.

        Usually one poll for an invalidation push; a Redis GET of the generation when a
        push arrived (or none can arrive); a rebuild only when the generation moved."""
        snapshot = self._snapshot
        # Read before the generation: a change after this point is seen next time.
        changes = self.watcher.poll()
        if snapshot is not None and changes is not None and snapshot.changes == changes:
            return snapshot
        generation = self._generation()
        if snapshot is not None and generation is None:
            # Redis is away: nobody can say whether tokens or grants changed, so serve
            # from memory for at most UNCONFIRMED_MAX_AGE_SECONDS, then re-read them.
            if time.monotonic() - snapshot.built_at <= UNCONFIRMED_MAX_AGE_SECONDS:
                return snapshot
            return self._rebuild(snapshot.generation, None, force=True, unconfirmed=True)
        if snapshot is None or snapshot.generation != generation or snapshot.unconfirmed:
            return self._rebuild(
                generation or 0,
                changes,
                force=snapshot is not None and snapshot.unconfirmed,
                unconfirmed=generation is None,
            )
        if changes is not None:
            snapshot.changes = changes
        return snapshot

    def peek(self) -> Snapshot | None:
        """The snapshot when it is known to be current without a round trip (one poll of
        the invalidation socket), else None: ``current`` would then ask Redis or rebuild,
        which the event loop runs in a thread."""
        snapshot = self._snapshot
        changes = self.watcher.poll()
        if snapshot is not None and changes is not None and snapshot.changes == changes:
            return snapshot
        return None

    @property
    def latest(self) -> Snapshot | None:
        """The snapshot as it is, without checking that it is current."""
        return self._snapshot

    def refresh_if_old(self) -> None:
        """Rebuild a snapshot older than MAX_AGE_SECONDS, or UNCONFIRMED_MAX_AGE_SECONDS
        while Redis does not answer (run once a second by the flusher, so an idle
        process's caches do not wait for the next request either)."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        age = time.monotonic() - snapshot.built_at
        if age <= UNCONFIRMED_MAX_AGE_SECONDS:
            return
        changes = self.watcher.poll()
        generation = self._generation()
        if generation is None or age > MAX_AGE_SECONDS:
            self._rebuild(
                generation if generation is not None else snapshot.generation,
                changes,
                force=True,
                unconfirmed=generation is None,
            )

    def wait_for_change(self, timeout: float) -> Snapshot:
        """Wait up to ``timeout`` for another thread's rebuild, then return a fresh snapshot."""
        with self._changed:
            self._changed.wait(timeout)
        return self.current()

    def _generation(self) -> int | None:
        if time.monotonic() - self._redis_failed_at < REDIS_RETRY_SECONDS:
            return None
        try:
            return kv.current_generation()
        except Exception as exc:  # any Redis failure: serve from memory
            self._redis_failed_at = time.monotonic()
            log.warning("gateway: cache generation unavailable (%s); using routing in memory", exc)
            return None

    def _rebuild(
        self,
        generation: int,
        changes: int | None,
        *,
        force: bool = False,
        unconfirmed: bool = False,
    ) -> Snapshot:
        started = time.monotonic()
        with self._build_lock:
            snapshot = self._snapshot
            if snapshot is not None and (
                snapshot.built_at >= started
                or (not force and not snapshot.unconfirmed and snapshot.generation == generation)
            ):
                return snapshot  # another thread rebuilt it while this one waited
            try:
                table = run_db(build_table)
            except DatabaseError as exc:
                # Neither Redis nor the database can say who may do what: refuse (503)
                # rather than answer from a memory nobody can vouch for.
                log.warning("gateway: routing table unavailable (%s)", exc)
                raise Unavailable("Serving cannot check tokens and routes right now.") from exc
            fresh = Snapshot(
                table=table,
                generation=generation,
                built_at=started,
                changes=-1 if changes is None else changes,
                unconfirmed=unconfirmed,
            )
            self._snapshot = fresh
        with self._changed:
            self._changed.notify_all()
        return fresh
