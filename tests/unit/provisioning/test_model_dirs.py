"""Where a version's model files live: keyed by the model's exact name, the version and
the version's identity in the registry, so two models never share files and a model
registered again never runs from the files of the one that was deleted."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from endpoints import registry
from endpoints.models import EndpointVersion, ServingEndpoint
from endpoints.provisioning import converge, environments, observe
from tests.support.models import constant_model, register
from tests.support.rows import add_version


@pytest.fixture
def data_dir(settings, tmp_path: Path) -> Path:
    settings.SERVING = {**settings.SERVING, "DATA_DIR": tmp_path / "serving"}
    return tmp_path / "serving"


def _answer(model_path: str) -> str:
    import mlflow

    return mlflow.pyfunc.load_model(model_path).predict(pd.DataFrame({"x": [1]}))[0]


def test_names_differing_only_in_punctuation_never_share_files(demo_registry, data_dir):
    suffix = uuid.uuid4().hex[:6]
    spaced, underscored = f"credit risk {suffix}", f"credit_risk_{suffix}"
    register(spaced, constant_model("spaced"))
    register(underscored, constant_model("underscored"))
    first = environments.prepare(spaced, "1")
    second = environments.prepare(underscored, "1")
    assert Path(first.model_path).parent != Path(second.model_path).parent
    assert _answer(first.model_path) == "spaced"
    assert _answer(second.model_path) == "underscored"
    # Their build logs and replica logs are apart too.
    assert environments.build_log_path(spaced, "1") != environments.build_log_path(underscored, "1")
    assert environments.replica_log_path(spaced, "1", "r") != environments.replica_log_path(
        underscored, "1", "r"
    )


def test_reregistered_model_is_not_served_from_old_files(demo_registry, data_dir):
    name = f"reborn-{uuid.uuid4().hex[:6]}"
    register(name, constant_model("old"))
    old = environments.prepare(name, "1")
    registry.client().delete_registered_model(name)
    register(name, constant_model("new"))
    new = environments.prepare(name, "1")
    assert new.model_path != old.model_path
    assert _answer(new.model_path) == "new"


def test_a_version_row_pointing_at_other_files_is_prepared_again(db, admin_user, data_dir):
    name = f"reborn-{uuid.uuid4().hex[:6]}"
    register(name, constant_model("old"))
    old = environments.prepare(name, "1")
    registry.transition_stage(name, "1", "Production")
    endpoint = ServingEndpoint.objects.create(registered_model_name=name, creator=admin_user)
    row = add_version(endpoint, "1", "Production", model_path=old.model_path)
    # Unchanged in the registry: the row keeps its files.
    converge.forget_stale_files(endpoint, observe.registry_stages(endpoint).model_dirs)
    assert EndpointVersion.objects.get(pk=row.pk).model_path == old.model_path
    # Deleted and registered again: the same version number names other files.
    registry.client().delete_registered_model(name)
    register(name, constant_model("new"))
    registry.transition_stage(name, "1", "Production")
    converge.forget_stale_files(endpoint, observe.registry_stages(endpoint).model_dirs)
    assert EndpointVersion.objects.get(pk=row.pk).model_path == ""
