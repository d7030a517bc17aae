"""A hostile model for the sandbox's tests: its ``predict`` tries what untrusted code on the
serving host would try and reports what it got (``"denied: …"`` or ``"ALLOWED: …"``), and
the checks that every attempt was denied. Control probes (its own model file, its private
temp) must succeed, so a probe that cannot work at all proves nothing."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import requests
from django.conf import settings

from endpoints.provisioning import environments
from endpoints.runtime import sandbox

SECRET_VARIABLE = "DJANGO_SUPERUSER_PASSWORD"
SECRET_VALUE = f"hostile-probe-{uuid.uuid4().hex}"


def hostile_model():
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

            def connect(port):
                with socket.create_connection(("127.0.0.1", port), 2) as c:
                    return c.getpeername()

            report["interfaces"] = sorted(name for _, name in socket.if_nameindex())
            for name, port in targets["connect"].items():
                attempt(f"connect to {name}", lambda port=port: connect(port))
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


def targets(
    own_model: str,
    other: str,
    pids: dict[str, int],
    listening: int,
    *,
    models_root: str = "",
    services: dict[str, int] | None = None,
) -> dict:
    """What the model tries: ``own_model`` is its directory, ``other`` another model's on
    this host, ``listening`` a service's port on the host's loopback; ``services``: more
    ports it must not reach (without a network of its own)."""
    var = Path(settings.VAR_DIR)
    product_site = [p for p in sys.path if p.endswith("site-packages")]
    redis_port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
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
        "redis_port": redis_port,
        "connect": {
            "a service on the host's loopback": listening,
            "redis": redis_port,
            **(services or {}),
        },
        "site_packages": product_site,
        "write": {
            "the project": str(Path(settings.BASE_DIR) / "hostile.txt"),
            "var": str(var / "hostile.txt"),
            "its own model": str(Path(own_model) / "hostile.txt"),
            "the root": "/hostile.txt",
            "the runtime code": str(Path(sandbox.__file__).parent / "hostile.py"),
        },
        "own_model": str(Path(own_model) / "MLmodel"),
        "models_root": models_root or str(environments.models_root()),
    }


def probe(address: tuple[str, int], targets: dict) -> dict:
    answer = requests.post(
        f"http://{address[0]}:{address[1]}/invocations",
        json={"dataframe_split": {"columns": ["targets"], "data": [[json.dumps(targets)]]}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return json.loads(answer.json()["predictions"][0])


def assert_confined(report: dict, targets: dict, network: str = sandbox.NETWORK_NONE) -> None:
    allowed = {
        name: outcome
        for name, outcome in report.items()
        if isinstance(outcome, str) and outcome.startswith("ALLOWED") and "control" not in name
    }
    # The only process it sees is itself (and, on a Ray node, the sandbox's own init,
    # which takes it down with the actor).
    assert report["other processes"] in ("ALLOWED: ['1']", "ALLOWED: []", "ALLOWED: ['1', '2']"), (
        report
    )
    allowed.pop("other processes")
    connects = [f"connect to {name}" for name in targets["connect"]]
    if network == sandbox.NETWORK_HOST:
        # The host's network: it connects, and Redis still wants the password.
        for name in connects:
            assert allowed.pop(name), report
        assert "NOAUTH" in report["redis without password"], report
        assert "WRONGPASS" in report["redis with a guessed password"], report
    else:
        # A network of its own: its loopback only, nothing of the host's answers.
        assert report["interfaces"] == ["lo"], report
        for name in connects:
            assert "ConnectionRefusedError" in report[name], report
    assert allowed == {}, json.dumps(allowed, indent=1)
    assert report["control: own model"].startswith("ALLOWED"), report
    assert report["control: private temp"].startswith("ALLOWED"), report
    if sandbox.sandbox_uid() is not None:
        assert report["uid"] == sandbox.sandbox_uid()
    env = report["environment"]
    assert not [k for k in env if k.startswith(("DJANGO", "REDIS", "DATABASE", "SECRET"))], env
    password = registry_password()
    assert not [k for k, v in env.items() if password in v or SECRET_VALUE in v], env
    # Of every model on the host it sees its own only; of var/ and the project, only the
    # directories on the way to its model and to the replica code.
    own = Path(targets["own_model"]).parent
    seen = report["models seen"]
    assert seen and all(own.is_relative_to(path) for path in seen), seen
    listed = report["listed"]
    var = Path(targets["list"]["var"])
    assert all(own.is_relative_to(var / name) for name in listed["var"]), listed
    assert set(listed["project"]) <= {"endpoints", ".venv"}, listed
    assert listed["logs"] == [], listed


def registry_password() -> str:
    return (Path(settings.VAR_DIR) / "redis_password").read_text().strip()
