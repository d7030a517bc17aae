"""The demo models declare exactly what they need to be served."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from endpoints import registry
from endpoints.dev import demo

# What inferring the requirements used to add, because the logging process had them loaded.
NOT_NEEDED = {"torch", "pytest", "rich", "tqdm", "playwright", "django"}


def _requirements(name: str, version: str, tmp_path: Path) -> dict[str, str]:
    """{distribution: pinned version} from the requirements.txt stored in the registry."""
    model_dir = registry.download_model(name, version, tmp_path / name)
    lines = (model_dir / "requirements.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line.strip())
    return {dist.lower(): pin for dist, pin in pins.items()}


@pytest.mark.parametrize(
    ("name", "declared"),
    [
        ("iris-classifier", demo.SKLEARN_REQUIREMENTS),
        ("ElasticNet", demo.SKLEARN_REQUIREMENTS),
        ("iris-tensor", demo.SKLEARN_REQUIREMENTS),
        ("tensor-echo", demo.PYFUNC_REQUIREMENTS),
    ],
)
def test_demo_model_requirements_are_declared_and_pinned(demo_registry, tmp_path, name, declared):
    pins = _requirements(name, "1", tmp_path)
    assert set(pins) == {"mlflow", *declared}
    for dist, pin in pins.items():
        assert pin == metadata.version(dist).split("+")[0], dist
    assert not NOT_NEEDED & set(pins)


def test_pinned_drops_a_local_version_label(monkeypatch):
    monkeypatch.setattr(demo.metadata, "version", lambda name: "2.13.0+cpu")
    assert demo.pinned("torch") == ["torch==2.13.0"]
