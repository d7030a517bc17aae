"""Shared fixtures: users and tokens, and the real stack for integration tests.

The stack fixtures start real processes: ``redis-server``, a Celery worker (with beat) and
the web server (the front door) serving the product, all configured by the environment that
``serving_ui.settings_test`` exported, so they share this run's database and registry.
Integration tests that use them must use ``transactional_db`` (the worker writes too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from django.conf import settings

from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess, free_port
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    StageAlias,
)

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout``."""
    try:
        return devstack.wait_for(predicate, timeout=timeout, what=what, interval=interval)
    except devstack.WaitTimeout as exc:
        pytest.fail(str(exc))


def _until_up(
    process: ManagedProcess, predicate: Callable[[], T], *, timeout: float, what: str
) -> T:
    """Wait for ``process`` to be up; fail with its output if it exits or never comes up."""
    try:
        return process.wait_until(predicate, timeout=timeout, what=what)
    except devstack.StackError as exc:
        pytest.fail(f"{exc}\n{process.output()[-3000:]}")


# --- the test database ----------------------------------------------------------------------

# What makes pytest-django set up the test database for a test (its own rule).
_ASKS_FOR_DATABASE = {"db", "transactional_db", "live_server"}


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix() -> None:
    """No suffix on the test database's name per xdist worker: ``settings_test`` names each
    worker's database already, where the processes the worker starts read it too."""


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, request, django_db_blocker) -> Iterator[None]:
    """The test database, also when no test of the run asks for one: pytest-django creates
    only the databases the selected tests ask for, while the session's fixtures (the demo
    registry, the worker, the web server, the reliability suite's deployment) write through
    ``django_db_blocker`` whichever tests are selected (``pytest -k``, one module)."""
    if any(
        _ASKS_FOR_DATABASE.intersection(item.fixturenames) or item.get_closest_marker("django_db")
        for item in request.session.items
    ):
        yield
        return
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        teardown_databases(created, verbosity=0)


@pytest.fixture(scope="session")
def stack_log_dir() -> Path:
    path = Path(settings.VAR_DIR) / "stack-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def redis_server(stack_log_dir: Path) -> Iterator[redis.Redis]:
    """A real redis-server on this run's port (from REDIS_URL)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    data_dir = Path(settings.VAR_DIR) / "redis"
    try:
        server = devstack.start_redis(settings.REDIS_URL, data_dir, stack_log_dir, timeout=20)
    except devstack.StackError as exc:
        pytest.fail(f"{exc}\n{(stack_log_dir / 'redis.log').read_text(errors='replace')[-3000:]}")
    yield redis.Redis.from_url(settings.REDIS_URL)
    server.stop()


@pytest.fixture(scope="session")
def demo_registry(django_db_setup, django_db_blocker) -> None:
    """The demo models, registered once per run in this run's MLflow registry."""
    from django.core.management import call_command

    with django_db_blocker.unblock():
        call_command("seed_demo")


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup,
    redis_server,
    stack_log_dir: Path,
) -> Iterator[ManagedProcess]:
    """A real Celery worker with embedded beat (the periodic reconcile)."""
    worker = _start_worker(stack_log_dir)
    _WORKERS.append(worker)
    yield worker
    worker.stop()
    _stop_leftover_replicas()


def _start_worker(
    log_dir: Path, name: str = "worker", env: dict[str, str] | None = None, unset=()
) -> ManagedProcess:
    worker = ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "serving_ui",
            "worker",
            "-B",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            "--hostname",
            f"{name}-{os.getpid()}@%h",
            "--schedule",
            str(Path(settings.VAR_DIR) / f"{name}-beat-schedule"),
        ],
        log_dir,
        env,
        unset=unset,
    ).start()
    _until_up(worker, lambda: "ready" in worker.output(), timeout=60, what="celery worker")
    return worker


_WORKERS: list[ManagedProcess] = []


@pytest.fixture(scope="module")
def reconcile_paused() -> Iterator[None]:
    """Hold the session's worker (and its beat) still for a module whose tests write the
    rows the reconcile loop owns by hand: the loop would otherwise correct them. Tasks
    queued meanwhile run once it continues."""
    paused = pause_workers()
    yield
    for worker in paused:
        worker.send_signal(signal.SIGCONT)


def pause_workers() -> list[ManagedProcess]:
    """Stop (SIGSTOP) the session's workers at a moment none of them is inside a write:
    stopped inside one, a worker would keep the database locked until it continues. The
    caller continues (SIGCONT) the workers returned."""
    paused = [w for w in _WORKERS if w.alive]

    def stopped_between_writes() -> bool:
        for worker in paused:
            worker.send_signal(signal.SIGSTOP)
        if not _database_held():
            return True
        for worker in paused:
            worker.send_signal(signal.SIGCONT)
        return False

    if paused:
        wait_for(
            stopped_between_writes, timeout=60, what="the worker between writes", interval=0.05
        )
    return paused


