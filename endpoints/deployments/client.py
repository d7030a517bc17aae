"""``mlflow deployments … -t serving-ui``: a deployment is a registered model's endpoint.

``--name`` is the registered model's name. ``create`` moves the version named by the model
URI (``models:/<name>/<version>``) into a stage (``-C stage=Production``, the default, or
``Staging``) and enables serving; ``update`` moves another version in (and may change the
stage's compute); ``delete`` disables serving; ``get`` and ``list`` return the endpoint's
status objects; ``predict`` scores through the product's gateway, ``<name>`` meaning
Production, ``<name>/Staging`` or ``<name>/<version>`` another route.
"""

from __future__ import annotations

import re
from typing import Any

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse

from .chunking import merge_answers, progress, request_chunks
from .errors import ServingUIError
from .http import TARGET, Connection, settings_for

STAGES = ("Staging", "Production")
FLAVOR = "python_function"
TRANSITION = "/api/2.0/mlflow/model-versions/transition-stage"
UPDATE_COMPUTE = "/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config"
# A stage's limits per replica and autoscaling, as the API names them (None, "" or
# "default": the workload size's again).
TUNABLE_KEYS = (
    "cpus",
    "memory_mb",
    "max_processes",
    "tmp_mb",
    "gpus",
    "min_replicas",
    "max_replicas",
    "target_concurrency",
    "scale_down_delay_seconds",
    "scale_to_zero_delay_seconds",
)
FRACTIONAL_KEYS = ("cpus", "gpus")
COMPUTE_KEYS = {"workload_size", "workload_type", "scale_to_zero", *TUNABLE_KEYS}
CONFIG_KEYS = {"stage", "archive_existing_versions", *COMPUTE_KEYS}
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/]+)/(?P<version>\d+)$")

HELP = f"""Serving UI: serve MLflow registry models as autoscaled REST endpoints.

Target URI: {TARGET} (the address is SERVING_UI_URL, default http://127.0.0.1:8000) or
{TARGET}:/<url>, e.g. {TARGET}:/http://127.0.0.1:8000. The token is SERVING_UI_TOKEN.

A deployment is a registered model's endpoint; --name is the model's name.
  create  -m models:/<name>/<version> [-C stage=Production|Staging]
          moves that version into the stage and enables serving
  update  [-m models:/<name>/<version>] [-C stage=…] [-C workload_size=Small|Medium|Large]
          [-C scale_to_zero=true|false] [-C workload_type=CPU|GPU_SMALL|GPU_MEDIUM|
          GPU_LARGE|MULTIGPU_MEDIUM]
          limits per replica: [-C cpus=2] [-C memory_mb=8192] [-C max_processes=512]
          [-C tmp_mb=2048] [-C gpus=1]; autoscaling: [-C min_replicas=1]
          [-C max_replicas=4] [-C target_concurrency=8] [-C scale_down_delay_seconds=60]
          [-C scale_to_zero_delay_seconds=900]; "default" resets one to the size's
  delete  disables serving;  get / list  the endpoint status objects
  predict --name <name>[/Staging|/<version>] --input-path data.json
          (Production unless the name says otherwise; inputs over SERVING_UI_CHUNK_ROWS
          rows, 256 by default, go as several requests)
Config: archive_existing_versions=true|false (default true: the version replaces the
stage's others).
"""


def target_help() -> str:
    return HELP


def run_local(target, name, model_uri, flavor=None, config=None):
    raise ServingUIError(
        "serving-ui deploys to a running Serving UI, not locally: use `mlflow deployments "
        "create -t serving-ui`, or `mlflow models serve` for a local server.",
        "INVALID_PARAMETER_VALUE",
    )


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ServingUIError(f"{key} must be true or false, not {value!r}.", "INVALID_PARAMETER_VALUE")


