"""The MLflow deployments plugin's parts on their own: target, names, chunks, retries.

The retries are exercised against a real HTTP server on 127.0.0.1 that answers 503/429
with a Retry-After before it answers 200; the whole plugin against the running product is
in tests/integration/deployments/test_plugin.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.deployments import BaseDeploymentClient
from mlflow.exceptions import MlflowException

from endpoints import deployments
from endpoints.deployments import chunking, client, http
from endpoints.deployments.errors import ServingUIError

ROOT = Path(__file__).resolve().parents[3]


def test_the_entry_point_names_the_plugin_module():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["mlflow.deployments"] == {
        "serving-ui": "endpoints.deployments"
    }
    # Where the package metadata is installed, it must say the same.
    installed = importlib.metadata.entry_points(group="mlflow.deployments", name="serving-ui")
    assert all(ep.value == "endpoints.deployments" for ep in installed)


def test_the_module_has_the_surface_mlflow_requires():
    from mlflow.deployments.plugin_manager import DeploymentPlugins

    plugins = DeploymentPlugins()
    plugins.register("serving-ui", "endpoints.deployments")
    assert plugins["serving-ui"] is deployments
    subclasses = [
        obj
        for obj in vars(deployments).values()
        if isinstance(obj, type) and issubclass(obj, BaseDeploymentClient)
    ]
    assert subclasses == [deployments.ServingUIDeploymentClient]
    assert "serving-ui:/<url>" in deployments.target_help()


@pytest.mark.parametrize(
    ("target", "env", "url"),
    [
        ("serving-ui", {}, "http://127.0.0.1:8000"),
        ("serving-ui", {"SERVING_UI_URL": "http://10.1.2.3:9000/"}, "http://10.1.2.3:9000"),
        ("serving-ui:/http://127.0.0.1:9", {"SERVING_UI_URL": "http://x"}, "http://127.0.0.1:9"),
        ("serving-ui:/https://serving.example.com", {}, "https://serving.example.com"),
        ("serving-ui://127.0.0.1:7", {}, "http://127.0.0.1:7"),
        ("serving-ui:/127.0.0.1:7", {}, "http://127.0.0.1:7"),
    ],
)
def test_the_address_comes_from_the_target_or_the_environment(target, env, url):
    assert http.settings_for(target, env).url == url


def test_settings_read_token_and_chunk_size_from_the_environment():
    settings = http.settings_for(
        "serving-ui", {"SERVING_UI_TOKEN": " sui_abc ", "SERVING_UI_CHUNK_ROWS": "10"}
    )
    assert (settings.token, settings.chunk_rows, settings.max_retries) == ("sui_abc", 10, 5)
    assert http.settings_for("serving-ui", {}).chunk_rows == 256
    with pytest.raises(MlflowException, match="SERVING_UI_CHUNK_ROWS"):
        http.settings_for("serving-ui", {"SERVING_UI_CHUNK_ROWS": "0"})


@pytest.mark.parametrize(
    ("name", "route"),
    [
        ("iris", ("iris", "Production")),
        ("iris/Staging", ("iris", "Staging")),
        ("iris/staging", ("iris", "Staging")),
        ("iris/Production", ("iris", "Production")),
        ("iris/3", ("iris", "3")),
    ],
)
def test_predict_goes_to_production_unless_the_name_says_otherwise(name, route):
    assert client.route_of(name) == route


def test_a_name_with_an_unknown_route_is_refused():
    with pytest.raises(MlflowException, match="<model>/<version>"):
        client.route_of("iris/Archived")


def test_the_model_uri_names_a_version_of_the_deployment():
    assert client.version_from_uri("iris", "models:/iris/3") == "3"
    assert client.version_from_uri("iris", "2") == "2"
    for uri in ("models:/other/3", "models:/iris/Production", "runs:/abc/model"):
        with pytest.raises(MlflowException, match="models:/iris/<version>"):
            client.version_from_uri("iris", uri)


def test_config_keys_and_stage_are_checked():
    assert client._checked_config({"stage": "staging"})["stage"] == "Staging"
    assert client._checked_config(None)["stage"] == "Production"
    with pytest.raises(MlflowException, match="Unknown config colour"):
        client._checked_config({"colour": "red"})
    with pytest.raises(MlflowException, match="Staging or Production"):
        client._checked_config({"stage": "Archived"})


def test_limits_and_autoscaling_keys_are_numbers_or_the_sizes_default():
    config = client._checked_config(
        {"cpus": "1.5", "memory_mb": "8192", "gpus": 1, "max_replicas": "default"}
    )
    assert (config["cpus"], config["memory_mb"], config["gpus"]) == (1.5, 8192, 1)
    assert config["max_replicas"] is None
    with pytest.raises(MlflowException, match=r"memory_mb must be a whole number, not '1\.5'"):
        client._checked_config({"memory_mb": "1.5"})
    with pytest.raises(MlflowException, match="cpus must be a number, not 'lots'"):
        client._checked_config({"cpus": "lots"})


def test_the_plugins_keys_are_the_apis_settings():
    from endpoints.models import OVERRIDE_FIELDS

    assert client.TUNABLE_KEYS == OVERRIDE_FIELDS


class _RecordingConnection:
    """The product's answers to get-status, and the compute updates the plugin sends."""

    def __init__(self, compute_config: list[dict]) -> None:
        self.status = {"registered_model_name": "iris", "compute_config": compute_config}
        self.updates: list[dict] = []

    def api(self, method: str, call: str, **args):
        if call == client.UPDATE_COMPUTE:
            self.updates.append(args)
            return {}
        assert call == "get-status"
        return {"endpoint_status": self.status}


