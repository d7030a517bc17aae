"""API calls for MLflow aliases as serving targets (setting and deleting an alias, which
aliases an endpoint serves, an alias's compute config, the alias entries in status,
list-version-aliases, list-versions and the event history), traffic splits and inference
tables.

The registry is this run's real MLflow registry (``model_name``: v1 in Production, v2 in
Staging, empty artifacts: nothing is served here).
"""

from __future__ import annotations

import pytest

from endpoints import registry, services
from endpoints.models import (
    ComputeConfig,
    Event,
    EventType,
    ServingEndpoint,
    StageAlias,
    TrafficSplit,
)
from tests.support.api import assert_error
from tests.support.rows import add_version

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


# --- traffic splits ----------------------------------------------------------------------------


SPLIT = V2 + "update-traffic-split"


def two_ready_versions(endpoint: ServingEndpoint) -> None:
    """v1 serves Production and @champion, v2 serves Staging: both READY."""
    v1 = add_version(endpoint, "1", "Production", registry_aliases=["champion"])
    StageAlias.objects.create(endpoint=endpoint, stage="@champion", version=v1)
    add_version(endpoint, "2", "Staging")


def shares(*pairs: tuple[str, int]) -> list[dict]:
    return [{"endpoint_version_name": v, "traffic_percentage": p} for v, p in pairs]


def test_a_split_is_set_read_and_rolled_back(as_user, owner, endpoint):
    two_ready_versions(endpoint)
    name = endpoint.registered_model_name
    api = as_user(owner)
    body = {
        "registered_model_name": name,
        "alias": "champion",
        "traffic": shares(("1", 90), ("2", 10)),
    }
    response = api.put(SPLIT, body, format="json")
    assert response.status_code == 200, response.content
    [split] = response.json()["traffic_splits"]
    assert split["alias"] == "champion" and "stage" not in split
    assert split["traffic"] == shares(("1", 90), ("2", 10))
    assert TrafficSplit.objects.get(endpoint=endpoint, target="@champion").weights == {
        "1": 90,
        "2": 10,
    }
    status = api.get(V2 + "get-status", {"registered_model_name": name}).json()["endpoint_status"]
    assert status["traffic_splits"] == [split]
    assert api.get(V2 + "get-traffic-splits", {"registered_model_name": name}).json() == {
        "traffic_splits": [split]
    }
    assert Event.objects.filter(endpoint=endpoint, type=EventType.TRAFFIC_SPLIT_CHANGED).exists()

    rollback = {"registered_model_name": name, "alias": "champion"}
    response = api.post(V2 + "rollback-traffic-split", rollback, format="json")
    assert response.json() == {"traffic_splits": []}
    assert_error(
        api.post(V2 + "rollback-traffic-split", rollback, format="json"),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )


@pytest.mark.parametrize(
    ("target", "traffic", "why"),
    [
        ({"alias": "champion"}, shares(("1", 90), ("2", 20)), "add up to 100"),
        ({"alias": "champion"}, shares(("1", 100)), "two or more versions"),
        ({"alias": "champion"}, shares(("1", 50), ("3", 50)), "not ready: 3"),
        ({"alias": "nobody"}, shares(("1", 50), ("2", 50)), "@nobody is not served"),
        ({"stage": "Production"}, shares(("1", 50), ("1", 50)), "listed twice"),
    ],
)
def test_a_split_needs_ready_versions_adding_up_to_100_on_a_served_target(
    as_user, owner, endpoint, target, traffic, why
):
    two_ready_versions(endpoint)
    add_version(endpoint, "3", "", state="SERVICE_STATE_PENDING")
    body = {"registered_model_name": endpoint.registered_model_name, **target, "traffic": traffic}
    error = assert_error(
        as_user(owner).put(SPLIT, body, format="json"), 400, "INVALID_PARAMETER_VALUE"
    )
    assert why in error["message"]
    assert not TrafficSplit.objects.exists()


