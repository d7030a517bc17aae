"""`mlflow deployments … -t serving-ui` and get_deploy_client("serving-ui") against the
running product: real web server, worker and replicas; the CLI in a subprocess with a clean
environment once per command line tool and test, and in this process otherwise.

MLflow finds the plugin through the ``mlflow.deployments`` entry point of the installed
package metadata. Where the installed metadata predates the entry point (an editable
install made before it was declared), the tests put a distribution that declares exactly
pyproject.toml's entry point on the path, so what is tested is still what is declared.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow.deployments
import pandas as pd
import pytest
from mlflow.deployments import PredictionsResponse
from mlflow.exceptions import MlflowException

from endpoints import registry
from endpoints.dev.devstack import free_port
from tests.support import models
from tests.support.stack import wait_for

pytestmark = pytest.mark.any_database

ROOT = Path(__file__).resolve().parents[3]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
READY_TIMEOUT = 240


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> Iterator[str]:
    """A directory to put on the path so that MLflow finds the ``serving-ui`` entry point
    (empty when the installed package metadata already declares it)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    site = tmp_path_factory.mktemp("plugin-site")
    if not importlib.metadata.entry_points(group="mlflow.deployments", name="serving-ui"):
        dist = site / "serving_ui_deployments-0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: serving-ui-deployments\nVersion: 0\n"
        )
        lines = [f"{name} = {value}" for name, value in declared["mlflow.deployments"].items()]
        (dist / "entry_points.txt").write_text("[mlflow.deployments]\n" + "\n".join(lines) + "\n")
    sys.path.append(str(site))
    mlflow.deployments.interface.plugin_store.register_entrypoints()
    yield str(site)
    sys.path.remove(str(site))


@pytest.fixture
def target_env(stack, owner, make_token, plugin_path, monkeypatch) -> dict[str, str]:
    """The environment a user of the plugin sets: where the product is, and a token."""
    env = {"SERVING_UI_URL": stack, "SERVING_UI_TOKEN": make_token(owner)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SERVING_UI_CHUNK_ROWS", raising=False)
    return env


def cli(
    env: dict[str, str], *args: str, module: bool = False, process: bool = False
) -> subprocess.CompletedProcess:
    """``mlflow deployments ARGS`` (or ``python -m endpoints.deployments ARGS``) with only
    ``env`` added: with ``process``, as a user runs it, in a subprocess with a clean
    environment (the installed entry points, nothing of this process); else the same click
    command in this process, which spares each call MLflow's seconds of imports."""
    if process:
        return _cli_process(env, *args, module=module)
    # Imported here: MLflow's CLI takes seconds to import, in each worker that collects this.
    from click.testing import CliRunner
    from mlflow.cli import cli as mlflow_cli

    from endpoints.deployments import __main__ as plugin_main

    command = plugin_main.cli if module else mlflow_cli
    env = {k: v for k, v in env.items() if k != "PLUGIN_PATH"}
    argv = list(args) if module else ["deployments", *args]
    result = CliRunner().invoke(command, argv, env=env, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, stderr)


def _cli_process(env: dict[str, str], *args: str, module: bool) -> subprocess.CompletedProcess:
    command = (
        [sys.executable, "-m", "endpoints.deployments", *args]
        if module
        else [MLFLOW, "deployments", *args]
    )
    path = os.pathsep.join([str(ROOT), env.get("PLUGIN_PATH", "")])
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    full_env |= {"PYTHONPATH": path, **{k: v for k, v in env.items() if k != "PLUGIN_PATH"}}
    return subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def copy_of_iris(stack) -> Iterator[str]:
    """A model of this test's own with two versions of iris-classifier's artifacts, in no
    stage: the demo models stay as other tests expect them."""
    name = models.copy_of_iris("iris-plugin", versions=2, stage=None)
    yield name
    registry.client().delete_registered_model(name)


def _iris_rows(times: int) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).data
    return pd.concat([frame] * times, ignore_index=True)


def _local_predictions(frame: pd.DataFrame) -> list:
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.pyfunc.load_model(
            registry.get_model_version_download_uri("iris-classifier", "1")
        )
    return [int(p) for p in model.predict(frame)]


