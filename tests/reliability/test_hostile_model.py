"""A hostile model: its ``predict`` tries what untrusted code on the serving host would try,
and reports what it got. Every attempt must be denied by the sandbox, whichever way the
replica starts: forked from the worker's zygote for an endpoint enabled through the product,
launched fresh (``SERVING_REPLICA_START=spawn``), and in a per-model virtualenv built with
pip (``SERVING_ENVIRONMENT=virtualenv``).

Each probe reports ``"denied: …"`` or ``"ALLOWED: …"``; control probes (its own model file,
its private temp) must succeed, so a probe that cannot work at all proves nothing.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import wait_for
from django.conf import settings

from endpoints import registry
from endpoints.devstack import free_port
from endpoints.models import Replica, ReplicaState, ServingEndpoint
from endpoints.provisioning import environments
from endpoints.runtime import ReplicaSpec, sandbox
from endpoints.runtime.local import LocalRuntime, arguments, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(900)]

SECRET_VARIABLE = "DJANGO_SUPERUSER_PASSWORD"
SECRET_VALUE = f"hostile-probe-{uuid.uuid4().hex}"


def _hostile_model():
    import mlflow

    class Hostile(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import glob
            import json
            import os
            import site
            import socket

            targets = json.loads(model_input["targets"][0])
            report = {}

            def attempt(name, action):
                try:
                    report[name] = f"ALLOWED: {str(action())[:200]}"
                except Exception as exc:  # every failure is a denial to report
                    report[name] = f"denied: {type(exc).__name__}: {exc}"[:300]

            def read(path):
                with open(path, "rb") as f:
                    return f.read(64)

            def write(path):
                with open(path, "w") as f:
                    f.write("import os\n")
                return path

            def redis(command):
                with socket.create_connection(("127.0.0.1", targets["redis_port"]), 2) as c:
                    c.sendall(command)
                    answer = c.recv(200)
                if answer.startswith((b"+", b"$", b":", b"*")):
                    return answer
                raise PermissionError(answer.decode(errors="replace").strip())

            def environ_of(pid):
                return read(f"/proc/{pid}/environ")

            for name, path in targets["read"].items():
                attempt(f"read {name}", lambda path=path: read(path))
            listed = {}
            for name, path in targets["list"].items():
                try:
                    listed[name] = sorted(os.listdir(path))
                except OSError:
                    listed[name] = []
            report["listed"] = listed
            for name, pid in targets["pids"].items():
                attempt(f"environ of {name}", lambda pid=pid: environ_of(pid))
            attempt("other processes", lambda: [p for p in os.listdir("/proc") if p.isdigit()])
            attempt("redis without password", lambda: redis(b"PING\r\n"))
            attempt("redis with a guessed password", lambda: redis(b"AUTH guessed\r\nPING\r\n"))
            pth = [*site.getsitepackages(), *targets["site_packages"]]
            for directory in pth:
                attempt(f"write .pth into {directory}", lambda d=directory: write(f"{d}/x.pth"))
            for name, path in targets["write"].items():
                attempt(f"write {name}", lambda path=path: write(path))
            attempt("control: own model", lambda: read(targets["own_model"]))
            attempt("control: private temp", lambda: write("/tmp/probe.txt"))
            report["uid"] = os.getuid()
            report["environment"] = dict(os.environ)
            report["models seen"] = sorted(glob.glob(targets["models_root"] + "/*"))
            return [json.dumps(report)] * len(model_input)

    return Hostile()


@pytest.fixture(scope="module")
def hostile_model(demo_registry) -> str:
    """Registered in the real registry (and prepared next to the demo's iris model, so
    another model's files exist on the host)."""
    import mlflow

    name = f"hostile-{uuid.uuid4().hex[:6]}"
    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("hostile")):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=_hostile_model(),
            registered_model_name=name,
            # One requirement the product's environment satisfies: a virtualenv build of it
            # resolves without downloading.
            pip_requirements=["mlflow"],
        )
    registry.transition_stage(name, "1", "Production")
    return name


@pytest.fixture(scope="module")
def secret_in_environment() -> Iterator[None]:
    """A secret in this Django process's environment, as an operator's would be."""
    os.environ[SECRET_VARIABLE] = SECRET_VALUE
    yield
    os.environ.pop(SECRET_VARIABLE, None)


@pytest.fixture(scope="module")
def other_model(demo_registry) -> str:
    """Another model's files on this host (the demo iris model, in the product's env)."""
    return environments.prepare("iris-classifier", "1").model_path


