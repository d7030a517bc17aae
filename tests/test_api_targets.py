"""API calls for MLflow aliases as serving targets: setting and deleting an alias, which
aliases an endpoint serves, an alias's compute config, and the alias entries in status,
list-version-aliases, list-versions and the event history.

The registry is this run's real MLflow registry (``model_name``: v1 in Production, v2 in
Staging, empty artifacts: nothing is served here).
"""

from __future__ import annotations

import pytest
from conftest import add_version, assert_error

from endpoints import registry, services
from endpoints.models import ComputeConfig, Event, EventType, ServingEndpoint, StageAlias

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
UPDATE = "/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config"
ALIAS = "/api/2.0/mlflow/registered-models/alias"


@pytest.fixture
def endpoint(owner, model_name) -> ServingEndpoint:
    return services.endpoint_enable(name=model_name, user=owner)


def test_setting_an_alias_moves_it_in_mlflow_and_records_an_event(as_user, owner, endpoint):
    name = endpoint.registered_model_name
    response = as_user(owner).post(
        ALIAS, {"name": name, "alias": "champion", "version": "2"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {}
    assert registry.get_model(name).aliases == {"champion": "2"}
    event = Event.objects.get(endpoint=endpoint, type=EventType.MODEL_ALIAS_SET)
    assert (event.alias, event.endpoint_version_name) == ("champion", "2")

    response = as_user(owner).delete(ALIAS, {"name": name, "alias": "champion"}, format="json")
    assert response.status_code == 200, response.content
    assert registry.get_model(name).aliases == {}


def test_setting_an_alias_needs_manage_and_a_real_version(as_user, member, owner, endpoint):
    name = endpoint.registered_model_name
    body = {"name": name, "alias": "champion", "version": "1"}
    # As transition-stage: a registry write on a served model needs CAN_MANAGE.
    assert_error(as_user(member).post(ALIAS, body, format="json"), 403, "PERMISSION_DENIED")
    missing = {**body, "version": "99"}
    assert_error(as_user(owner).post(ALIAS, missing, format="json"), 404, "RESOURCE_DOES_NOT_EXIST")
    reserved = {**body, "alias": "latest"}
    assert_error(
        as_user(owner).post(ALIAS, reserved, format="json"), 400, "INVALID_PARAMETER_VALUE"
    )
    assert registry.get_model(name).aliases == {}


def test_served_aliases_limit_and_restore(as_user, owner, member, endpoint):
    name = endpoint.registered_model_name
    url = V2 + "update-served-aliases"
    response = as_user(owner).put(
        url, {"registered_model_name": name, "served_aliases": ["champion"]}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["endpoint_status"]["served_aliases"] == ["champion"]
    endpoint.refresh_from_db()
    assert endpoint.served_aliases == ["champion"]
    assert Event.objects.filter(endpoint=endpoint, type=EventType.SERVED_ALIASES_CHANGED).exists()

    response = as_user(owner).put(
        url, {"registered_model_name": name, "served_aliases": None}, format="json"
    )
    assert "served_aliases" not in response.json()["endpoint_status"]
    endpoint.refresh_from_db()
    assert endpoint.served_aliases is None

    bad = {"registered_model_name": name, "served_aliases": ["no spaces"]}
    assert_error(as_user(owner).put(url, bad, format="json"), 400, "INVALID_PARAMETER_VALUE")
    assert_error(
        as_user(owner).put(url, {"registered_model_name": name}, format="json"),
        400,
        "INVALID_PARAMETER_VALUE",
    )
    denied = {"registered_model_name": name, "served_aliases": []}
    assert_error(as_user(member).put(url, denied, format="json"), 404, "RESOURCE_DOES_NOT_EXIST")


def test_an_alias_has_its_own_compute_config(as_user, owner, endpoint):
    name = endpoint.registered_model_name
    body = {
        "registered_model_name": name,
        "alias": "champion",
        "desired_workload_config_spec": {
            "workload_size_id": "Medium",
            "scale_to_zero_enabled": True,
        },
    }
    response = as_user(owner).put(UPDATE, body, format="json")
    assert response.status_code == 200, response.content
    config = response.json()["compute_config"]
    assert config["alias"] == "champion" and "stage" not in config
    assert config["workload_spec"] == {"workload_size_id": "Medium", "scale_to_zero_enabled": True}
    assert ComputeConfig.objects.get(endpoint=endpoint, stage="@champion").workload_size == "Medium"
    status = as_user(owner).get(V2 + "get-status", {"registered_model_name": name}).json()
    targets = [
        c.get("stage") or "@" + c["alias"] for c in status["endpoint_status"]["compute_config"]
    ]
    assert targets == ["Staging", "Production", "@champion"]

    both = {**body, "stage": "Production"}
    assert_error(as_user(owner).put(UPDATE, both, format="json"), 400, "INVALID_PARAMETER_VALUE")
    neither = {k: v for k, v in body.items() if k != "alias"}
    assert_error(as_user(owner).put(UPDATE, neither, format="json"), 400, "INVALID_PARAMETER_VALUE")


def test_status_calls_name_the_aliases(as_user, owner, endpoint):
    name = endpoint.registered_model_name
    version = add_version(endpoint, "1", "Production", registry_aliases=["champion"])
    StageAlias.objects.create(endpoint=endpoint, stage="@champion", version=version)
    api = as_user(owner)
    aliases = api.get(V2 + "list-version-aliases", {"registered_model_name": name}).json()
    assert aliases == {
        "aliases": [
            {"alias": "Production", "endpoint_version_name": "1"},
            {"alias": "@champion", "endpoint_version_name": "1"},
        ]
    }
    [status] = api.get(V2 + "list-versions", {"registered_model_name": name}).json()[
        "endpoint_statuses"
    ]
    assert status["aliases"] == ["champion"]
    Event.record(
        endpoint, EventType.VERSION_ALIAS_MOVED, "moved", version=version, alias="champion"
    )
    [event] = api.get(
        V2 + "get-event-history",
        {"registered_model_name": name, "endpoint_version_name": "1"},
    ).json()["events"]
    assert (event["alias"], event["stage"]) == ("champion", "Production")
