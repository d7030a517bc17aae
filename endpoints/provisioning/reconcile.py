"""The reconcile loop's entry points: make what runs match what users asked for, one
endpoint (``reconcile_endpoint``) or all (``reconcile_all``), and stop every replica at
shutdown. One worker reconciles an endpoint at a time (a ``lease`` on a Redis lock); a
trigger that finds it taken marks the endpoint dirty, and the holder runs one more pass,
so no change is missed. A pass (``converge``) starts replicas and returns; follow-up passes
probe them (docs/provisioning.md, "When it runs", "Guarantees and how they are kept").
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, suppress

from django.db.models import Q
from redis.exceptions import RedisError

from endpoints import kv, triggers
from endpoints.kv import bump_generation, redis_client
from endpoints.models import Replica, ReplicaState, ServingEndpoint
from endpoints.runtime import get_runtime
from endpoints.telemetry import metrics

from . import environments, lease, replicas
from .converge import run_pass
from .housekeeping import (
    collect_orphans,
    rotate_logs,
    stop_zygotes,
    warm_registry,
    warm_zygotes,
)
from .lease import Lease, LeaseExpired
from .observe import NOT_STOPPED
from .plan_serving import choose_alias

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 20
# A burst of triggers while a pass runs costs one extra pass, not one per trigger.
MAX_PASSES_PER_CALL = 5


def _held(name: str) -> AbstractContextManager[Lease | None]:
    """A Redis lock that stays held while its holder works and expires soon after the
    holder dies (a worker killed mid-pass blocks its endpoint for seconds, not minutes);
    None when another worker holds it. Its holder checks the lease before each step."""
    return lease.held(redis_client(), name, LOCK_TIMEOUT_SECONDS)


def reconcile_endpoint(pk: int, *, triggered: bool = True) -> None:
    """Converge one endpoint. Safe to call any number of times, from any worker."""
    client = redis_client()
    follow_up: float | None = None
    with _held(kv.reconcile_lock_key(pk)) as held:
        if held is None:
            if triggered:
                client.set(kv.reconcile_dirty_key(pk), "1", ex=3600)
            return
        try:
            for _ in range(MAX_PASSES_PER_CALL):
                client.delete(kv.reconcile_dirty_key(pk))
                follow_up = _timed_pass(pk, held)
                if not client.exists(kv.reconcile_dirty_key(pk)):
                    break
        except LeaseExpired as exc:
            # Stopped between two steps, as a killed worker would; the next pass goes on.
            log.warning("reconcile: endpoint %s stopped mid-pass: %s", pk, exc)
            return
    if follow_up is not None:
        _schedule_follow_up(pk, follow_up)


def _timed_pass(pk: int, held: Lease) -> float | None:
    """One pass, its duration and outcome recorded for /metrics."""
    started = time.perf_counter()
    failed = True
    try:
        follow_up = run_pass(pk, fence=held.check)
        failed = False
        return follow_up
    finally:
        with suppress(RedisError):
            metrics.record_reconcile_pass(time.perf_counter() - started, failed=failed)


def reconcile_all() -> None:
    """The periodic pass: every endpoint that is enabled or still has something running."""
    with _held(kv.RECONCILE_ALL_LOCK_KEY) as held:
        if held is None:
            return  # the previous periodic pass is still running
        try:
            _reconcile_all(held)
        except LeaseExpired as exc:
            log.warning("reconcile: the periodic pass stopped: %s", exc)


def _reconcile_all(held: Lease) -> None:
    """Every endpoint in turn, then orphans and logs; stops when the lease may be lost."""
    runtime = get_runtime()
    # First, and without waiting: a replica started below finds its zygote warming.
    warm_zygotes(runtime)
    warm_registry()
    pks = (
        ServingEndpoint.objects.filter(
            Q(enabled=True)
            | Q(versions__replicas__state__in=NOT_STOPPED)
            | Q(aliases__isnull=False)
        )
        .values_list("pk", flat=True)
        .distinct()
    )
    for pk in list(pks):
        held.check()
        try:
            reconcile_endpoint(pk, triggered=False)
        except Exception:  # one broken endpoint must not stop the others
            log.exception("reconcile: endpoint %s failed", pk)
    held.check()
    collect_orphans(runtime)
    held.check()
    rotate_logs(runtime)


def stop_all_replicas() -> int:
    """Stop every replica of this installation, and the zygotes that fork them (the
    product is shutting down).

    Desired state is untouched: the next start brings the replicas back."""
    runtime = get_runtime()
    stopped = 0
    for replica in Replica.objects.filter(state__in=NOT_STOPPED):
        if replica.pid:
            runtime.stop(replica.pid, replica.replica_id, grace_seconds=10)
        replicas.set_state(replica, ReplicaState.TERMINATED, "Stopped with the product.")
        stopped += 1
    for replica_id, pid in runtime.discover(within=str(environments.data_dir())).items():
        runtime.stop(pid, replica_id, grace_seconds=5)
        stopped += 1
    stop_zygotes(runtime)
    with suppress(RedisError):
        bump_generation()
    return stopped


def _schedule_follow_up(pk: int, seconds: float) -> None:
    try:
        # One follow-up at a time per endpoint.
        # (redis-py takes whole seconds for ex: the expiry is in milliseconds.)
        expiry_ms = max(1, int(seconds * 1000))
        if redis_client().set(kv.follow_up_key(pk), "1", nx=True, px=expiry_ms):
            triggers.reconcile_soon(pk, countdown=seconds)
    except RedisError as exc:  # the periodic pass gets there anyway
        log.warning("reconcile: could not schedule a follow-up for %s: %s", pk, exc)


__all__ = [
    "choose_alias",
    "collect_orphans",
    "reconcile_all",
    "reconcile_endpoint",
    "stop_all_replicas",
]