def _targets(own_model: str, other: str, pids: dict[str, int]) -> dict:
    var = Path(settings.VAR_DIR)
    product_site = [p for p in sys.path if p.endswith("site-packages")]
    return {
        "read": {
            "secret key": str(var / "secret_key"),
            "database": os.environ.get("TEST_DATABASE_PATH", str(var / "db.sqlite3")),
            "redis password": str(var / "redis_password"),
            "another model": str(Path(other) / "MLmodel"),
            "settings module": str(Path(settings.BASE_DIR) / "serving_ui" / "settings.py"),
            "the project's README": str(Path(settings.BASE_DIR) / "README.md"),
            "shadow": "/etc/shadow",
        },
        "list": {
            "var": str(var),
            "project": str(settings.BASE_DIR),
            "logs": str(environments.data_dir() / "logs"),
        },
        "pids": pids,
        "redis_port": int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0]),
        "site_packages": product_site,
        "write": {
            "the project": str(Path(settings.BASE_DIR) / "hostile.txt"),
            "var": str(var / "hostile.txt"),
            "its own model": str(Path(own_model) / "hostile.txt"),
            "the root": "/hostile.txt",
            "the runtime code": str(Path(sandbox.__file__).parent / "hostile.py"),
        },
        "own_model": str(Path(own_model) / "MLmodel"),
        "models_root": str(environments.models_root()),
    }