def test_update_changes_the_named_settings_and_keeps_the_stages_others(monkeypatch):
    monkeypatch.setenv("SERVING_UI_TOKEN", "sui_t")
    production = {
        "workload_size_id": "Medium",
        "scale_to_zero_enabled": False,
        "workload_type": "GPU_SMALL",
        "batching": {"max_batch_size": 8, "max_wait_ms": 2},
        "memory_mb": 12288,
        "max_replicas": 3,
    }
    connection = _RecordingConnection(
        [
            # An alias's config names no stage.
            {"alias": "champion", "workload_spec": {"workload_size_id": "Large"}},
            {"stage": "Production", "workload_spec": production},
        ]
    )
    plugin = client.ServingUIDeploymentClient("serving-ui")
    plugin.connection = connection
    plugin.update_deployment("iris", config={"cpus": "2", "max_replicas": "default"})
    (sent,) = connection.updates
    assert sent["stage"] == "Production"
    assert sent["desired_workload_config_spec"] == {**production, "cpus": 2.0, "max_replicas": None}


def _bodies(chunks: list[chunking.Chunk]) -> list[dict]:
    return [json.loads(c.body) for c in chunks]


def test_a_frame_is_split_into_chunks_of_at_most_n_rows():
    frame = pd.DataFrame({"a": np.arange(7), "b": np.arange(7) * 0.5})
    chunks = chunking.request_chunks(frame, 3)
    assert [c.rows for c in chunks] == [3, 3, 1]
    bodies = _bodies(chunks)
    assert bodies[0]["dataframe_split"]["columns"] == ["a", "b"]
    rows = [row for body in bodies for row in body["dataframe_split"]["data"]]
    assert rows == frame.to_numpy().tolist()
    assert len(chunking.request_chunks(frame, 256)) == 1


def test_request_bodies_are_split_along_their_rows_and_keep_params():
    body = {
        "dataframe_split": {"columns": ["x"], "index": [0, 1, 2], "data": [[1], [2], [3]]},
        "params": {"k": 1},
    }
    parts = _bodies(chunking.request_chunks(body, 2))
    assert [p["dataframe_split"]["data"] for p in parts] == [[[1], [2]], [[3]]]
    assert [p["dataframe_split"]["index"] for p in parts] == [[0, 1], [2]]
    assert all(p["params"] == {"k": 1} for p in parts)
    parts = _bodies(chunking.request_chunks({"instances": [[1], [2], [3]]}, 2))
    assert parts == [{"instances": [[1], [2]]}, {"instances": [[3]]}]
    assert _bodies(chunking.request_chunks(np.array([[1.0], [2.0]]), 1)) == [
        {"inputs": [[1.0]]},
        {"inputs": [[2.0]]},
    ]
    # Named tensors are one request: their rows are not one list.
    tensors = {"t1": [1, 2, 3], "t2": [[1], [2]]}
    assert _bodies(chunking.request_chunks(tensors, 1)) == [{"inputs": tensors}]


