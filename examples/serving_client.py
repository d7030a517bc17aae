"""What the example scripts share: where the registry is, and Serving UI's REST API.

An example talks to Serving UI the way a user's own code does: it logs and registers a
model in the MLflow registry the product watches, then uses nothing but HTTP and a token
to enable serving, wait until the version is up and score it through the gateway.

Configuration (environment variables, each also a command-line option):

- ``SERVING_URL``: the product's base URL (default ``http://127.0.0.1:8000``).
- ``SERVING_TOKEN``: an access token (``make run`` prints one; the **Tokens** page or
  ``manage.py create_token`` make more). Its owner needs the permission to create endpoints.
- ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``: the registry; by default the product's
  embedded one, ``var/mlflow/mlflow.db`` (``$SERVING_VAR_DIR/mlflow/mlflow.db`` if set).
- ``MLFLOW_ARTIFACT_ROOT``: where model artifacts go; by default ``var/mlflow/artifacts``
  for the embedded registry, the tracking server's own store otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "serving-ui-examples"
SERVED_STAGES = ("Staging", "Production")
API = "/api/2.0/preview/mlflow/endpoints-v2"
READY = "SERVICE_STATE_READY"
FAILED = "SERVICE_STATE_FAILED"


# --- the registry ----------------------------------------------------------------------------


def var_dir() -> Path:
    return Path(os.environ.get("SERVING_VAR_DIR") or ROOT / "var").resolve()


def tracking_uri() -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{var_dir() / 'mlflow' / 'mlflow.db'}"
    )


def registry_uri() -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def artifact_location() -> str | None:
    """Where this experiment's artifacts go, as a URI; None lets a tracking server decide.

    The embedded registry is a SQLite file: without an explicit location MLflow would write
    artifacts under the current directory, where the product's replicas would not look."""
    root = os.environ.get("MLFLOW_ARTIFACT_ROOT")
    if not root and tracking_uri().startswith("sqlite:"):
        root = str(var_dir() / "mlflow" / "artifacts")
    if not root:
        return None
    return root if "://" in root else Path(root).resolve().as_uri()


def configure_mlflow() -> str:
    """Point MLflow at the product's registry; return the examples' experiment id."""
    import mlflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location())


def pinned(*distributions: str) -> list[str]:
    """``name==version`` for each installed distribution, as a model's pip requirements.

    A local version label (torch's ``+cpu``) is dropped so that the requirement installs
    from PyPI."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in distributions]


def promote(name: str, version: str, stage: str) -> None:
    """Move a version into ``stage``, archiving the stage's other versions.

    The product notices the transition and deploys the new version; the stage URL switches
    to it once it is ready."""
    from mlflow import MlflowClient

    with warnings.catch_warnings():
        # Stages are deprecated in favour of aliases in MLflow 3, but still supported, and
        # they are what the Serving tab's stage URLs follow.
        warnings.simplefilter("ignore", FutureWarning)
        MlflowClient(tracking_uri(), registry_uri()).transition_model_version_stage(
            name, version, stage, archive_existing_versions=True
        )


def predict_locally(name: str, version: str, body: dict[str, Any]) -> Any:
    """What the served version answers for ``body``, computed in this process.

    Parses the request body with MLflow's scoring server's own parser, so the model sees the
    same input it would see behind the endpoint."""
    import mlflow
    from mlflow.pyfunc.scoring_server import infer_and_parse_data
    from mlflow.utils.proto_json_utils import NumpyEncoder

    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    data = infer_and_parse_data(body, model.metadata.get_input_schema())
    return json.loads(json.dumps(model.predict(data), cls=NumpyEncoder))


# --- the product's REST API --------------------------------------------------------------------


def invocations_path(name: str, stage: str) -> str:
    """The gateway path that serves ``stage``'s newest ready version of ``name``."""
    return f"/model-endpoint/{quote(name, safe='')}/{stage}/invocations"


class ServingAPIError(RuntimeError):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message


class ServingClient:
    """The few calls an example needs, authenticated with a bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.session.request(
            method, self.base_url + path, timeout=self.timeout, **kwargs
        )
        if response.status_code >= 400:
            try:
                error = response.json()
                code, message = error["error_code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "HTTP_ERROR", response.text[:500]
            raise ServingAPIError(response.status_code, code, message)
        return response.json()

    def check_access(self) -> None:
        """Fail fast on a wrong URL or token, before minutes of training and logging."""
        self._call("GET", f"{API}/list")

    def enable(self, name: str) -> bool:
        """Enable serving; False if it already was (the endpoint picks up new versions)."""
        try:
            self._call("POST", f"{API}/enable", json={"registered_model_name": name})
        except ServingAPIError as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        return True

    def endpoint_status(self, name: str) -> dict[str, Any]:
        params = {"registered_model_name": name}
        return self._call("GET", f"{API}/get-status", params=params)["endpoint_status"]

    def version_status(self, name: str, version: str) -> dict[str, Any] | None:
        """The version's status, or None while the endpoint does not know the version yet."""
        params = {"registered_model_name": name, "endpoint_version_name": version}
        try:
            return self._call("GET", f"{API}/get-version-status", params=params)["endpoint_status"]
        except ServingAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def aliases(self, name: str) -> dict[str, str]:
        """``{stage: version}``: which version each stage URL serves now."""
        params = {"registered_model_name": name}
        found = self._call("GET", f"{API}/list-version-aliases", params=params)["aliases"]
        return {a["alias"]: a["endpoint_version_name"] for a in found}

    def invocations_url(self, name: str, stage: str) -> str:
        return self.base_url + invocations_path(name, stage)

    def score(self, name: str, stage: str, body: dict[str, Any]) -> Any:
        return self._call("POST", invocations_path(name, stage), json=body)["predictions"]


