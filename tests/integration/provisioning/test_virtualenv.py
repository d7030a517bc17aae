"""A per-model virtualenv (``SERVING_ENVIRONMENT=virtualenv``): built once per set of
requirements by pip in the sandbox, and a real replica started with its interpreter
answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from endpoints.dev.devstack import free_port
from endpoints.provisioning import environments
from endpoints.runtime import ReplicaSpec, get_runtime
from endpoints.runtime.local import wait_until

pytestmark = pytest.mark.any_database


@pytest.fixture
def data_dir(settings, tmp_path: Path) -> Path:
    settings.SERVING = {**settings.SERVING, "DATA_DIR": tmp_path / "serving"}
    return tmp_path / "serving"


def test_a_virtualenv_per_requirements_is_built_once_and_serves_the_model(
    demo_registry, data_dir: Path, settings, tmp_path: Path
) -> None:
    settings.SERVING = {**settings.SERVING, "ENVIRONMENT": "virtualenv"}
    first = environments.prepare("iris-classifier", "1")
    env_dir = Path(first.python).parent.parent
    assert env_dir.parent == data_dir / "envs"
    # Same requirements, same environment: version 2 reuses it without building.
    second = environments.prepare("iris-classifier", "2")
    assert second.python == first.python
    assert "Reusing the environment" in Path(second.build_log_path).read_text()
    # It really is a separate interpreter that can import what the model needs.
    out = subprocess.run(
        [first.python, "-c", "import sys, sklearn, mlflow; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(env_dir)
    # And a replica started with it answers.
    runtime = get_runtime()
    port = free_port()
    spec = ReplicaSpec(
        replica_id="venv-replica",
        model_path=first.model_path,
        host="127.0.0.1",
        port=port,
        log_path=str(tmp_path / "replica.log"),
        python=first.python,
    )
    pid = runtime.start(spec)
    try:
        assert wait_until(lambda: runtime.probe("127.0.0.1", port), timeout=120), (
            tmp_path / "replica.log"
        ).read_text()
    finally:
        runtime.stop(pid, spec.replica_id, grace_seconds=5)