def test_answers_to_chunks_are_joined_in_order():
    assert chunking.merge_answers([{"predictions": [1, 2]}, {"predictions": [3]}]) == {
        "predictions": [1, 2, 3]
    }
    joined = chunking.merge_answers([{"predictions": {"a": [1]}}, {"predictions": {"a": [2]}}])
    assert joined == {"predictions": {"a": [1, 2]}}
    assert chunking.merge_answers([{"predictions": 7}]) == {"predictions": 7}
    with pytest.raises(MlflowException, match="cannot be joined"):
        chunking.merge_answers([{"predictions": 1}, {"predictions": 2}])


def test_the_cli_shows_the_error_message_not_a_traceback():
    import click

    error = ServingUIError("Could not reach Serving UI.", "ENDPOINT_NOT_FOUND")
    assert isinstance(error, MlflowException)
    assert isinstance(error, click.ClickException)
    assert error.error_code == "ENDPOINT_NOT_FOUND"
    assert error.format_message() == "Could not reach Serving UI."


# --- retries against a real HTTP server on loopback ------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers POSTs with the statuses in ``server.script``, then 200."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(self.headers.get("Authorization"))
        status, retry_after = self.server.script.pop(0) if self.server.script else (200, None)
        body = (
            {"predictions": [1]}
            if status == 200
            else {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "Busy."}
        )
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        """Not Serving UI: an HTML page, as another web server at the address would."""
        payload = b"<html>Not Found</html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _connection(server, waits: list[float], **settings) -> http.Connection:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return http.Connection(http.Settings(url=url, token="sui_t", **settings), sleep=waits.append)


def test_429_and_503_are_retried_after_retry_after(scripted_server):
    scripted_server.script = [(503, "2"), (429, "0"), (503, None)]
    waits: list[float] = []
    answer = _connection(scripted_server, waits).invoke("iris", "Production", b"{}")
    assert answer == {"predictions": [1]}
    assert waits == [2.0, 0.0, 1.0]
    assert scripted_server.seen == ["Bearer sui_t"] * 4


def test_retries_give_up_after_max_retries_with_the_products_message(scripted_server):
    scripted_server.script = [(429, "0")] * 3
    waits: list[float] = []
    with pytest.raises(MlflowException, match=r"Busy\. \(still refused after 2 retries\)"):
        _connection(scripted_server, waits, max_retries=2).invoke("iris", "Production", b"{}")
    assert len(waits) == 2


def test_a_long_retry_after_is_capped():
    assert http.retry_after_seconds("3600") == http.MAX_RETRY_WAIT_SECONDS
    assert http.retry_after_seconds("not a date") == 1.0
    assert http.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_no_token_is_a_clear_error_before_any_request(scripted_server):
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    connection = http.Connection(http.Settings(url=url, token=""))
    with pytest.raises(MlflowException, match="set SERVING_UI_TOKEN"):
        connection.api("GET", "list")
    assert scripted_server.seen == []


def test_an_address_that_is_not_serving_ui_is_named_as_such(scripted_server):
    with pytest.raises(MlflowException, match=r"HTTP 404 \(text/html\), not Serving UI's") as e:
        _connection(scripted_server, []).api("GET", "list")
    assert "SERVING_UI_URL" in e.value.message


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with chunking.progress(600, 3) as bar:
        for rows in (256, 256, 88):
            bar.update(rows)
    assert "Scoring" in terminal.getvalue()
    assert "100%" in terminal.getvalue()

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    with chunking.progress(600, 3) as bar:
        bar.update(600)
    # One request needs no bar either.
    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    with chunking.progress(10, 1) as bar:
        bar.update(10)
    assert pipe.getvalue() == terminal.getvalue() == ""