@dataclass(frozen=True)
class Progress:
    endpoint_state: str
    version_state: str
    serving_version: str | None
    message: str

    def describe(self, version: str, stage: str) -> str:
        routed = self.serving_version or "none yet"
        return (
            f"endpoint {self.endpoint_state}, version {version} {self.version_state} "
            f"({self.message}); {stage} URL serves version {routed}"
        )


def progress(client: ServingClient, name: str, version: str, stage: str) -> Progress:
    endpoint = client.endpoint_status(name)
    status = client.version_status(name, version)
    service = (status or {}).get("service_status") or {}
    return Progress(
        endpoint_state=endpoint["state"],
        version_state=service.get("state", "SERVICE_STATE_UNKNOWN"),
        serving_version=client.aliases(name).get(stage),
        message=service.get("message") or endpoint.get("state_message") or "",
    )


def wait_until_serving(
    client: ServingClient,
    name: str,
    version: str,
    stage: str,
    *,
    timeout: float,
    echo: Callable[[str], None] = print,
    interval: float = 1.0,
) -> None:
    """Poll the status calls until the endpoint is READY and ``stage`` routes to ``version``.

    Prints a line whenever the status changes. The stage URL switches only once the new
    version is ready, so until then it may still answer with an older version."""
    started = time.monotonic()
    last = ""
    while True:
        now = progress(client, name, version, stage)
        line = now.describe(version, stage)
        if line != last:
            echo(f"  [{time.monotonic() - started:5.1f}s] {line}")
            last = line
        if now.version_state == FAILED:
            raise RuntimeError(f"version {version} failed to deploy: {now.message}")
        if (
            now.endpoint_state == "READY"
            and now.version_state == READY
            and now.serving_version == version
        ):
            return
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{name} v{version} was not serving {stage} after {timeout:.0f}s")
        time.sleep(interval)


# --- running an example ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    model_name: str
    stage: str
    serve: bool
    serving_url: str
    token: str
    output: Path | None
    timeout: float


def parse_options(description: str, default_model_name: str, argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-name", default=default_model_name, help="registered model name")
    parser.add_argument("--stage", default="Production", choices=SERVED_STAGES)
    parser.add_argument(
        "--no-serve",
        dest="serve",
        action="store_false",
        help="train, log and register only; predict locally instead of through the product",
    )
    parser.add_argument(
        "--serving-url", default=os.environ.get("SERVING_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--token", default=os.environ.get("SERVING_TOKEN", ""))
    parser.add_argument(
        "--output", type=Path, help="also write the request and predictions to this JSON file"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for the endpoint"
    )
    args = parser.parse_args(argv)
    if args.serve and not args.token:
        parser.error("set SERVING_TOKEN (or --token) to serve, or pass --no-serve")
    if args.serve:
        ServingClient(args.serving_url, args.token).check_access()
    return Options(
        model_name=args.model_name,
        stage=args.stage,
        serve=args.serve,
        serving_url=args.serving_url,
        token=args.token,
        output=args.output,
        timeout=args.timeout,
    )


def serve_and_score(options: Options, version: str, body: dict[str, Any]) -> Any:
    """Enable serving, wait until ``version`` serves the stage, score ``body`` through it."""
    name, stage = options.model_name, options.stage
    client = ServingClient(options.serving_url, options.token)
    if client.enable(name):
        print(f"Enabled serving for {name}; waiting for version {version} …")
    else:
        print(f"Serving was already enabled for {name}; waiting for version {version} …")
    wait_until_serving(client, name, version, stage, timeout=options.timeout)
    print(f"Scoring through {client.invocations_url(name, stage)}")
    return client.score(name, stage, body)


def deliver(options: Options, version: str, body: dict[str, Any]) -> Any:
    """Promote ``version`` to the stage, then score ``body`` (served, or locally).

    Returns the predictions, and writes them with the request to ``--output`` if given."""
    promote(options.model_name, version, options.stage)
    print(f"Registered {options.model_name} version {version} in {options.stage}")
    if options.serve:
        predictions = serve_and_score(options, version, body)
    else:
        print("Serving skipped (--no-serve): predicting with the registered model locally")
        predictions = predict_locally(options.model_name, version, body)
    if options.output is not None:
        result = {
            "registered_model_name": options.model_name,
            "version": version,
            "stage": options.stage,
            "served": options.serve,
            "url": options.serving_url.rstrip("/")
            + invocations_path(options.model_name, options.stage),
            "request": body,
            "predictions": predictions,
        }
        options.output.write_text(json.dumps(result, indent=2))
    return predictions


def main_guard(run: Callable[[], None]) -> None:
    """Run an example; turn the product's errors into one readable line and exit code 1."""
    try:
        run()
    except requests.ConnectionError as exc:
        url = exc.request.url if exc.request is not None else "the product"
        print(f"error: cannot reach {url}: is the product running (make run)?", file=sys.stderr)
        sys.exit(1)
    except (ServingAPIError, RuntimeError, TimeoutError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
