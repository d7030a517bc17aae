"""Preparing a version: the model download, the build log, and per-model environments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from endpoints.dev.devstack import free_port
from endpoints.provisioning import environments
from endpoints.runtime import ReplicaSpec, get_runtime
from endpoints.runtime.local import wait_until


@pytest.fixture
def data_dir(settings, tmp_path: Path) -> Path:
    settings.SERVING = {**settings.SERVING, "DATA_DIR": tmp_path / "serving"}
    return tmp_path / "serving"


def test_the_local_environment_downloads_the_model_once_and_logs_each_step(
    demo_registry, data_dir: Path
) -> None:
    first = environments.prepare("iris-classifier", "1")
    assert (Path(first.model_path) / "MLmodel").exists()
    assert Path(first.model_path).is_relative_to(data_dir)
    again = environments.prepare("iris-classifier", "1")
    assert again == first
    log = Path(first.build_log_path).read_text()
    assert "Downloading model iris-classifier v1" in log
    assert "already at" in log
    assert "product's own Python environment" in log


def test_an_unknown_version_is_a_build_error_with_the_reason(demo_registry, data_dir) -> None:
    with pytest.raises(environments.BuildError, match="Could not download model iris-classifier"):
        environments.prepare("iris-classifier", "99")
    log = environments.build_log_path("iris-classifier", "99").read_text()
    assert "Download failed" in log


def test_requirements_hash_ignores_order_comments_and_blank_lines(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("mlflow==3.17.2\nscikit-learn==1.7\n")
    b.write_text("# logged by MLflow\nscikit-learn==1.7\n\nmlflow==3.17.2\n")
    assert environments.requirements_hash(a) == environments.requirements_hash(b)
    b.write_text("scikit-learn==1.8\nmlflow==3.17.2\n")
    assert environments.requirements_hash(a) != environments.requirements_hash(b)


@pytest.mark.integration
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
