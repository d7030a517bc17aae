"""What the scoring gateway knows from the database: routes, tokens and permissions.

Each gateway process keeps one ``Snapshot`` in memory: the routing table (which replicas
answer a model's stage or version URL) plus caches of token and permission look-ups. It
is replaced when the cache *generation* in Redis changes (services and the reconcile loop
bump it on every change of routing, tokens or permissions). Redis pushes the change to
each process (``GenerationWatcher``), so a request costs no SQL and, unless something
changed, no round trip to Redis either; without pushes it costs one GET (``watcher``).

A snapshot older than ``MAX_AGE_SECONDS`` is rebuilt as well. While Redis does not answer
(so nobody can tell whether anything changed), a snapshot is trusted for at most
``UNCONFIRMED_MAX_AGE_SECONDS`` (one second) and then rebuilt from the database, by the
next request or the process's flusher, whichever comes first; the first snapshot once
Redis answers again is rebuilt too. A revoked token or a removed grant therefore stops
working within a second whatever state Redis is in.
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
from endpoints.errors import NotFound, Unavailable
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    StageAlias,
    unexpired,
)
from endpoints.targets import is_alias, version_targets

from .capture import rate_expression
from .split import Split, build_splits, load_splits
from .watcher import REDIS_RETRY_SECONDS, GenerationWatcher

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_AGE_SECONDS = 5.0
# While Redis cannot tell whether anything changed, a snapshot is rebuilt from the database
# when it is older than this: a revoked token or a removed grant stops working within it.
UNCONFIRMED_MAX_AGE_SECONDS = 1.0
# Bounds the per-snapshot token cache (unknown tokens are cached too, see ``user_for``).
MAX_CACHED_TOKENS = 10_000

Address = tuple[str, int]

_STAGE_NAMES = {"production": "Production", "staging": "Staging"}


@dataclass(frozen=True)
class Target:
    """One endpoint version as the gateway routes to it."""

    version_pk: int
    endpoint_pk: int
    model_name: str
    version: str
    service_state: str
    service_message: str
    # READY, or what a stage alias points at: requests wait for a replica rather than fail.
    routable: bool
    scale_to_zero: bool
    replicas: tuple[Address, ...]


@dataclass(frozen=True)
class EndpointRoutes:
    endpoint: ServingEndpoint  # only pk, name, creator_id and capture_rate are loaded
    versions: dict[str, Target]
    stages: dict[str, Target]
    # Stages whose versions are still being deployed (no alias yet): 503, not 404.
    deploying_stages: frozenset[str]
    splits: dict[str, Split] = field(default_factory=dict)  # by target: weighted versions


@dataclass(frozen=True)
class RoutingTable:
    endpoints: dict[str, EndpointRoutes]

    def endpoint(self, name: str) -> EndpointRoutes:
        routes = self.endpoints.get(name)
        if routes is None:
            raise NotFound(f"Serving is not enabled for registered model '{name}'.")
        return routes

    def resolve(self, name: str, selector: str) -> Target:
        """The version a ``<name>/<stage|@alias|version>`` URL answers with (by weight for
        a split target). Raises NotFound for an unknown model, target or version,
        Unavailable for a known one that cannot answer yet."""
        routes = self.endpoint(name)
        stage = _STAGE_NAMES.get(selector.lower()) or (selector if is_alias(selector) else None)
        if stage is not None:
            return _resolve_stage(routes, name, stage)
        target = routes.versions.get(selector)
        if target is None:
            raise NotFound(f"Model '{name}' has no served version or stage '{selector}'.")
        if not target.routable and not target.replicas:
            raise Unavailable(_not_ready_message(target))
        return target

    def lookup(self, target: Target) -> Target | None:
        """``target`` as this table has it (None when its endpoint or version is gone)."""
        routes = self.endpoints.get(target.model_name)
        return routes.versions.get(target.version) if routes else None

    def addresses(self) -> set[Address]:
        return {
            address
            for routes in self.endpoints.values()
            for target in routes.versions.values()
            for address in target.replicas
        }


def _resolve_stage(routes: EndpointRoutes, name: str, stage: str) -> Target:
    split = routes.splits.get(stage)
    if split is not None:
        return split.pick()
    target = routes.stages.get(stage)
    if target is not None:
        return target
    if stage in routes.deploying_stages:
        raise Unavailable(f"No version of model '{name}' in {stage} is ready yet.")
    raise NotFound(f"Model '{name}' has no version served in {stage}.")


def _not_ready_message(target: Target) -> str:
    detail = f": {target.service_message}" if target.service_message else ""
    if target.service_state == ServiceState.FAILED:
        return f"Version {target.version} of model '{target.model_name}' failed{detail}"
    return f"Version {target.version} of model '{target.model_name}' is not ready yet{detail}"


# --- building the table ----------------------------------------------------------------------


def build_table() -> RoutingTable:
    """Read the routing table from the database (six queries)."""
    endpoints = {
        e.pk: e
        for e in ServingEndpoint.objects.filter(enabled=True)
        .only("pk", "registered_model_name", "creator_id")
        .annotate(capture_rate=rate_expression())
    }
    versions = list(
        EndpointVersion.objects.filter(endpoint_id__in=endpoints).select_related("service_config")
    )
    alias_rows = StageAlias.objects.filter(endpoint_id__in=endpoints).values_list(
        "version_id", "stage"
    )
    by_version_alias: dict[int, list[str]] = {}
    for version_pk, stage in alias_rows:
        by_version_alias.setdefault(version_pk, []).append(stage)
    replicas: dict[int, list[Address]] = {}
    replica_rows = Replica.objects.filter(
        state=ReplicaState.RUNNING, version__endpoint_id__in=endpoints
    ).values_list("version_id", "host", "port")
    for version_pk, host, port in replica_rows:
        replicas.setdefault(version_pk, []).append((host, port))
    stage_configs = _current_stage_configs(endpoints)
    splits = load_splits(endpoints)

    table: dict[str, EndpointRoutes] = {}
    for endpoint in endpoints.values():
        own = [v for v in versions if v.endpoint_id == endpoint.pk]
        routes = _endpoint_routes(endpoint, own, by_version_alias, replicas, stage_configs)
        routes.splits.update(build_splits(splits.get(endpoint.pk, {}), routes.versions))
        table[endpoint.registered_model_name] = routes
    return RoutingTable(endpoints=table)


def _current_stage_configs(endpoints: dict[int, ServingEndpoint]) -> dict[tuple[int, str], bool]:
    """{(endpoint pk, stage): scale_to_zero_enabled} of each stage's newest config."""
    newest: dict[tuple[int, str], bool] = {}
    rows = (
        ComputeConfig.objects.filter(endpoint_id__in=endpoints)
        .order_by("creation_timestamp", "pk")
        .values_list("endpoint_id", "stage", "scale_to_zero_enabled")
    )
    for endpoint_pk, stage, scale_to_zero in rows:
        newest[(endpoint_pk, stage)] = scale_to_zero
    return newest


