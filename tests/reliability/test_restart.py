"""Restarting the whole product (``make run``: ``manage.py run_product``) loses nothing.

The product runs in a subprocess with its own data directory, port, Redis and replica
ports, exactly as an operator starts it. Everything is created through the API, the
product is stopped with SIGTERM (what Ctrl-C or a service manager sends) and started
again: endpoints, compute configs, tokens, events and permissions are all still there,
the old tokens still work, and serving comes back on its own.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from endpoints.dev.devstack import ManagedProcess, free_port
from endpoints.management.commands.run_product import AUTO_TOKEN_NAME
from tests.support.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]
V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
MODEL = "restart-model"

REGISTER = """
import mlflow
from endpoints import registry

class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return ["still here"] * len(model_input)

registry.configure_mlflow()
with mlflow.start_run(experiment_id=registry.ensure_experiment("restart")):
    info = mlflow.pyfunc.log_model(
        name="model", python_model=Constant(), registered_model_name="%s",
        pip_requirements=["mlflow"],
    )
registry.transition_stage("%s", str(info.registered_model_version), "Production",
                          archive_existing_versions=True)
""" % (MODEL, MODEL)  # noqa: UP031 - the snippet has its own braces


class Product:
    def __init__(self, var_dir: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        replica_base = 26000 + (os.getpid() % 9) * 100
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        self.env = {k: os.environ[k] for k in keep if k in os.environ}
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "serving_ui.settings",
                "SERVING_VAR_DIR": str(var_dir),
                "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                "SERVING_REPLICA_PORT_MIN": str(replica_base),
                "SERVING_REPLICA_PORT_MAX": str(replica_base + 99),
                "RECONCILE_INTERVAL_SECONDS": "1",
                "SERVING_DRAIN_SECONDS": "0.5",
                "SERVING_DEMO": "false",
                "DJANGO_SUPERUSER_PASSWORD": "pw-admin-restart",
            }
        )
        self.runs = 0
        self.process: ManagedProcess | None = None

    def register_model(self) -> None:
        import subprocess

        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", REGISTER],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr[-2000:]

    def start(self) -> str:
        """Start ``run_product`` and return the admin token its banner prints."""
        self.runs += 1
        # ManagedProcess runs the child with os.environ plus env: the test run's own
        # settings must not leak in, so the environment is replaced, not extended.
        self.process = ManagedProcess(
            f"product-run{self.runs}",
            [sys.executable, "manage.py", "run_product", "--port", str(self.port)],
            self.log_dir,
        )
        self.process.env = dict(self.env)
        self.process.start()
        found = wait_for(
            lambda: (
                re.search(r"API token: (sui_\S+)", self.process.output())
                or (not self.process.alive and pytest.fail(self.process.output()[-3000:]))
            ),
            timeout=180,
            what="the product to start",
        )
        return found.group(1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=60)
            assert self.process.process.returncode is not None


@pytest.fixture
def product(tmp_path, stack_log_dir) -> Iterator[Product]:
    running = Product(tmp_path / "var", stack_log_dir)
    try:
        yield running
    finally:
        running.stop()


def api(product: Product, token: str, method: str, path: str, **kwargs) -> dict:
    response = requests.request(
        method,
        product.base + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        **kwargs,
    )
    assert response.status_code == 200, (path, response.text)
    return response.json()


def snapshot(product: Product, token: str) -> dict:
    name = {"registered_model_name": MODEL}
    return {
        "status": api(product, token, "GET", V2 + "get-status", params=name)["endpoint_status"],
        "permissions": api(product, token, "GET", V2 + "get-permissions", params=name),
        "tokens": api(product, token, "GET", "/api/2.0/token/list")["token_infos"],
        "principals": api(product, token, "GET", "/api/2.0/service-principals/list"),
        "events": api(
            product, token, "GET", V2 + "get-event-history", params={**name, "max_results": 1000}
        )["events"],
    }


def score(product: Product, token: str) -> requests.Response:
    return requests.post(
        f"{product.base}/model-endpoint/{MODEL}/Production/invocations",
        json={"dataframe_records": [{"x": 1}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def test_restarting_the_product_loses_no_endpoint_config_token_event_or_permission(product):
    product.register_model()
    banner_token = product.start()
    # Tokens made through the API (children of the banner's token, which is kept).
    admin = api(product, banner_token, "POST", "/api/2.0/token/create", json={"comment": "ops"})
    admin_token = admin["token_value"]
    api(
        product,
        admin_token,
        "POST",
        "/api/2.0/service-principals/create",
        json={"user_name": "bot"},
    )
    bot_token = api(
        product,
        admin_token,
        "POST",
        "/api/2.0/service-principals/create-token",
        json={"user_name": "bot", "comment": "scoring"},
    )["token_value"]
    api(product, admin_token, "POST", V2 + "enable", json={"registered_model_name": MODEL})
    api(
        product,
        admin_token,
        "PUT",
        "/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config",
        json={
            "registered_model_name": MODEL,
            "stage": "Production",
            "desired_workload_config_spec": {
                "workload_size_id": "Small",
                "scale_to_zero_enabled": True,
            },
        },
    )
    api(
        product,
        admin_token,
        "POST",
        V2 + "set-permissions",
        json={
            "registered_model_name": MODEL,
            "access_control_list": [{"user_name": "bot", "permission_level": "CAN_QUERY"}],
        },
    )
    wait_for(lambda: score(product, bot_token).status_code == 200, timeout=180, what="serving")
    assert score(product, bot_token).json() == {"predictions": ["still here"]}
    before = snapshot(product, admin_token)

    product.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(product.base + "/login/", timeout=5)
    # The banner prints the same token again: one token, kept across starts.
    assert product.start() == banner_token

    after = snapshot(product, admin_token)
    assert after["status"]["compute_config"] == before["status"]["compute_config"]
    assert after["permissions"] == before["permissions"]
    assert after["principals"] == before["principals"]
    # Every token survives, the banner's own included (it is reused, not replaced).
    banner = {t["token_id"] for t in before["tokens"] if t["comment"] == AUTO_TOKEN_NAME}
    assert len(banner) == 1
    assert {t["token_id"] for t in before["tokens"]} <= {t["token_id"] for t in after["tokens"]}
    assert admin["token_info"]["token_id"] in {t["token_id"] for t in after["tokens"]}
    # Every event is still there; the restart adds new ones.
    key = ("timestamp", "type", "message")
    old_events = {tuple(e[k] for k in key) for e in before["events"]}
    assert old_events <= {tuple(e[k] for k in key) for e in after["events"]}
    # The old tokens still work, and serving comes back without anyone asking.
    wait_for(
        lambda: score(product, bot_token).status_code == 200, timeout=180, what="serving again"
    )
    assert score(product, bot_token).json() == {"predictions": ["still here"]}
