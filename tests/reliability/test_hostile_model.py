"""A hostile model: its ``predict`` tries what untrusted code on the serving host would try,
and reports what it got. Every attempt must be denied by the sandbox, whichever way the
replica starts: forked from the worker's zygote for an endpoint enabled through the product,
launched fresh (``SERVING_REPLICA_START=spawn``), and in a per-model virtualenv built with
pip (``SERVING_ENVIRONMENT=virtualenv``). Without a network of its own
(``SERVING_SANDBOX_NETWORK=none``, the default) it reaches no service on the host's loopback;
with the host's network (the test suite's worker runs with it) it still cannot use Redis
without its password.

Each probe reports ``"denied: …"`` or ``"ALLOWED: …"``; control probes (its own model file,
its private temp) must succeed, so a probe that cannot work at all proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from django.conf import settings

from endpoints import registry
from endpoints.dev.devstack import free_port
from endpoints.models import Replica, ReplicaState, ServingEndpoint
from endpoints.provisioning import environments
from endpoints.runtime import ReplicaSpec, sandbox
from endpoints.runtime.local import LocalRuntime, arguments, wait_until
from tests.support import hostile
from tests.support.stack import wait_for

pytestmark = [pytest.mark.any_database, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def host_service() -> Iterator[hostile.HostService]:
    """A service listening on the host's loopback, as Redis, the gateway or another
    replica does; it counts the connections it gets."""
    service = hostile.HostService()
    yield service
    service.close()


@pytest.fixture(scope="module")
def hostile_model(demo_registry, host_service) -> str:
    """Registered in the real registry (and prepared next to the demo's iris model, so
    another model's files exist on the host); it aims the sockets it holds at
    ``host_service`` while it loads."""
    import mlflow

    name = f"hostile-{uuid.uuid4().hex[:6]}"
    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("hostile")):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=hostile.hostile_model(),
            model_config={"host_port": host_service.port},
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
    os.environ[hostile.SECRET_VARIABLE] = hostile.SECRET_VALUE
    yield
    os.environ.pop(hostile.SECRET_VARIABLE, None)


@pytest.fixture(scope="module")
def other_model(demo_registry) -> str:
    """Another model's files on this host (the demo iris model, in the product's env)."""
    return environments.prepare("iris-classifier", "1").model_path


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
    db, served_by_the_product, other_model, celery_worker_process, django_db_blocker, host_service
):
    import psutil

    replica = served_by_the_product
    with django_db_blocker.unblock():
        model_path = replica.version.model_path
    # Forked by a zygote of the worker's, not launched.
    parent = psutil.Process(replica.pid).parent()
    assert "--zygote" in arguments(parent.cmdline())
    targets = hostile.targets(
        model_path,
        other_model,
        {"the worker": celery_worker_process.process.pid, "this Django process": os.getpid()},
        host_service.port,
    )
    # The worker's defaults: the sandbox, and no network.
    report = hostile.probe((replica.host, replica.port), targets)
    hostile.assert_confined(report, targets, sandbox.NETWORK_NONE)
    assert host_service.accepted == 0


# --- launched fresh, and in a per-model virtualenv ------------------------------------------


def _start(spec: ReplicaSpec) -> int:
    runtime = LocalRuntime()
    pid = runtime.start(spec)
    up = wait_until(lambda: runtime.probe(spec.host, spec.port, timeout=1), timeout=180)
    assert up, Path(spec.log_path).read_text()[-3000:]
    return pid


def _spec(prepared, *, start_mode: str, tmp_path: Path, network: str) -> ReplicaSpec:
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
        network=network,
        models_root=str(environments.models_root()),
    )


@pytest.fixture(scope="module")
def own_data_dir(tmp_path_factory) -> Iterator[Path]:
    """A data directory apart from the worker's: its orphan collection must not stop the
    replicas these tests start without rows."""
    path = tmp_path_factory.mktemp("hostile") / "serving"
    yield path
    LocalRuntime().stop_zygotes(within=str(path))


# Forked from a zygote in the product's own environment: the test above.
@pytest.mark.parametrize(
    ("environment", "start_mode", "network"),
    [
        ("local", "spawn", sandbox.NETWORK_NONE),
        ("local", "spawn", sandbox.NETWORK_HOST),
        ("local", "zygote", sandbox.NETWORK_HOST),
        ("virtualenv", "spawn", sandbox.NETWORK_NONE),
        ("virtualenv", "zygote", sandbox.NETWORK_NONE),
    ],
)
def test_a_hostile_model_is_denied_everything_however_its_replica_starts(
    hostile_model,
    other_model,
    secret_in_environment,
    celery_worker_process,
    redis_server,
    settings,
    tmp_path,
    own_data_dir,
    host_service,
    environment,
    start_mode,
    network,
):
    assert settings.SERVING["SANDBOX"] == "bwrap"
    settings.SERVING = {**settings.SERVING, "ENVIRONMENT": environment, "DATA_DIR": own_data_dir}
    prepared = environments.prepare(hostile_model, "1")
    if environment == "virtualenv":
        assert Path(prepared.python).is_relative_to(environments.data_dir() / "envs")
    spec = _spec(prepared, start_mode=start_mode, tmp_path=tmp_path, network=network)
    pid = _start(spec)
    try:
        targets = hostile.targets(
            prepared.model_path,
            other_model,
            {"the worker": celery_worker_process.process.pid, "this Django process": os.getpid()},
            host_service.port,
        )
        accepted = host_service.accepted
        hostile.assert_confined(hostile.probe((spec.host, spec.port), targets), targets, network)
        if network == sandbox.NETWORK_NONE:
            assert host_service.accepted == accepted
    finally:
        LocalRuntime().stop(pid, spec.replica_id, grace_seconds=5)


def _venv_under(path: Path) -> str:
    """An environment at ``path`` with the product's packages behind its own, and its own
    copy of uvicorn, whose protocol modules a replica imports only once it serves: after
    the fork, from under the replica's fresh /tmp."""
    import site

    import uvicorn

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    packages = next((path / "lib").glob("python3*/site-packages"))
    product = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    (packages / "zz-product.pth").write_text("\n".join(product) + "\n")
    shutil.copytree(Path(uvicorn.__file__).parent, packages / "uvicorn")
    return str(path / "bin" / "python")