def test_splits_need_manage(as_user, owner, member, endpoint):
    two_ready_versions(endpoint)
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    body = {
        "registered_model_name": endpoint.registered_model_name,
        "stage": "Production",
        "traffic": shares(("1", 50), ("2", 50)),
    }
    assert_error(as_user(member).put(SPLIT, body, format="json"), 403, "PERMISSION_DENIED")


def test_promoting_sends_everything_to_the_version_and_moves_the_alias(as_user, owner, endpoint):
    two_ready_versions(endpoint)
    name = endpoint.registered_model_name
    body = {"registered_model_name": name, "alias": "champion", "endpoint_version_name": "2"}
    response = as_user(owner).post(V2 + "promote-traffic-split", body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["traffic_splits"][0]["traffic"] == shares(("2", 100))
    assert registry.get_model(name).aliases == {"champion": "2"}


# --- inference tables ----------------------------------------------------------------------------


def test_the_inference_table_is_opt_in_with_a_sampling_rate(as_user, owner, member, endpoint):
    name = endpoint.registered_model_name
    api = as_user(owner)
    table = api.get(V2 + "get-inference-table", {"registered_model_name": name}).json()
    assert table["inference_table"]["enabled"] is False
    assert table["rows"] == []
    body = {"registered_model_name": name, "enabled": True, "sample_rate": 0.25}
    response = api.put(V2 + "update-inference-table", body, format="json")
    assert response.status_code == 200, response.content
    info = response.json()["inference_table"]
    assert (info["enabled"], info["sample_rate"], info["dropped_requests"]) == (True, 0.25, 0)
    assert info["dropped_requests_by_reason"] == {"queue_full": 0, "write_failed": 0, "shutdown": 0}
    assert info["location"].endswith(name)
    assert Event.objects.filter(endpoint=endpoint, type=EventType.INFERENCE_TABLE_CHANGED).exists()
    bad = {**body, "sample_rate": 0}
    assert_error(
        api.put(V2 + "update-inference-table", bad, format="json"), 400, "INVALID_PARAMETER_VALUE"
    )
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    denied = as_user(member).put(V2 + "update-inference-table", body, format="json")
    assert_error(denied, 403, "PERMISSION_DENIED")


def captured(name: str, request: str) -> None:
    from datetime import UTC, datetime

    from endpoints.telemetry import inference_tables

    row = (1.0, name, "Production", "1", 200, 2.5, 7, request, '{"predictions": [0]}')
    inference_tables.write_batch(name, datetime.now(UTC).date(), [row])


def test_captured_rows_are_answered_with_manage_only_and_settings_with_view(
    as_user, owner, member, endpoint, settings, tmp_path
):
    settings.SERVING = {**settings.SERVING, "INFERENCE_DIR": tmp_path}
    name = endpoint.registered_model_name
    captured(name, '{"inputs": ["private"]}')
    query = {"registered_model_name": name}
    for level in ("CAN_VIEW", "CAN_QUERY"):
        services.permission_set(endpoint=endpoint, user=member, level=level, by=owner)
        response = as_user(member).get(V2 + "get-inference-table", query)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"inference_table", "message"}
        assert body["inference_table"]["enabled"] is False
        assert "needs CAN_MANAGE" in body["message"]
        assert "private" not in response.content.decode()
    body = as_user(owner).get(V2 + "get-inference-table", query).json()
    assert [row["request"] for row in body["rows"]] == ['{"inputs": ["private"]}']
    assert body["unreadable_files"] == []
    assert "message" not in body


def test_files_that_cannot_be_read_are_skipped_and_named(
    as_user, owner, endpoint, settings, tmp_path
):
    settings.SERVING = {**settings.SERVING, "INFERENCE_DIR": tmp_path}
    name = endpoint.registered_model_name
    captured(name, "readable")
    [partition] = (tmp_path / name).glob("date=*")
    (partition / "0-broken.parquet").write_bytes(b"not parquet")
    response = as_user(owner).get(V2 + "get-inference-table", {"registered_model_name": name})
    assert response.status_code == 200, response.content
    body = response.json()
    assert [row["request"] for row in body["rows"]] == ["readable"]
    assert body["unreadable_files"] == [f"{partition.name}/0-broken.parquet"]
    assert "0-broken.parquet" in body["message"]
