"""Shared fixtures: the test database, users and tokens, the registry, and the real stack.

The stack fixtures start real processes: ``redis-server``, a Celery worker (with beat) and
the web server (the front door) serving the product, all configured by the environment that
``serving_ui.settings_test`` exported, so they share this run's database and registry.
Integration tests that use them must use ``transactional_db`` (the worker writes too).
Helpers live in ``tests/support``.
"""

from __future__ import annotations

import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess
from tests.support.stack import (
    WORKERS,
    disable_all_endpoints,
    pause_workers,
    serve_product,
    start_worker,
    stop_leftover_replicas,
)

# --- markers by folder ------------------------------------------------------------------------

# A test's folder says what it runs against, and so its markers (`-m`, the Makefile's
# phases): tests/unit/ starts no process; the other folders run against real processes.
# `serial` stays in the modules that must run alone.
FOLDER_MARKERS = {
    "integration": ("integration",),
    "reliability": ("reliability", "integration"),
    "browser": ("browser", "integration", "any_database"),
    "cluster": ("cluster", "integration"),
    "examples": ("examples", "any_database"),
}
# Fixtures that start (or need) the run's Redis, worker, web server, replicas or browser.
PROCESS_FIXTURES = {
    "redis_server",
    "celery_worker_process",
    "web_server",
    "stack",
    "restartable_worker",
    "reconcile_paused",
    "live",
    "ray_stack",
    "browser",
}
TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        for marker in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(marker)
        if folder == "unit" and (started := PROCESS_FIXTURES.intersection(item.fixturenames)):
            misplaced.append(f"{item.nodeid} ({', '.join(sorted(started))})")
    if misplaced:
        raise pytest.UsageError(
            "Unit tests start no process; move these to tests/integration/:\n  "
            + "\n  ".join(misplaced)
        )


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
    worker = start_worker(stack_log_dir)
    WORKERS.append(worker)
    yield worker
    worker.stop()
    stop_leftover_replicas()


@pytest.fixture(scope="module")
def reconcile_paused() -> Iterator[None]:
    """Hold the session's worker (and its beat) still for a module whose tests write the
    rows the reconcile loop owns by hand: the loop would otherwise correct them. Tasks
    queued meanwhile run once it continues."""
    paused = pause_workers()
    yield
    for worker in paused:
        worker.send_signal(signal.SIGCONT)


@pytest.fixture
def restartable_worker(celery_worker_process: ManagedProcess, stack_log_dir: Path):
    """Start a new worker after a test killed the session's one."""

    def restart() -> ManagedProcess:
        celery_worker_process.kill()
        fresh = start_worker(stack_log_dir)
        celery_worker_process.process = fresh.process
        return celery_worker_process

    return restart


@pytest.fixture(scope="session")
def web_server(django_db_setup, redis_server, stack_log_dir: Path) -> Iterator[str]:
    """The product's web server, as `make run` serves it. Yields its base URL."""
    yield from serve_product("web", stack_log_dir)


@pytest.fixture
def stack(transactional_db, demo_registry, celery_worker_process, web_server) -> str:
    """Everything running: registry with demo models, Redis, worker + beat, web server."""
    yield web_server
    disable_all_endpoints()


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
