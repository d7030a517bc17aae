"""What the benchmarks share: the isolated stack each one runs in (a temporary data
directory, its own Redis, SQLite database and MLflow registry), the product's processes
started there as ``make run`` starts them, and models served through the product."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess
from endpoints.management.commands.run_product import beat_command, web_command, worker_command

ISOLATED_ENV = "SERVING_BENCH_ISOLATED"
MODEL = "iris-classifier"
READY_TIMEOUT = 300.0
# Replica ports of an isolated stack: room for every replica a benchmark runs, and restarts.
REPLICA_PORTS = 50


def run_isolated(command: str, extra_env: dict[str, str] | None = None) -> None:
    """Run ``manage.py <command>`` again with settings that point at a fresh temporary
    stack: its own data directory, Redis port, SQLite database and MLflow registry. Only
    ports and paths differ from the product's defaults (and ``extra_env``)."""
    var = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    port = devstack.free_port()
    env = {
        **os.environ,
        ISOLATED_ENV: "1",
        "SERVING_VAR_DIR": str(var),
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
        "REDIS_URL": f"redis://127.0.0.1:{devstack.free_port()}/0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{var / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{var / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(var / "mlflow" / "artifacts"),
        "SERVING_REPLICA_PORT_MIN": str(port),
        "SERVING_REPLICA_PORT_MAX": str(port + REPLICA_PORTS),
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    (var / "mlflow").mkdir()
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", command, *sys.argv[2:]],
            cwd=settings.BASE_DIR,
            env=env,
            check=False,
        )
    finally:
        shutil.rmtree(var, ignore_errors=True)
    if result.returncode:
        raise CommandError(f"the benchmark failed (exit code {result.returncode})")


@contextmanager
def as_command_error() -> Iterator[None]:
    """The stack's errors as the management command's: a message and exit code 1."""
    try:
        yield
    except devstack.WaitTimeout as exc:
        raise CommandError(f"{exc.what} did not come up within {exc.timeout:.0f} s") from None
    except devstack.ProcessExited as exc:
        # Its log goes with the temporary stack: what it said last, here.
        tail = "\n".join(exc.process.output().splitlines()[-30:])
        raise CommandError(f"{exc}; its last output:\n{tail}") from None
    except devstack.StackError as exc:
        raise CommandError(str(exc)) from None


def wait(predicate: Callable[[], object], *, what: str, timeout: float = 60) -> None:
    with as_command_error():
        devstack.wait_for(predicate, timeout=timeout, what=what, interval=0.1)


def register_copy(name: str, stages: Sequence[str]) -> None:
    """Register ``name`` with one version per entry of ``stages``, in that stage, each
    made of the demo model's version 1 (the same artifacts: every path answers alike)."""
    from endpoints import registry

    source = registry.get_version(MODEL, "1")
    client = registry.client()
    client.create_registered_model(name)
    for stage in stages:
        version = client.create_model_version(
            name, source=source.source, run_id=source.run_id or None
        )
        registry.transition_stage(name, str(version.version), stage)


def serving_replica(name: str, target: str = "Production"):  # -> Replica
    """The running replica (the reconcile loop started it) of the version that ``name``'s
    ``target`` points at."""
    from endpoints.models import Replica, ReplicaState, StageAlias

    alias = StageAlias.objects.get(endpoint__registered_model_name=name, stage=target)
    return Replica.objects.filter(version=alias.version, state=ReplicaState.RUNNING).first()


class Bench:
    """A benchmark inside the isolated stack: Redis, the database and registry with the
    demo model, a superuser with a token, and the product's processes."""

    def __init__(self, stdout: IO[str], options: dict) -> None:
        self.out = stdout
        self.options = options
        self.var = Path(settings.VAR_DIR)
        self.processes: list[ManagedProcess] = []
        self.web_config = ""
        self.prepared = False

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(name, cmd, self.var, env).start()
        self.processes.append(process)
        return process

    def start_redis(self, url: str, data_dir: Path) -> None:
        """A redis-server for ``url``, its data and log in ``data_dir``; stopped last."""
        with as_command_error():
            self.processes.append(devstack.start_redis(url, data_dir, data_dir, timeout=60))

    def prepare(self) -> None:
        """Redis, the database, the demo model in the registry, a superuser and its token."""
        from django.contrib.auth import get_user_model

        from endpoints import registry, services
        from endpoints.dev import demo

        self.start_redis(settings.REDIS_URL, self.var)
        call_command("migrate", interactive=False, verbosity=0)
        self.prepared = True
        registry.configure_mlflow()
        demo.seed(next(d for d in demo.DEMO_MODELS if d.name == MODEL))
        self.user = get_user_model().objects.create_superuser("bench", "bench@example.com", None)
        _, self.token = services.token_create(user=self.user, name="bench")

    def start_product(self, web_workers: int = 2) -> int:
        """The web server, a Celery worker and Celery beat, each as ``make run`` starts
        it; returns the web server's port."""
        self.spawn("worker", worker_command())
        self.spawn("beat", beat_command(self.var))
        return self.start_web(web_workers)

    def start_web(self, processes: int, env: dict[str, str] | None = None) -> int:
        port = devstack.free_port()
        self.web_config = f"front door: uvicorn, {processes} single-worker processes"
        web = self.spawn(
            f"web-{port}", web_command(host="127.0.0.1", port=port, processes=processes), env
        )
        # Any answer will do: the gateway answers a GET on a scoring URL with 405.
        url = f"http://127.0.0.1:{port}/model/-/1/invocations"
        with as_command_error():
            web.wait_until(
                lambda: devstack.http_status(url) is not None, timeout=60, what="the web server"
            )
        return port

    def enable(self, *names: str) -> None:
        """Enable serving of each model through the product's service."""
        from endpoints import services

        for name in names:
            services.endpoint_enable(name=name, user=self.user)

    def wait_ready(self, *names: str) -> None:
        """Wait until the reconcile loop has made every endpoint READY."""
        from endpoints.models import EndpointState, ServingEndpoint

        def ready() -> bool:
            endpoints = ServingEndpoint.objects.filter(registered_model_name__in=names)
            states = {e.registered_model_name: (e.state, e.state_message) for e in endpoints}
            for name, (state, message) in states.items():
                if state == EndpointState.FAILED:
                    raise CommandError(f"serving {name} failed: {message}")
            return len(states) == len(names) and all(
                state == EndpointState.READY for state, _ in states.values()
            )

        wait(ready, what=f"{', '.join(names)} READY", timeout=READY_TIMEOUT)

    def stop(self) -> None:
        """The product's processes first (a running worker would start replicas again),
        then its replicas and zygotes, Redis last (stopping replicas bumps the routing
        generation kept in it)."""
        from endpoints.provisioning.reconcile import stop_all_replicas

        redis = [p for p in self.processes if p.name == "redis"]
        devstack.stop_all([p for p in self.processes if p.name != "redis"], timeout=25)
        if self.prepared:
            stop_all_replicas()
        devstack.stop_all(redis, timeout=20)
        self.processes.clear()