def _tunable(key: str, value: Any) -> float | None:
    """A ``-C`` limit or autoscaling value as the API takes it: a number, or None for the
    workload size's own."""
    if value is None or str(value).strip().lower() in ("", "default", "none", "null"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or (key not in FRACTIONAL_KEYS and number != int(number)):
        kind = "a number" if key in FRACTIONAL_KEYS else "a whole number"
        raise ServingUIError(f"{key} must be {kind}, not {value!r}.", "INVALID_PARAMETER_VALUE")
    return number if key in FRACTIONAL_KEYS else int(number)


def _checked_config(config: dict[str, Any] | None) -> dict[str, Any]:
    config = dict(config or {})
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ServingUIError(
            f"Unknown config {', '.join(sorted(unknown))}: serving-ui takes "
            f"{', '.join(sorted(CONFIG_KEYS))}.",
            "INVALID_PARAMETER_VALUE",
        )
    stage = str(config.get("stage", "Production"))
    matched = [s for s in STAGES if s.lower() == stage.lower()]
    if not matched:
        raise ServingUIError(
            f"stage must be Staging or Production, not {stage!r}.", "INVALID_PARAMETER_VALUE"
        )
    config["stage"] = matched[0]
    for key in TUNABLE_KEYS:
        if key in config:
            config[key] = _tunable(key, config[key])
    return config


def version_from_uri(name: str, model_uri: str) -> str:
    """The version of ``models:/<name>/<version>`` (or a bare version number)."""
    if model_uri.isdigit():
        return model_uri
    match = _MODEL_URI.match(model_uri)
    if match is None or match["name"] != name:
        raise ServingUIError(
            f"The model URI must name a version of '{name}' as models:/{name}/<version>, "
            f"not {model_uri!r}.",
            "INVALID_PARAMETER_VALUE",
        )
    return match["version"]


def route_of(deployment_name: str) -> tuple[str, str]:
    """``(model, stage or version)``: Production unless the name ends in /Staging,
    /Production or /<version> (model names cannot hold a '/')."""
    name, _, route = deployment_name.rpartition("/")
    if not name:
        return deployment_name, "Production"
    stage = [s for s in STAGES if s.lower() == route.lower()]
    if stage:
        return name, stage[0]
    if route.isdigit():
        return name, route
    raise ServingUIError(
        f"Name the deployment <model>, <model>/Staging, <model>/Production or "
        f"<model>/<version>, not {deployment_name!r}.",
        "INVALID_PARAMETER_VALUE",
    )


class ServingUIDeploymentClient(BaseDeploymentClient):
    """Drives one Serving UI through its REST API and scoring URLs."""

    def __init__(self, target_uri: str = TARGET) -> None:
        super().__init__(target_uri)
        self.settings = settings_for(target_uri)
        self.connection = Connection(self.settings)

    # --- deployments = endpoints ---------------------------------------------------------

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        config = _checked_config(config)
        self._check_flavor(flavor)
        version = version_from_uri(name, model_uri)
        if self._status_or_none(name) is not None:
            raise ServingUIError(
                f"Serving is already enabled for '{name}': use `mlflow deployments update` "
                "to deploy another version.",
                "RESOURCE_ALREADY_EXISTS",
            )
        self._transition(name, version, config)
        status = self.connection.api("POST", "enable", registered_model_name=name)
        status = self._apply_compute(name, config) or status["endpoint_status"]
        return self._deployment(name, status, version=version, stage=config["stage"])

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        config = _checked_config(config)
        self._check_flavor(flavor)
        status = self._status(name)
        version = None
        if model_uri:
            version = version_from_uri(name, model_uri)
            self._transition(name, version, config)
        status = self._apply_compute(name, config) or status
        return self._deployment(name, status, version=version, stage=config["stage"])

    def delete_deployment(self, name, config=None, endpoint=None):
        self.connection.api("POST", "disable", registered_model_name=name)

    def list_deployments(self, endpoint=None):
        answer = self.connection.api("GET", "list")
        return [{"name": e["registered_model_name"], **e} for e in answer.get("endpoints", [])]

    def get_deployment(self, name, endpoint=None):
        status = self._status(name)
        versions = self.connection.api("GET", "list-versions", registered_model_name=name)
        aliases = self.connection.api("GET", "list-version-aliases", registered_model_name=name)
        return {
            "name": name,
            **status,
            "versions": versions.get("endpoint_statuses", []),
            "aliases": aliases.get("aliases", []),
        }

    # --- scoring ---------------------------------------------------------------------------

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        if not deployment_name:
            raise ServingUIError("predict needs the deployment's name.", "INVALID_PARAMETER_VALUE")
        model, route = route_of(deployment_name)
        chunks = request_chunks(inputs, self.settings.chunk_rows)
        answers = []
        with progress(sum(c.rows for c in chunks), len(chunks)) as bar:
            for chunk in chunks:
                answers.append(self.connection.invoke(model, route, chunk.body))
                bar.update(chunk.rows)
        return PredictionsResponse(merge_answers(answers))

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _check_flavor(flavor: str | None) -> None:
        if flavor and flavor != FLAVOR:
            raise ServingUIError(
                f"serving-ui serves the {FLAVOR} flavor only, not {flavor!r}.",
                "INVALID_PARAMETER_VALUE",
            )

    def _status(self, name: str) -> dict[str, Any]:
        answer = self.connection.api("GET", "get-status", registered_model_name=name)
        return answer["endpoint_status"]

    def _status_or_none(self, name: str) -> dict[str, Any] | None:
        try:
            return self._status(name)
        except ServingUIError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _transition(self, name: str, version: str, config: dict[str, Any]) -> None:
        self.connection.api(
            "POST",
            TRANSITION,
            name=name,
            version=version,
            stage=config["stage"],
            archive_existing_versions=_flag(config, "archive_existing_versions", True),
        )

    def _apply_compute(self, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """Change the stage's compute settings the config names, keeping the others; the
        new endpoint status, or None when nothing was asked."""
        if not COMPUTE_KEYS & set(config):
            return None
        status = self._status(name)
        current = next(
            (
                c["workload_spec"]
                for c in status["compute_config"]
                if c.get("stage") == config["stage"]
            ),
            {"workload_size_id": "Small", "scale_to_zero_enabled": False},
        )
        spec = {
            **current,
            "workload_size_id": str(config.get("workload_size", current["workload_size_id"])),
            "scale_to_zero_enabled": _flag(
                config, "scale_to_zero", current["scale_to_zero_enabled"]
            ),
            **{key: config[key] for key in TUNABLE_KEYS if key in config},
        }
        if "workload_type" in config:
            spec["workload_type"] = str(config["workload_type"])
        self.connection.api(
            "PUT",
            UPDATE_COMPUTE,
            registered_model_name=name,
            stage=config["stage"],
            desired_workload_config_spec=spec,
        )
        return self._status(name)

    @staticmethod
    def _deployment(name: str, status: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": name, "flavor": FLAVOR, **{k: v for k, v in extra.items() if v}, **status}