def _endpoint_routes(
    endpoint: ServingEndpoint,
    versions: list[EndpointVersion],
    aliases: dict[int, list[str]],
    replicas: dict[int, list[Address]],
    stage_configs: dict[tuple[int, str], bool],
) -> EndpointRoutes:
    by_version: dict[str, Target] = {}
    stages: dict[str, Target] = {}
    deploying: set[str] = set()
    for version in versions:
        stage_aliases = aliases.get(version.pk, [])
        target = Target(
            version_pk=version.pk,
            endpoint_pk=endpoint.pk,
            model_name=endpoint.registered_model_name,
            version=version.version,
            service_state=version.service_state,
            service_message=version.service_message,
            routable=version.service_state == ServiceState.READY or bool(stage_aliases),
            scale_to_zero=_scales_to_zero(version, stage_aliases, stage_configs),
            replicas=tuple(sorted(replicas.get(version.pk, []))),
        )
        by_version[version.version] = target
        for stage in stage_aliases:
            stages[stage] = target
        if version.desired:
            deploying.update(version_targets(version.registry_stage, version.registry_aliases))
    return EndpointRoutes(
        endpoint=endpoint,
        versions=by_version,
        stages=stages,
        deploying_stages=frozenset(deploying),
    )


def _scales_to_zero(
    version: EndpointVersion,
    stage_aliases: list[str],
    stage_configs: dict[tuple[int, str], bool],
) -> bool:
    if version.service_config is not None and version.service_config.scale_to_zero_enabled:
        return True
    stages = {*stage_aliases, *version_targets(version.registry_stage, version.registry_aliases)}
    return any(stage_configs.get((version.endpoint_id, stage), False) for stage in stages)


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
    (a Django view calling ``gateway.invoke``) keeps its connection."""
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
