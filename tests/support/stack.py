"""The product's processes for tests on the real stack: waiting for a condition, starting
a Celery worker (with beat) or the web server as `make run` does, holding the session's
workers still between two writes, and leaving no replica or endpoint behind.

Every process is configured by the environment ``serving_ui.settings_test`` exported, so it
shares this run's database, Redis and registry. The fixtures in ``tests/conftest.py`` start
the session's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from django.conf import settings

from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess, free_port
from endpoints.models import Replica, ReplicaState, ServingEndpoint

T = TypeVar("T")

# The session's workers (``pause_workers`` holds them still) and the web servers running,
# by base URL.
WORKERS: list[ManagedProcess] = []
WEB_SERVERS: dict[str, ManagedProcess] = {}


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout``."""
    try:
        return devstack.wait_for(predicate, timeout=timeout, what=what, interval=interval)
    except devstack.WaitTimeout as exc:
        pytest.fail(str(exc))


def until_up(
    process: ManagedProcess, predicate: Callable[[], T], *, timeout: float, what: str
) -> T:
    """Wait for ``process`` to be up; fail with its output if it exits or never comes up."""
    try:
        return process.wait_until(predicate, timeout=timeout, what=what)
    except devstack.StackError as exc:
        pytest.fail(f"{exc}\n{process.output()[-3000:]}")


def start_worker(
    log_dir: Path,
    name: str = "worker",
    env: dict[str, str] | None = None,
    unset: Iterable[str] = (),
) -> ManagedProcess:
    """A real Celery worker with embedded beat (the periodic reconcile), once it is ready;
    ``env`` adds to this run's environment, ``unset`` removes from it."""
    worker = ManagedProcess(
        name,
        [
            *(sys.executable, "-m", "celery", "-A", "serving_ui", "worker", "-B"),
            *("--loglevel", "INFO", "--concurrency", "2"),
            *("--hostname", f"{name}-{os.getpid()}@%h"),
            *("--schedule", str(Path(settings.VAR_DIR) / f"{name}-beat-schedule")),
        ],
        log_dir,
        env,
        unset=unset,
    ).start()
    until_up(worker, lambda: "ready" in worker.output(), timeout=60, what="celery worker")
    return worker


def serve_product(
    name: str, log_dir: Path, *, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run the product's web server exactly as `make run` does (``env`` may change its
    settings), yield its base URL, stop it afterwards."""
    from endpoints.management.commands.run_product import web_command

    port = free_port()
    server = ManagedProcess(
        name, web_command(host="127.0.0.1", port=port, processes=workers), log_dir, env=env
    ).start()
    base = f"http://127.0.0.1:{port}"
    until_up(server, lambda: devstack.http_status(base + "/login/") == 200, timeout=60, what=name)
    WEB_SERVERS[base] = server
    yield base
    server.stop()
    del WEB_SERVERS[base]


def pause_workers() -> list[ManagedProcess]:
    """Stop (SIGSTOP) the session's workers at a moment none of them is inside a write:
    stopped inside one, a worker would keep the database locked until it continues. The
    caller continues (SIGCONT) the workers returned."""
    paused = [w for w in WORKERS if w.alive]

    def stopped_between_writes() -> bool:
        for worker in paused:
            worker.send_signal(signal.SIGSTOP)
        if not database_held():
            return True
        for worker in paused:
            worker.send_signal(signal.SIGCONT)
        return False

    if paused:
        wait_for(
            stopped_between_writes, timeout=60, what="the worker between writes", interval=0.05
        )
    return paused


def database_held() -> bool:
    """Whether another connection is inside a transaction on the test database: one that
    holds SQLite's write lock (or is checkpointing), or a PostgreSQL session left idle in a
    transaction, which keeps the rows it wrote locked."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        import sqlite3

        probe = sqlite3.connect(database["NAME"], timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
        return False
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as probe:
        [(held,)] = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        ).fetchall()
    return held > 0


def stop_leftover_replicas() -> None:
    """Stop this run's replica processes that are still running, and remove the cgroups
    its replicas left."""
    from endpoints.runtime import LocalRuntime, get_runtime

    runtime = get_runtime()
    for replica_id, pid in runtime.discover().items():
        # Only this run's replicas: their logs live under this run's data directory.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(settings.VAR_DIR) in cmdline:
            runtime.stop(pid, replica_id, grace_seconds=2)
    if isinstance(runtime, LocalRuntime):
        runtime.release_all_groups()


def disable_all_endpoints() -> None:
    """Leave no replica behind for the next test: disable and wait for the worker."""
    ServingEndpoint.objects.filter(enabled=True).update(enabled=False)
    from endpoints.tasks import reconcile_all

    reconcile_all.delay()
    live = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)
    # Best effort: a replica still stopping is the next test's worker's to finish.
    with contextlib.suppress(devstack.WaitTimeout):
        devstack.wait_for(
            lambda: not Replica.objects.filter(state__in=live).exists(),
            timeout=60,
            what="replicas to stop",
            interval=0.3,
        )
