"""The endpoints-v2 management calls: enable, disable, update-compute-config,
restart-compute-config-update, transition-stage, and the rate limit on them.

The registry is this run's real MLflow registry; each test registers a model of its own
(with empty artifacts: nothing is served here) and deletes it afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import override_settings
from rest_framework.test import APIClient

from endpoints import registry, services
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Event,
    EventType,
    ServiceState,
    ServingEndpoint,
)
from tests.support.api import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
UPDATE = "/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config"
TRANSITIONS = (
    "/api/2.0/mlflow/databricks/model-versions/transition-stage",
    "/api/2.0/mlflow/model-versions/transition-stage",
)
ENDPOINT_STATUS_KEYS = {"registered_model_name", "state", "state_message", "compute_config"}
MODEL_VERSION_KEYS = {
    "name",
    "version",
    "creation_timestamp",
    "last_updated_timestamp",
    "current_stage",
    "description",
    "source",
    "run_id",
    "status",
    "aliases",
}


def enable(api: APIClient, name: str):
    return api.post(V2 + "enable", {"registered_model_name": name}, format="json")


# --- enable ----------------------------------------------------------------------------------


def test_enable_creates_the_endpoint_pending(as_user, owner, model_name):
    response = enable(as_user(owner), model_name)
    assert response.status_code == 200, response.content
    status = response.json()["endpoint_status"]
    assert set(status) == ENDPOINT_STATUS_KEYS
    assert status["state"] == "PENDING"
    assert [c["stage"] for c in status["compute_config"]] == ["Staging", "Production"]
    assert all(c["user_id"] == "alice@example.com" for c in status["compute_config"])
    endpoint = ServingEndpoint.objects.get(registered_model_name=model_name)
    assert endpoint.enabled
    assert endpoint.creator == owner
    assert endpoint.events.filter(type=EventType.ENDPOINT_ENABLED).exists()


def test_enable_twice_is_already_exists(as_user, owner, model_name):
    api = as_user(owner)
    assert enable(api, model_name).status_code == 200
    assert_error(enable(api, model_name), 409, "RESOURCE_ALREADY_EXISTS")


def test_enable_unknown_model_is_not_found(as_user, owner):
    (Path(settings.VAR_DIR) / "mlflow").mkdir(parents=True, exist_ok=True)
    body = assert_error(enable(as_user(owner), "no-such-model"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert "no-such-model" in body["message"]


@pytest.mark.parametrize("name", ["a/b", "x:y", "   ", ".", "..hidden"])
def test_enable_a_name_the_registry_cannot_hold_is_not_found(as_user, owner, name):
    assert_error(enable(as_user(owner), name), 404, "RESOURCE_DOES_NOT_EXIST")


def test_enable_needs_the_create_permission(as_user, member, model_name):
    body = assert_error(enable(as_user(member), model_name), 403, "PERMISSION_DENIED")
    assert "permission" in body["message"]
    assert not ServingEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "Missing value for required parameter 'registered_model_name'."),
        ({"registered_model_name": ""}, "registered_model_name"),
        ({"registered_model_name": 7}, "registered_model_name"),
        ({"registered_model_name": "x" * 257}, "registered_model_name"),
    ],
)
def test_enable_rejects_bad_arguments(as_user, owner, payload, fragment):
    response = as_user(owner).post(V2 + "enable", payload, format="json")
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert fragment in body["message"]


def test_enable_accepts_curls_default_content_type(as_user, owner, model_name):
    response = as_user(owner).generic(
        "POST",
        V2 + "enable",
        f'{{"registered_model_name": "{model_name}"}}',
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200, response.content


def test_enable_requires_authentication(model_name):
    assert_error(enable(APIClient(), model_name), 401, "UNAUTHENTICATED")


def test_session_writes_need_the_csrf_token(owner, model_name):
    api = APIClient(enforce_csrf_checks=True)
    api.force_login(owner)
    assert_error(enable(api, model_name), 403, "PERMISSION_DENIED")


# --- disable ----------------------------------------------------------------------------------


def test_disable_turns_serving_off(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    response = api.post(V2 + "disable", {"registered_model_name": model_name}, format="json")
    assert response.status_code == 200
    assert set(response.json()["endpoint_status"]) == ENDPOINT_STATUS_KEYS
    assert not ServingEndpoint.objects.get(registered_model_name=model_name).enabled
    again = api.post(V2 + "disable", {"registered_model_name": model_name}, format="json")
    assert_error(again, 404, "RESOURCE_DOES_NOT_EXIST")
    # Serving can be enabled again afterwards.
    assert enable(api, model_name).status_code == 200


def test_disable_needs_manage(as_user, owner, member, model_name):
    enable(as_user(owner), model_name)
    endpoint = ServingEndpoint.objects.get(registered_model_name=model_name)
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    response = as_user(member).post(
        V2 + "disable", {"registered_model_name": model_name}, format="json"
    )
    assert_error(response, 403, "PERMISSION_DENIED")
    assert ServingEndpoint.objects.get(registered_model_name=model_name).enabled


def test_disable_of_someone_elses_hidden_endpoint_is_not_found(
    as_user, owner, outsider, model_name
):
    enable(as_user(owner), model_name)
    response = as_user(outsider).post(
        V2 + "disable", {"registered_model_name": model_name}, format="json"
    )
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")


# --- update-compute-config ------------------------------------------------------------------


def update(api: APIClient, name: str, stage: str = "Production", **spec):
    spec = {"workload_size_id": "Medium", "scale_to_zero_enabled": True, **spec}
    return api.put(
        UPDATE,
        {"registered_model_name": name, "stage": stage, "desired_workload_config_spec": spec},
        format="json",
    )


def test_update_compute_config_records_the_new_desired_config(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    response = update(api, model_name)
    assert response.status_code == 200, response.content
    config = response.json()["compute_config"]
    assert set(config) == {"stage", "creation_timestamp", "user_id", "workload_spec"}
    assert config["stage"] == "Production"
    assert config["workload_spec"] == {"workload_size_id": "Medium", "scale_to_zero_enabled": True}
    assert config["user_id"] == "alice@example.com"
    status = api.get(V2 + "get-status", {"registered_model_name": model_name}).json()
    production = status["endpoint_status"]["compute_config"][1]
    assert production["workload_spec"]["workload_size_id"] == "Medium"


def test_update_compute_config_scale_to_zero_defaults_off(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    response = api.put(
        UPDATE,
        {
            "registered_model_name": model_name,
            "stage": "Staging",
            "desired_workload_config_spec": {"workload_size_id": "Large"},
        },
        format="json",
    )
    assert response.json()["compute_config"]["workload_spec"] == {
        "workload_size_id": "Large",
        "scale_to_zero_enabled": False,
    }


@pytest.mark.parametrize(
    ("stage", "spec", "fragment"),
    [
        ("Archived", {}, "stage"),
        ("Production", {"workload_size_id": "Huge"}, "workload_size_id"),
        ("Production", {"scale_to_zero_enabled": "yes"}, "scale_to_zero_enabled"),
    ],
)
def test_update_compute_config_rejects_bad_stage_or_size(
    as_user, owner, model_name, stage, spec, fragment
):
    api = as_user(owner)
    enable(api, model_name)
    body = assert_error(update(api, model_name, stage, **spec), 400, "INVALID_PARAMETER_VALUE")
    assert fragment in body["message"]


def test_update_compute_config_with_batching_shows_it_in_the_status(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    batching = {"max_batch_size": 32, "max_wait_ms": 5}
    response = update(api, model_name, batching=batching)
    assert response.status_code == 200, response.content
    assert response.json()["compute_config"]["workload_spec"]["batching"] == batching
    config = ComputeConfig.objects.filter(endpoint__registered_model_name=model_name).first()
    assert (config.max_batch_size, config.max_wait_ms) == (32, 5)
    status = api.get(V2 + "get-status", {"registered_model_name": model_name}).json()
    production = status["endpoint_status"]["compute_config"][1]["workload_spec"]
    assert production["batching"] == batching
    event = Event.objects.filter(type=EventType.COMPUTE_CONFIG_UPDATED).first()
    assert "batching up to 32 rows / 5 ms" in event.message
    # Null (or leaving it out) turns batching off again.
    response = update(api, model_name, batching=None)
    assert "batching" not in response.json()["compute_config"]["workload_spec"]


@pytest.mark.parametrize(
    ("batching", "fragment"),
    [
        ({"max_batch_size": 0, "max_wait_ms": 5}, "batching.max_batch_size"),
        ({"max_batch_size": 257, "max_wait_ms": 5}, "batching.max_batch_size"),
        ({"max_batch_size": 8, "max_wait_ms": 101}, "batching.max_wait_ms"),
        ({"max_batch_size": 8, "max_wait_ms": -1}, "batching.max_wait_ms"),
        ({"max_batch_size": "8", "max_wait_ms": 5}, "batching.max_batch_size"),
        ({"max_batch_size": 8}, "batching.max_wait_ms"),
        (True, "Expected a dictionary"),
    ],
)
def test_update_compute_config_rejects_bad_batching(as_user, owner, model_name, batching, fragment):
    api = as_user(owner)
    enable(api, model_name)
    response = update(api, model_name, batching=batching)
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert fragment in body["message"]
    assert not ComputeConfig.objects.filter(max_batch_size__isnull=False).exists()


def test_update_compute_config_needs_the_spec(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    response = api.put(
        UPDATE, {"registered_model_name": model_name, "stage": "Staging"}, format="json"
    )
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "desired_workload_config_spec" in body["message"]


def test_update_compute_config_while_one_rolls_out_conflicts(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    endpoint = ServingEndpoint.objects.get(registered_model_name=model_name)
    EndpointVersion.objects.create(
        endpoint=endpoint,
        version="1",
        registry_stage="Production",
        service_state=ServiceState.READY,
        config_update_state=ServiceState.PENDING,
    )
    body = assert_error(update(api, model_name), 409, "RESOURCE_CONFLICT")
    assert "rolling out" in body["message"]


def test_update_compute_config_needs_manage(as_user, owner, member, model_name):
    enable(as_user(owner), model_name)
    endpoint = ServingEndpoint.objects.get(registered_model_name=model_name)
    services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=owner)
    assert_error(update(as_user(member), model_name), 403, "PERMISSION_DENIED")


def test_update_compute_config_is_a_put(as_user, owner):
    response = as_user(owner).post(UPDATE, {}, format="json")
    assert_error(response, 405, "BAD_REQUEST")


# --- restart-compute-config-update ------------------------------------------------------------


def test_restart_compute_config_update_retries_a_failed_rollout(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    endpoint = ServingEndpoint.objects.get(registered_model_name=model_name)
    version = EndpointVersion.objects.create(
        endpoint=endpoint,
        version="2",
        registry_stage="Staging",
        service_state=ServiceState.READY,
        config_update_state=ServiceState.FAILED,
        start_failures=2,
    )
    args = {"registered_model_name": model_name, "stage": "Staging"}
    response = api.post(V2 + "restart-compute-config-update", args, format="json")
    assert response.status_code == 200, response.content
    assert set(response.json()["endpoint_status"]) == ENDPOINT_STATUS_KEYS
    version.refresh_from_db()
    assert version.config_update_state == ServiceState.RETRY_REQUESTED
    assert version.start_failures == 0


def test_restart_without_a_failed_rollout_is_invalid(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    args = {"registered_model_name": model_name, "stage": "Production"}
    response = api.post(V2 + "restart-compute-config-update", args, format="json")
    assert_error(response, 400, "INVALID_PARAMETER_VALUE")


def test_restart_needs_a_served_stage(as_user, owner, model_name):
    api = as_user(owner)
    enable(api, model_name)
    for args in (
        {"registered_model_name": model_name},
        {"registered_model_name": model_name, "stage": "None"},
    ):
        response = api.post(V2 + "restart-compute-config-update", args, format="json")
        body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
        assert "stage" in body["message"]


# --- transition-stage ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", TRANSITIONS)
def test_transition_stage_moves_the_version_in_the_registry(as_user, owner, model_name, path):
    api = as_user(owner)
    enable(api, model_name)
    response = api.post(
        path,
        {
            "name": model_name,
            "version": "2",
            "stage": "Production",
            "archive_existing_versions": True,
            "comment": "Deploying version 2 to Production",
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"model_version"}
    assert set(body["model_version"]) == MODEL_VERSION_KEYS
    assert body["model_version"]["current_stage"] == "Production"
    assert body["model_version"]["version"] == "2"
    stages = {v.version: v.stage for v in registry.get_model(model_name).versions}
    assert stages == {"1": "Archived", "2": "Production"}
    event = Event.objects.get(type=EventType.VERSION_STAGE_CHANGED)
    assert "Deploying version 2 to Production" in event.message


def test_transition_stage_without_archiving_keeps_other_versions(as_user, owner, model_name):
    response = as_user(owner).post(
        TRANSITIONS[0],
        {"name": model_name, "version": "2", "stage": "Production"},
        format="json",
    )
    assert response.status_code == 200, response.content
    stages = {v.version: v.stage for v in registry.get_model(model_name).versions}
    assert stages == {"1": "Production", "2": "Production"}


@pytest.mark.parametrize(
    ("path", "name", "version"),
    [(TRANSITIONS[0], None, "9"), (TRANSITIONS[1], "no-such-model", "1")],
    ids=["unknown-version", "unknown-model"],
)
def test_transition_stage_unknown_version_or_model(as_user, owner, model_name, path, name, version):
    payload = {"name": name or model_name, "version": version, "stage": "Staging"}
    response = as_user(owner).post(path, payload, format="json")
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"version": "1", "stage": "Staging"}, "Missing value for required parameter 'name'."),
        ({"version": "1", "stage": "Testing"}, "stage"),
        ({"version": "one", "stage": "Staging"}, "version"),
        ({"version": "1", "stage": "Staging", "archive_existing_versions": "true"}, "archive"),
    ],
)
def test_transition_stage_rejects_bad_arguments(as_user, owner, model_name, payload, fragment):
    if "Missing" not in fragment:
        payload = {"name": model_name, **payload}
    response = as_user(owner).post(TRANSITIONS[0], payload, format="json")
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert fragment in body["message"]


def test_transition_stage_needs_manage_on_a_served_model(as_user, owner, member, model_name):
    enable(as_user(owner), model_name)
    endpoint = ServingEndpoint.objects.get(registered_model_name=model_name)
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    response = as_user(member).post(
        TRANSITIONS[0], {"name": model_name, "version": "2", "stage": "Production"}, format="json"
    )
    assert_error(response, 403, "PERMISSION_DENIED")
    stages = {v.version: v.stage for v in registry.get_model(model_name).versions}
    assert stages == {"1": "Production", "2": "Staging"}


# --- rate limit ---------------------------------------------------------------------------


def test_management_calls_are_rate_limited(as_user, owner, model_name):
    # The history of earlier tests' users (whose ids this test's may reuse) starts afresh.
    cache.delete(f"throttle_manage_{owner.pk}")
    limits = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"manage": "3/min"}}
    api = as_user(owner)
    with override_settings(REST_FRAMEWORK=limits):
        statuses = [
            update(api, model_name, "Staging", workload_size_id="Small").status_code
            for _ in range(4)
        ]
        limited = update(api, model_name)
        # Reads are not limited.
        read = api.get(V2 + "list")
    assert statuses[:3] == [404, 404, 404]  # counted even when refused: serving is off
    assert statuses[3] == 429
    body = assert_error(limited, 429, "REQUEST_LIMIT_EXCEEDED")
    assert body["message"]
    assert "Retry-After" in limited
    assert read.status_code == 200
    assert ComputeConfig.objects.count() == 0