def _database_held() -> bool:
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


@pytest.fixture
def restartable_worker(celery_worker_process: ManagedProcess, stack_log_dir: Path):
    """Start a new worker after a test killed the session's one."""

    def restart() -> ManagedProcess:
        celery_worker_process.kill()
        fresh = _start_worker(stack_log_dir)
        celery_worker_process.process = fresh.process
        return celery_worker_process

    return restart


def _stop_leftover_replicas() -> None:
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
        runtime.release_all_groups()  # the cgroups this run's replicas left


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
    _until_up(server, lambda: devstack.http_status(base + "/login/") == 200, timeout=60, what=name)
    WEB_SERVERS[base] = server
    yield base
    server.stop()
    del WEB_SERVERS[base]


# The web servers running, by base URL.
WEB_SERVERS: dict[str, ManagedProcess] = {}


@pytest.fixture(scope="session")
def web_server(django_db_setup, redis_server, stack_log_dir: Path) -> Iterator[str]:
    """The product's web server, as `make run` serves it. Yields its base URL."""
    yield from serve_product("web", stack_log_dir)


@pytest.fixture
def stack(transactional_db, demo_registry, celery_worker_process, web_server) -> str:
    """Everything running: registry with demo models, Redis, worker + beat, web server."""
    yield web_server
    _disable_all_endpoints()


def _disable_all_endpoints() -> None:
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


@pytest.fixture
def model_name(tmp_path: Path) -> Iterator[str]:
    """A registered model with v1 in Production and v2 in Staging (empty artifacts: for
    tests that never serve it), deleted afterwards."""
    import warnings

    from endpoints import registry

    (Path(settings.VAR_DIR) / "mlflow").mkdir(parents=True, exist_ok=True)
    name = f"model-{uuid.uuid4().hex[:8]}"
    client = registry.client()
    client.create_registered_model(name)
    for stage in ("Production", "Staging"):
        version = client.create_model_version(name, source=str(tmp_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, version.version, stage)
    yield name
    client.delete_registered_model(name)


# --- rows the gateway routes by ---------------------------------------------------------------


def add_version(
    endpoint: ServingEndpoint,
    version: str,
    stage: str,
    *,
    state: str = ServiceState.READY,
    replicas: Iterable[tuple[str, int]] = (),
    **fields: object,
) -> EndpointVersion:
    """Version ``version`` of ``endpoint`` in ``stage``, as the reconcile loop leaves it:
    served with the stage's newest compute config (a default one if the stage has none), a
    RUNNING replica at each of ``replicas`` and, once READY, the stage's alias on it.
    ``fields`` set other columns of the version."""
    config = endpoint.current_compute_config(stage) or ComputeConfig.objects.create(
        endpoint=endpoint, stage=stage
    )
    ready = state == ServiceState.READY
    row = EndpointVersion.objects.create(
        endpoint=endpoint,
        version=version,
        registry_stage=stage,
        service_state=state,
        service_config=config,
        **{"service_message": "Ready" if ready else "Starting", **fields},
    )
    if ready:
        StageAlias.objects.update_or_create(
            endpoint=endpoint, stage=stage, defaults={"version": row}
        )
    for address in replicas:
        add_replica(row, address)
    return row


def add_replica(version: EndpointVersion, address: tuple[str, int], **fields: object) -> Replica:
    """A RUNNING replica of ``version`` at ``address`` (``fields`` set other columns)."""
    host, port = address
    return Replica.objects.create(
        version=version,
        replica_id=f"r-{uuid.uuid4().hex[:8]}",
        host=host,
        port=port,
        **{"state": ReplicaState.RUNNING, **fields},
    )


# --- users and tokens ------------------------------------------------------------------------


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def owner(django_user_model):
    """A data scientist who may create endpoints (and so manages the ones they create)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")
    user.user_permissions.add(Permission.objects.get(codename="add_servingendpoint"))
    return user


@pytest.fixture
def member(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-123")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("eve", "eve@example.com", "pw-eve-123")


@pytest.fixture
def make_token():
    """``make_token(user) -> plaintext``."""
    from endpoints import services

    def make(user, **kwargs) -> str:
        return services.token_create(user=user, **kwargs)[1]

    return make


@pytest.fixture
def as_user(make_token):
    """``as_user(user) -> APIClient`` that authenticates with a new token of ``user``."""
    from rest_framework.test import APIClient

    def client(user) -> APIClient:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(user)}")
        return api

    return client


def assert_error(response, status: int, code: str) -> dict:
    """``response`` is the API's error body, ``{"error_code", "message"}``, with ``status``."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    return body


# --- browser tests: Debian's chromium through Playwright ------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """One chromium per module (a fresh context per test: see ``page``)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    # Playwright's sync API runs an event loop in this thread; the database calls of the
    # fixtures around it are still plain synchronous ones.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser):
    """A fresh browser context (cookies, storage) and page per test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()