def test_the_plugin_deploys_serves_updates_and_deletes_a_model(
    copy_of_iris, target_env, plugin_path, tmp_path
):
    name = copy_of_iris
    env = {**target_env, "PLUGIN_PATH": plugin_path}
    created = ok(
        cli(
            env,
            "create",
            "-t",
            "serving-ui",
            "--name",
            name,
            "-m",
            f"models:/{name}/1",
            "-C",
            "stage=Production",
            process=True,
        )
    )
    assert f"python_function deployment {name} is created" in created
    assert registry.get_version(name, "1").stage == "Production"

    listed = ok(cli(env, "list", "-t", "serving-ui"))
    assert f"'name': '{name}'" in listed

    client = mlflow.deployments.get_deploy_client("serving-ui")
    assert name in [d["name"] for d in client.list_deployments()]
    wait_for(
        lambda: client.get_deployment(name)["state"] == "READY",
        timeout=READY_TIMEOUT,
        what=f"{name} to be READY",
        interval=0.5,
    )
    described = ok(cli(env, "get", "-t", "serving-ui", "--name", name))
    assert "state: READY" in described
    assert "'alias': 'Production'" in described

    # JSON through MLflow's own predict command.
    rows = _iris_rows(1).iloc[[0, 60, 120]]
    json_path = tmp_path / "rows.json"
    rows.to_json(json_path, orient="records")
    answer = json.loads(
        ok(cli(env, "predict", "-t", "serving-ui", "--name", name, "--input-path", str(json_path)))
    )
    assert answer == {"predictions": _local_predictions(rows)} == {"predictions": [0, 1, 2]}

    # A CSV of 600 rows: three requests of at most 256 rows, answers joined in order.
    frame = _iris_rows(4)
    csv_path, out_path = tmp_path / "rows.csv", tmp_path / "out.json"
    frame.to_csv(csv_path, index=False)
    ok(
        cli(
            env,
            "predict",
            "--name",
            f"{name}/1",
            "--input-path",
            str(csv_path),
            "--output-path",
            str(out_path),
            module=True,
            process=True,
        )
    )
    expected = _local_predictions(frame)
    assert json.loads(out_path.read_text()) == {"predictions": expected}

    requests_sent = []
    invoke = client.connection.invoke
    client.connection.invoke = lambda *a: requests_sent.append(a[:2]) or invoke(*a)
    result = client.predict(name, pd.read_csv(csv_path))
    assert isinstance(result, PredictionsResponse)
    assert result.get_predictions(predictions_format="ndarray").tolist() == expected
    assert requests_sent == [(name, "Production")] * 3

    # update: version 2 replaces version 1 in Production once it is ready.
    updated = ok(cli(env, "update", "-t", "serving-ui", "--name", name, "-m", f"models:/{name}/2"))
    assert f"Deployment {name} is updated" in updated
    assert registry.get_version(name, "1").stage == "Archived"
    wait_for(
        lambda: (
            {a["alias"]: a["endpoint_version_name"] for a in client.get_deployment(name)["aliases"]}
            == {"Production": "2"}
        ),
        timeout=READY_TIMEOUT,
        what="Production to move to version 2",
        interval=0.5,
    )
    assert client.predict(f"{name}/2", {"dataframe_records": rows.to_dict(orient="records")}) == {
        "predictions": [0, 1, 2]
    }
    resized = client.update_deployment(
        name, config={"workload_size": "Medium", "memory_mb": "6144", "max_replicas": "3"}
    )
    specs = {c["stage"]: c["workload_spec"] for c in resized["compute_config"]}
    assert specs["Production"] == {
        "workload_size_id": "Medium",
        "scale_to_zero_enabled": False,
        "memory_mb": 6144,
        "max_replicas": 3,
    }
    refused = _error(cli(env, "update", "-t", "serving-ui", "--name", name, "-C", "memory_mb=64"))
    assert "desired_workload_config_spec.memory_mb" in refused

    ok(cli(env, "delete", "-t", "serving-ui", "--name", name))
    assert name not in [d["name"] for d in client.list_deployments()]
    with pytest.raises(MlflowException, match="not enabled") as missing:
        client.get_deployment(name)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_a_wrong_url_a_bad_token_and_an_unknown_model_are_clear_errors(target_env, plugin_path):
    env = {**target_env, "PLUGIN_PATH": plugin_path}
    nowhere = f"http://127.0.0.1:{free_port()}"
    message = _error(
        cli({**env, "SERVING_UI_URL": nowhere}, "list", "-t", "serving-ui", process=True)
    )
    assert f"Error: Could not reach Serving UI at {nowhere}" in message
    assert "SERVING_UI_URL" in message
    # The address in the target wins over the environment.
    message = _error(cli(env, "list", "-t", f"serving-ui:/{nowhere}"))
    assert f"Could not reach Serving UI at {nowhere}" in message

    message = _error(
        cli({**env, "SERVING_UI_TOKEN": "sui_not-a-token"}, "list", "-t", "serving-ui")
    )
    assert (
        f"Error: Serving UI at {target_env['SERVING_UI_URL']} did not accept the token" in message
    )
    assert "SERVING_UI_TOKEN" in message

    message = _error(
        cli(
            env,
            "create",
            "-t",
            "serving-ui",
            "--name",
            "no-such-model",
            "-m",
            "models:/no-such-model/1",
        )
    )
    assert "Error: Registered model 'no-such-model' does not exist." in message
    client = mlflow.deployments.get_deploy_client("serving-ui")
    with pytest.raises(MlflowException) as unknown:
        client.predict("no-such-model", pd.DataFrame({"x": [1]}))
    assert unknown.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert "no-such-model" in unknown.value.message
