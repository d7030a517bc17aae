"""The one module that talks to the MLflow Model Registry.

Everything else asks this module for plain data (dataclasses), so that the rest of the
product does not depend on MLflow's client objects and tests can stand a fake in its place.
Stages are MLflow's (deprecated but still supported) stages; the product honours every
transition, whether it came through our API or straight from MLflow.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings

SERVED_STAGES = ("Staging", "Production")
ALL_STAGES = ("None", "Staging", "Production", "Archived")


class RegistryError(Exception):
    """The registry could not answer (unreachable, misconfigured)."""


class ModelNotFound(RegistryError):
    pass


class VersionNotFound(RegistryError):
    pass


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    stage: str
    creation_timestamp: int
    last_updated_timestamp: int
    run_id: str = ""
    source: str = ""
    status: str = "READY"
    description: str = ""
    aliases: tuple[str, ...] = ()

    def as_mlflow_json(self) -> dict[str, Any]:
        """The ``model_version`` object as MLflow's REST API returns it."""
        return {
            "name": self.name,
            "version": self.version,
            "creation_timestamp": self.creation_timestamp,
            "last_updated_timestamp": self.last_updated_timestamp,
            "current_stage": self.stage,
            "description": self.description,
            "source": self.source,
            "run_id": self.run_id,
            "status": self.status,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    description: str = ""
    creation_timestamp: int = 0
    versions: list[ModelVersionInfo] = field(default_factory=list)
    # {alias: version} of the model's MLflow aliases.
    aliases: dict[str, str] = field(default_factory=dict)


@cache
def _client_for(tracking_uri: str, registry_uri: str):  # -> MlflowClient
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


def client():
    return _client_for(settings.MLFLOW_TRACKING_URI, settings.MLFLOW_REGISTRY_URI)


def configure_mlflow() -> None:
    """Point the global ``mlflow`` module at our registry (for scripts that log models)."""
    import mlflow

    mlflow.set_tracking_uri(settings.MLFLOW_TRACKING_URI)
    mlflow.set_registry_uri(settings.MLFLOW_REGISTRY_URI)


def ensure_experiment(name: str) -> str:
    """An experiment whose artifacts live under MLFLOW_ARTIFACT_ROOT (not the cwd)."""
    c = client()
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = settings.MLFLOW_ARTIFACT_ROOT
    location = root if "://" in root else Path(root).resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def _version_info(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        stage=mv.current_stage or "None",
        creation_timestamp=int(mv.creation_timestamp or 0),
        last_updated_timestamp=int(mv.last_updated_timestamp or 0),
        run_id=mv.run_id or "",
        source=mv.source or "",
        status=mv.status or "READY",
        description=mv.description or "",
        aliases=tuple(getattr(mv, "aliases", None) or ()),
    )


def _search_versions(name: str) -> list[ModelVersionInfo]:
    from mlflow.exceptions import MlflowException

    try:
        found = client().search_model_versions(f"name = {_literal(name)}")
    except MlflowException as exc:
        raise RegistryError(str(exc)) from exc
    versions = [_version_info(mv) for mv in found]
    return sorted(versions, key=lambda v: int(v.version))


def _literal(value: str) -> str:
    """``value`` as a string literal of MLflow's search filters.

    The filter parser takes no escapes inside a literal, but either quote delimits one: a
    value with a single quote goes in double quotes."""
    return f'"{value}"' if "'" in value else f"'{value}'"


@dataclass(frozen=True)
class ModelPage:
    """One page of registered models; ``versions`` holds each model's latest version per
    stage. ``next_page_token`` is MLflow's opaque token for the next page (None: last)."""

    models: list[RegisteredModelInfo]
    next_page_token: str | None


class InvalidPageToken(RegistryError):
    pass


def _latest_info(m: Any) -> RegisteredModelInfo:
    latest = sorted(
        (_version_info(v) for v in m.latest_versions or ()), key=lambda v: int(v.version)
    )
    return RegisteredModelInfo(
        name=m.name,
        description=m.description or "",
        creation_timestamp=int(m.creation_timestamp or 0),
        versions=latest,
    )


def search_models(
    *,
    name_contains: str = "",
    names: list[str] | None = None,
    max_results: int = 50,
    page_token: str | None = None,
) -> ModelPage:
    """A page of registered models by name: those whose name contains ``name_contains``
    (case-insensitive), or exactly ``names``.

    One query for the page and one for the latest versions of all its models (MLflow
    batches them), whatever the size of the registry."""
    from mlflow.exceptions import MlflowException

    clauses = []
    if name_contains:
        # A literal cannot hold both quotes; '_' (any one character) stands in for one.
        pattern = name_contains.replace("'", "_") if '"' in name_contains else name_contains
        clauses.append(f"name ILIKE {_literal(f'%{pattern}%')}")
    if names is not None:
        if not names:
            return ModelPage([], None)
        clauses.append("name IN (" + ", ".join(_literal(n) for n in names) + ")")
    try:
        found = client().search_registered_models(
            filter_string=" AND ".join(clauses) or None,
            max_results=max_results,
            order_by=["name ASC"],
            page_token=page_token or None,
        )
    except MlflowException as exc:
        if page_token and "page token" in str(exc).lower():
            raise InvalidPageToken(str(exc)) from exc
        raise RegistryError(str(exc)) from exc
    token = found.token
    # The SQL store hands out bytes, a tracking server a string; the page links need text.
    if isinstance(token, bytes):
        token = token.decode()
    return ModelPage([_latest_info(m) for m in found], token or None)


def get_model(name: str) -> RegisteredModelInfo:
    from mlflow.exceptions import MlflowException

    try:
        m = client().get_registered_model(name)
    except MlflowException as exc:
        if _is_not_found(exc):
            raise ModelNotFound(f"Registered model '{name}' does not exist.") from exc
        raise RegistryError(str(exc)) from exc
    return RegisteredModelInfo(
        name=m.name,
        description=m.description or "",
        creation_timestamp=int(m.creation_timestamp or 0),
        versions=_search_versions(m.name),
        aliases={alias: str(v) for alias, v in (getattr(m, "aliases", None) or {}).items()},
    )


def model_exists(name: str) -> bool:
    try:
        get_model(name)
    except ModelNotFound:
        return False
    return True


def get_version(name: str, version: str) -> ModelVersionInfo:
    from mlflow.exceptions import MlflowException

    try:
        mv = client().get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_not_found(exc):
            raise VersionNotFound(f"Model version '{name}' v{version} does not exist.") from exc
        raise RegistryError(str(exc)) from exc
    return _version_info(mv)


def stage_versions(name: str) -> dict[str, str]:
    """{version: stage} for every version now in Staging or Production."""
    return serving_targets(name)[0]


def serving_targets(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """({version: stage} of the Staging/Production versions, {alias: version} of every
    alias), from one read of the model."""
    model = get_model(name)
    stages = {v.version: v.stage for v in model.versions if v.stage in SERVED_STAGES}
    return stages, dict(model.aliases)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point MLflow alias ``alias`` of model ``name`` at ``version``."""
    from mlflow.exceptions import MlflowException

    try:
        client().set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        if _is_not_found(exc):
            raise VersionNotFound(f"Model version '{name}' v{version} does not exist.") from exc
        raise RegistryError(str(exc)) from exc


def delete_alias(name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client().delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if _is_not_found(exc):
            raise ModelNotFound(f"Model '{name}' has no alias '{alias}'.") from exc
        raise RegistryError(str(exc)) from exc


def transition_stage(
    name: str, version: str, stage: str, *, archive_existing_versions: bool = False
) -> ModelVersionInfo:
    from mlflow.exceptions import MlflowException

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mv = client().transition_model_version_stage(
                name, str(version), stage, archive_existing_versions=archive_existing_versions
            )
    except MlflowException as exc:
        if _is_not_found(exc):
            raise VersionNotFound(f"Model version '{name}' v{version} does not exist.") from exc
        raise RegistryError(str(exc)) from exc
    return _version_info(mv)


def download_model(name: str, version: str, dst: Path) -> Path:
    """Download a version's model artifact into ``dst`` (replaced atomically) and return it."""
    from mlflow.artifacts import download_artifacts

    source = get_model_version_download_uri(name, version)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    local = Path(download_artifacts(artifact_uri=source, dst_path=str(tmp)))
    shutil.rmtree(dst, ignore_errors=True)
    local.rename(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    return dst


def get_model_version_download_uri(name: str, version: str) -> str:
    return client().get_model_version_download_uri(name, str(version))


def input_example(model_dir: Path) -> dict[str, Any] | None:
    """The logged input example of a downloaded model, as a scoring request body.

    MLflow stores it next to the MLmodel file; ``serving_input_example.json`` is already a
    request body, the older ``input_example.json`` is a split-oriented frame."""
    serving = model_dir / "serving_input_example.json"
    if serving.exists():
        return json.loads(serving.read_text())
    raw = model_dir / "input_example.json"
    if raw.exists():
        data = json.loads(raw.read_text())
        if isinstance(data, dict) and {"columns", "data"} <= data.keys():
            return {"dataframe_split": data}
        return {"inputs": data}
    return None
