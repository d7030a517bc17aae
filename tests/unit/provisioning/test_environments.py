"""Preparing a version: the model download, the build log, and the requirements' hash that
keys per-model environments (building one and serving from it:
``tests/integration/provisioning/test_virtualenv.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoints.provisioning import environments

pytestmark = pytest.mark.any_database


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