def _probe(address: tuple[str, int], targets: dict) -> dict:
    answer = requests.post(
        f"http://{address[0]}:{address[1]}/invocations",
        json={"dataframe_split": {"columns": ["targets"], "data": [[json.dumps(targets)]]}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return json.loads(answer.json()["predictions"][0])


def _assert_confined(report: dict, targets: dict) -> None:
    allowed = {
        name: outcome
        for name, outcome in report.items()
        if isinstance(outcome, str) and outcome.startswith("ALLOWED") and "control" not in name
    }
    # The only process it sees is itself.
    assert report["other processes"] in ("ALLOWED: ['1']", "ALLOWED: []"), report
    allowed.pop("other processes")
    assert allowed == {}, json.dumps(allowed, indent=1)
    assert report["control: own model"].startswith("ALLOWED"), report
    assert report["control: private temp"].startswith("ALLOWED"), report
    assert "NOAUTH" in report["redis without password"], report
    assert "WRONGPASS" in report["redis with a guessed password"], report
    if sandbox.sandbox_uid() is not None:
        assert report["uid"] == sandbox.sandbox_uid()
    env = report["environment"]
    assert not [k for k in env if k.startswith(("DJANGO", "REDIS", "DATABASE", "SECRET"))], env
    password = registry_password()
    assert not [k for k, v in env.items() if password in v or SECRET_VALUE in v], env
    # Of every model on the host it sees its own only; of var/ and the project, only the
    # directories on the way to its model and to the replica code.
    own_key = Path(targets["own_model"]).parent.parent
    assert report["models seen"] == [str(own_key)], report["models seen"]
    listed = report["listed"]
    assert set(listed["var"]) <= {"serving"}, listed
    assert set(listed["project"]) <= {"endpoints", ".venv"}, listed
    assert listed["logs"] == [], listed


def registry_password() -> str:
    return (Path(settings.VAR_DIR) / "redis_password").read_text().strip()


# --- forked from the worker's zygote, for an endpoint enabled through the product -------------


@pytest.fixture(scope="module")
def served_by_the_product(
    hostile_model, secret_in_environment, celery_worker_process, redis_server, django_db_blocker
) -> Iterator[Replica]:
    from django.contrib.auth import get_user_model

    from endpoints import services

    with django_db_blocker.unblock():
        owner = get_user_model().objects.create_superuser(f"hostile-{uuid.uuid4().hex[:6]}")
        endpoint = services.endpoint_enable(name=hostile_model, user=owner)

    def running() -> Replica | None:
        with django_db_blocker.unblock():
            return Replica.objects.filter(
                version__endpoint=endpoint, state=ReplicaState.RUNNING
            ).first()

    try:
        yield wait_for(running, timeout=300, what="the hostile model's replica", interval=0.5)
    finally:
        with django_db_blocker.unblock():
            ServingEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)
            from endpoints.tasks import reconcile_endpoint

            reconcile_endpoint.delay(endpoint.pk)
            wait_for(
                lambda: (
                    not Replica.objects.filter(
                        version__endpoint=endpoint, state__in=(ReplicaState.RUNNING,)
                    ).exists()
                ),
                timeout=60,
                what="the hostile replica to stop",
            )
            ServingEndpoint.objects.filter(pk=endpoint.pk).delete()
            owner.delete()


def test_a_hostile_model_forked_from_the_zygote_is_denied_everything(
    db, served_by_the_product, other_model, celery_worker_process, django_db_blocker
):
    import psutil

    replica = served_by_the_product
    with django_db_blocker.unblock():
        model_path = replica.version.model_path
    # Forked by a zygote of the worker's, not launched.
    parent = psutil.Process(replica.pid).parent()
    assert "--zygote" in arguments(parent.cmdline())
    targets = _targets(
        model_path,
        other_model,
        {"the worker": celery_worker_process.process.pid, "this Django process": os.getpid()},
    )
    _assert_confined(_probe((replica.host, replica.port), targets), targets)


# --- launched fresh, and in a per-model virtualenv ------------------------------------------


def _start(spec: ReplicaSpec) -> int:
    runtime = LocalRuntime()
    pid = runtime.start(spec)
    up = wait_until(lambda: runtime.probe(spec.host, spec.port, timeout=1), timeout=180)
    assert up, Path(spec.log_path).read_text()[-3000:]
    return pid


def _spec(prepared, *, start_mode: str, tmp_path: Path) -> ReplicaSpec:
    """What ``provisioning.replicas.launch`` gives the runtime."""
    return ReplicaSpec(
        replica_id=f"v1-hostile{uuid.uuid4().hex[:4]}",
        model_path=prepared.model_path,
        host="127.0.0.1",
        port=free_port(),
        log_path=str(tmp_path / "replica.log"),
        python=prepared.python,
        start_mode=start_mode,
        zygote_dir=str(environments.zygote_dir()),
        sandbox=settings.SERVING["SANDBOX"],
        models_root=str(environments.models_root()),
    )


@pytest.fixture(scope="module")
def own_data_dir(tmp_path_factory) -> Iterator[Path]:
    """A data directory apart from the worker's: its orphan collection must not stop the
    replicas these tests start without rows."""
    path = tmp_path_factory.mktemp("hostile") / "serving"
    yield path
    LocalRuntime().stop_zygotes(within=str(path))


@pytest.mark.parametrize("environment", ["local", "virtualenv"])
@pytest.mark.parametrize("start_mode", ["spawn", "zygote"])
def test_a_hostile_model_is_denied_everything_however_its_replica_starts(
    hostile_model,
    other_model,
    secret_in_environment,
    celery_worker_process,
    redis_server,
    settings,
    tmp_path,
    own_data_dir,
    environment,
    start_mode,
):
    if (environment, start_mode) == ("local", "zygote"):
        pytest.skip("the product's own path: the test above")
    assert settings.SERVING["SANDBOX"] == "bwrap"
    settings.SERVING = {**settings.SERVING, "ENVIRONMENT": environment, "DATA_DIR": own_data_dir}
    prepared = environments.prepare(hostile_model, "1")
    if environment == "virtualenv":
        assert Path(prepared.python).is_relative_to(environments.data_dir() / "envs")
    spec = _spec(prepared, start_mode=start_mode, tmp_path=tmp_path)
    pid = _start(spec)
    try:
        targets = _targets(
            prepared.model_path,
            other_model,
            {"the worker": celery_worker_process.process.pid, "this Django process": os.getpid()},
        )
        _assert_confined(_probe((spec.host, spec.port), targets), targets)
    finally:
        LocalRuntime().stop(pid, spec.replica_id, grace_seconds=5)


def test_pip_builds_run_in_the_sandbox(settings, tmp_path):
    """What a package's setup code would run as during ``pip install``: it sees the
    environment being built, writable, and nothing of the product."""
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    probe = (
        "import os, sys\n"
        "def tried(f):\n"
        "    try:\n"
        "        f(); return 'ALLOWED'\n"
        "    except OSError as e:\n"
        "        return 'denied'\n"
        f"print(tried(lambda: open({str(Path(settings.VAR_DIR) / 'secret_key')!r}).read()),\n"
        f"      tried(lambda: open({str(Path(settings.BASE_DIR) / 'README.md')!r}).read()),\n"
        f"      tried(lambda: open({str(env_dir / 'built')!r}, 'w').write('x')),\n"
        f"      tried(lambda: open({sys.prefix + '/x.pth'!r}, 'w').write('x')),\n"
        "      sorted(k for k in os.environ if 'REDIS' in k or 'DJANGO' in k))\n"
    )
    if sandbox.sandbox_uid() is not None:
        os.chown(env_dir, sandbox.sandbox_uid(), sandbox.sandbox_uid())
    command = sandbox.build_command(
        [sys.executable, "-c", probe], python=sys.executable, writable=[str(env_dir)], read_only=[]
    )
    import subprocess

    out = subprocess.run(
        command, capture_output=True, text=True, env=environments.build_environment(), check=True
    )
    assert out.stdout.split() == ["denied", "denied", "ALLOWED", "denied", "[]"], out