START_FROM_CHECKOUT = """
import json, sys
from endpoints.runtime.base import ReplicaSpec
from endpoints.runtime.local import LocalRuntime
runtime = LocalRuntime()
pid = runtime.start(ReplicaSpec(**json.loads(sys.argv[1])))
print(json.dumps({"pid": pid, "zygotes started": runtime.take_zygote_starts()}))
"""


def test_a_checkout_under_tmp_forks_confined_replicas(
    hostile_model,
    other_model,
    secret_in_environment,
    celery_worker_process,
    settings,
    tmp_path,
    own_data_dir,
    host_service,
):
    """The replica's fresh /tmp covers a checkout (and its code) living under /tmp: what the
    replica needs from there is bound back."""
    checkout = tmp_path / "co"
    assert checkout.is_relative_to("/tmp")
    runtime_code = Path(sandbox.__file__).parent
    (checkout / "endpoints").mkdir(parents=True)
    shutil.copy(runtime_code.parent / "__init__.py", checkout / "endpoints")
    shutil.copytree(
        runtime_code, checkout / "endpoints" / "runtime", ignore=shutil.ignore_patterns("*.pyc")
    )
    python = _venv_under(checkout / ".venv")
    settings.SERVING = {**settings.SERVING, "DATA_DIR": own_data_dir}
    prepared = environments.prepare(hostile_model, "1")
    spec = replace(
        _spec(prepared, start_mode="zygote", tmp_path=tmp_path, network=sandbox.NETWORK_NONE),
        zygote_dir=str(tmp_path / "z"),
        python=python,
    )
    started = subprocess.run(
        [sys.executable, "-c", START_FROM_CHECKOUT, json.dumps(asdict(spec))],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(started.stdout.splitlines()[-1])
    pid = answer["pid"]
    try:
        # Forked by a zygote of the checkout's code, not launched instead.
        assert answer["zygotes started"] == [python], started.stderr
        assert "without a zygote" not in started.stderr, started.stderr
        assert f"PYTHONPATH={checkout}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        up = wait_until(lambda: LocalRuntime().probe(spec.host, spec.port, timeout=1), timeout=120)
        assert up, Path(spec.log_path).read_text()[-3000:]
        targets = hostile.targets(
            prepared.model_path,
            other_model,
            {"the worker": celery_worker_process.process.pid, "this Django process": os.getpid()},
            host_service.port,
        )
        targets["write"]["the runtime code"] = str(checkout / "endpoints" / "runtime" / "x.py")
        accepted = host_service.accepted
        hostile.assert_confined(hostile.probe((spec.host, spec.port), targets), targets)
        assert host_service.accepted == accepted
    finally:
        LocalRuntime().stop(pid, spec.replica_id, grace_seconds=5)
        LocalRuntime().stop_zygotes(within=str(tmp_path / "z"))


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
