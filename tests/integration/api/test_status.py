"""The endpoints-v2 read calls: status, versions, aliases, sizes, replicas, events, metrics,
logs. Rows are written directly here; reconciling is tested elsewhere."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from endpoints import kv, services
from endpoints.kv import redis_client
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
)
from endpoints.telemetry import metrics
from tests.support.api import assert_error
from tests.support.rows import add_version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"

ENDPOINT_STATUS_KEYS = {"registered_model_name", "state", "state_message", "compute_config"}
COMPUTE_CONFIG_KEYS = {"stage", "creation_timestamp", "user_id", "workload_spec"}
WORKLOAD_SPEC_KEYS = {"workload_size_id", "scale_to_zero_enabled"}
VERSION_STATUS_KEYS = {
    "registered_model_name",
    "endpoint_version_name",
    "service_status",
    "config_update_status",
}


@pytest.fixture
def served(owner) -> ServingEndpoint:
    """iris-classifier served: v1 in Production, v2 in Staging, both READY, aliases set."""
    endpoint = ServingEndpoint.objects.create(
        registered_model_name="iris-classifier",
        creator=owner,
        state="READY",
        state_message="All served versions are ready.",
    )
    ComputeConfig.objects.create(endpoint=endpoint, stage="Staging", user_id="alice@example.com")
    ComputeConfig.objects.create(
        endpoint=endpoint,
        stage="Production",
        workload_size="Medium",
        scale_to_zero_enabled=True,
        user_id="alice@example.com",
    )
    for number, stage in (("1", "Production"), ("2", "Staging")):
        version = add_version(endpoint, number, stage)
        # Row ids come back after a rolled-back test: drop metrics an earlier test recorded
        # under the same id, so each test reads only its own.
        client = redis_client()
        for key in client.scan_iter(kv.metrics_pattern(version.pk)):
            client.delete(key)
    return endpoint


def get(api: APIClient, call: str, **args):
    return api.get(V2 + call, args)


def assert_compute_config(config: dict) -> None:
    assert set(config) == COMPUTE_CONFIG_KEYS
    assert set(config["workload_spec"]) == WORKLOAD_SPEC_KEYS
    # Milliseconds, not seconds.
    assert config["creation_timestamp"] > 10**12


# --- get-status ----------------------------------------------------------------------------


def test_get_status_has_the_exact_shape(as_user, owner, served):
    response = get(as_user(owner), "get-status", registered_model_name="iris-classifier")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"endpoint_status"}
    status = body["endpoint_status"]
    assert set(status) == ENDPOINT_STATUS_KEYS
    assert status["registered_model_name"] == "iris-classifier"
    assert status["state"] == "READY"
    assert [c["stage"] for c in status["compute_config"]] == ["Staging", "Production"]
    for config in status["compute_config"]:
        assert_compute_config(config)
        assert config["user_id"] == "alice@example.com"
    production = status["compute_config"][1]["workload_spec"]
    assert production == {"workload_size_id": "Medium", "scale_to_zero_enabled": True}


def test_get_status_takes_a_json_body_as_mlflow_clients_send_it(as_user, owner, served):
    response = as_user(owner).generic(
        "GET",
        V2 + "get-status",
        json.dumps({"registered_model_name": "iris-classifier"}),
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json()["endpoint_status"]["registered_model_name"] == "iris-classifier"


def test_get_status_takes_a_json_body_sent_as_a_form_like_curl_does(as_user, owner, served):
    response = as_user(owner).generic(
        "GET",
        V2 + "get-status",
        '{"registered_model_name": "iris-classifier"}',
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("call", "args", "unknown"),
    [
        ("get-status", {"registered_model_name": "nope"}, "nope"),
        (
            "get-version-status",
            {"registered_model_name": "iris-classifier", "endpoint_version_name": "7"},
            "7",
        ),
        (
            "get-version-replicas",
            {"registered_model_name": "iris-classifier", "endpoint_version_name": "9"},
            "9",
        ),
    ],
)
def test_reads_of_an_unknown_model_or_version_are_not_found(
    as_user, owner, served, call, args, unknown
):
    body = assert_error(get(as_user(owner), call, **args), 404, "RESOURCE_DOES_NOT_EXIST")
    assert unknown in body["message"]


def test_get_status_without_name_names_the_missing_parameter(as_user, owner):
    body = assert_error(get(as_user(owner), "get-status"), 400, "INVALID_PARAMETER_VALUE")
    assert body["message"] == "Missing value for required parameter 'registered_model_name'."


def test_get_status_of_disabled_endpoint_is_not_found(as_user, owner, served):
    served.enabled = False
    served.save()
    assert_error(
        get(as_user(owner), "get-status", registered_model_name="iris-classifier"),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )


@pytest.mark.parametrize(
    ("method", "call", "args"),
    [
        ("get", "get-status", {}),
        ("get", "list-version-aliases", {}),
        ("post", "get-version-logs", {"endpoint_version_name": "1"}),
        ("get", "get-version-logs", {"endpoint_version_name": "1"}),
        ("get", "get-version-build-logs", {"endpoint_version_name": "1"}),
    ],
)
def test_endpoint_hidden_from_user_without_view_permission(
    as_user, outsider, served, method, call, args
):
    """Someone without CAN_VIEW cannot even learn the endpoint exists."""
    api = as_user(outsider)
    args = {"registered_model_name": "iris-classifier", **args}
    if method == "get":
        response = get(api, call, **args)
    else:
        response = api.post(V2 + call, args, format="json")
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")


def test_viewer_reads_status(as_user, owner, member, served):
    services.permission_set(endpoint=served, user=member, level="CAN_VIEW", by=owner)
    response = get(as_user(member), "get-status", registered_model_name="iris-classifier")
    assert response.status_code == 200


def test_read_calls_need_authentication(served):
    response = APIClient().get(V2 + "get-status", {"registered_model_name": "iris-classifier"})
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_invalid_token_is_rejected():
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer sui_not-a-real-token")
    assert_error(api.get(V2 + "list"), 401, "UNAUTHENTICATED")


def test_basic_auth_with_token_user_works(make_token, owner, served):
    api = APIClient()
    api.credentials(
        HTTP_AUTHORIZATION="Basic "
        + __import__("base64").b64encode(f"token:{make_token(owner)}".encode()).decode()
    )
    response = api.get(V2 + "get-status", {"registered_model_name": "iris-classifier"})
    assert response.status_code == 200


def test_session_login_works_for_reads(client, owner, served):
    client.force_login(owner)
    response = client.get(V2 + "get-status", {"registered_model_name": "iris-classifier"})
    assert response.status_code == 200


# --- list ----------------------------------------------------------------------------------------


def test_list_shows_only_endpoints_the_user_may_view(as_user, owner, outsider, served):
    ServingEndpoint.objects.create(registered_model_name="ElasticNet", creator=outsider)
    body = as_user(owner).get(V2 + "list").json()
    assert set(body) == {"endpoints"}
    assert [e["registered_model_name"] for e in body["endpoints"]] == ["iris-classifier"]
    assert set(body["endpoints"][0]) == ENDPOINT_STATUS_KEYS
    outsider_view = as_user(outsider).get(V2 + "list").json()
    assert [e["registered_model_name"] for e in outsider_view["endpoints"]] == ["ElasticNet"]


def test_list_is_empty_without_endpoints(as_user, member):
    assert as_user(member).get(V2 + "list").json() == {"endpoints": []}


# --- list-versions / get-version-status ---------------------------------------------------------


def test_list_versions_has_the_exact_shape(as_user, owner, served):
    target = ComputeConfig.objects.create(
        endpoint=served, stage="Staging", workload_size="Large", user_id="alice@example.com"
    )
    EndpointVersion.objects.filter(endpoint=served, version="2").update(
        config_update_state=ServiceState.PENDING,
        config_update_message="Pending",
        target_config=target,
    )
    body = get(as_user(owner), "list-versions", registered_model_name="iris-classifier").json()
    assert set(body) == {"endpoint_statuses"}
    by_name = {v["endpoint_version_name"]: v for v in body["endpoint_statuses"]}
    assert set(by_name) == {"1", "2"}
    for status in by_name.values():
        assert set(status) == VERSION_STATUS_KEYS
        assert set(status["service_status"]) == {"state", "message", "config"}
        assert status["service_status"]["state"] == "SERVICE_STATE_READY"
        assert_compute_config(status["service_status"]["config"])
    rolling = by_name["2"]
    assert rolling["config_update_status"]["state"] == "SERVICE_STATE_PENDING"
    # The old config keeps serving while the new one rolls out.
    assert rolling["service_status"]["config"]["workload_spec"]["workload_size_id"] == "Small"
    assert rolling["config_update_status"]["config"]["workload_spec"]["workload_size_id"] == (
        "Large"
    )
    # No rollout yet: the key is there, null, so clients read one shape.
    assert by_name["1"]["config_update_status"] == {
        "state": "SERVICE_STATE_UNKNOWN",
        "message": "",
        "config": None,
    }


def test_version_status_shows_a_rolling_out_batching_config(as_user, owner, served):
    target = ComputeConfig.objects.create(
        endpoint=served, stage="Staging", max_batch_size=16, max_wait_ms=2
    )
    EndpointVersion.objects.filter(endpoint=served, version="2").update(
        config_update_state=ServiceState.PENDING, target_config=target
    )
    body = get(
        as_user(owner),
        "get-version-status",
        registered_model_name="iris-classifier",
        endpoint_version_name="2",
    ).json()
    status = body["endpoint_status"]
    assert "batching" not in status["service_status"]["config"]["workload_spec"]
    spec = status["config_update_status"]["config"]["workload_spec"]
    assert set(spec) == {*WORKLOAD_SPEC_KEYS, "batching"}
    assert spec["batching"] == {"max_batch_size": 16, "max_wait_ms": 2}


def test_get_version_status_has_the_exact_shape(as_user, owner, served):
    response = get(
        as_user(owner),
        "get-version-status",
        registered_model_name="iris-classifier",
        endpoint_version_name="1",
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"endpoint_status"}
    assert set(body["endpoint_status"]) == VERSION_STATUS_KEYS
    assert body["endpoint_status"]["endpoint_version_name"] == "1"
    assert body["endpoint_status"]["service_status"]["message"] == "Ready"


def test_get_version_status_needs_a_version_number(as_user, owner, served):
    response = get(
        as_user(owner),
        "get-version-status",
        registered_model_name="iris-classifier",
        endpoint_version_name="latest",
    )
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "endpoint_version_name" in body["message"]
    response = get(as_user(owner), "get-version-status", registered_model_name="iris-classifier")
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert body["message"] == "Missing value for required parameter 'endpoint_version_name'."


# --- list-version-aliases -------------------------------------------------------------------


def test_list_version_aliases(as_user, owner, served):
    body = get(as_user(owner), "list-version-aliases", registered_model_name="iris-classifier")
    assert body.json() == {
        "aliases": [
            {"alias": "Production", "endpoint_version_name": "1"},
            {"alias": "Staging", "endpoint_version_name": "2"},
        ]
    }


# --- get-supported-workload-sizes ---------------------------------------------------------


def test_supported_workload_sizes(as_user, member, monkeypatch):
    # This host's GPUs, as a fake device list: one GPU.
    monkeypatch.setenv("SERVING_GPU_DEVICES", "0")
    body = as_user(member).get(V2 + "get-supported-workload-sizes").json()
    limits = {"cpus": 1, "memory_mb": 4096, "max_processes": 256, "tmp_mb": 1024}
    assert body["workload_sizes"][0] == {
        "workload_size_id": "Small",
        "min_concurrency": 4,
        "max_concurrency": 4,
        "min_replicas": 1,
        "max_replicas": 1,
        **limits,
    }
    ranges = [
        (s["workload_size_id"], s["min_concurrency"], s["max_concurrency"], s["cpus"])
        for s in body["workload_sizes"]
    ]
    assert ranges == [("Small", 4, 4, 1), ("Medium", 8, 16, 2), ("Large", 16, 64, 4)]
    assert [(s["min_replicas"], s["max_replicas"]) for s in body["workload_sizes"]] == [
        (1, 1),
        (2, 4),
        (4, 16),
    ]
    assert body["workload_types"] == [
        {"workload_type": "CPU", "gpus": 0, "available": True},
        {"workload_type": "GPU_SMALL", "gpus": 1, "available": True},
        {"workload_type": "GPU_MEDIUM", "gpus": 1, "available": True},
        {"workload_type": "GPU_LARGE", "gpus": 1, "available": True},
        {"workload_type": "MULTIGPU_MEDIUM", "gpus": 4, "available": False},
    ]


def test_supported_workload_types_without_gpus_offer_only_cpu(as_user, member, monkeypatch):
    monkeypatch.delenv("SERVING_GPU_DEVICES", raising=False)
    monkeypatch.setattr("endpoints.runtime.gpus.DEV", Path("/nonexistent-dev"))
    body = as_user(member).get(V2 + "get-supported-workload-sizes").json()
    available = [t["workload_type"] for t in body["workload_types"] if t["available"]]
    assert available == ["CPU"]


def test_supported_workload_sizes_need_authentication():
    response = APIClient().get(V2 + "get-supported-workload-sizes")
    assert_error(response, 401, "UNAUTHENTICATED")


# --- get-version-replicas ------------------------------------------------------------------


def _replica(served: ServingEndpoint, replica_id: str, log: Path | None = None, **kw) -> Replica:
    version = served.versions.get(version="1")
    return Replica.objects.create(
        version=version,
        replica_id=replica_id,
        port=23001,
        pid=4242,
        log_path=str(log) if log else "",
        **kw,
    )


def test_get_version_replicas(as_user, owner, served):
    _replica(
        served, "r-aaa", state=ReplicaState.RUNNING, state_message="Running", node="10.0.0.7/5f3a"
    )
    _replica(served, "r-bbb", state=ReplicaState.TERMINATED)
    response = get(
        as_user(owner),
        "get-version-replicas",
        registered_model_name="iris-classifier",
        endpoint_version_name="1",
    )
    replicas = response.json()["replicas"]
    assert [r["replica_id"] for r in replicas] == ["r-aaa", "r-bbb"]
    assert set(replicas[0]) == {
        "replica_id",
        "state",
        "message",
        "address",
        "pid",
        "node",
        "restarts",
        "creation_timestamp",
    }
    assert replicas[0]["state"] == "Running"
    assert replicas[0]["address"] == "127.0.0.1:23001"
    assert replicas[0]["node"] == "10.0.0.7/5f3a"


# --- get-event-history ---------------------------------------------------------------------


def test_get_event_history_newest_first_with_levels(as_user, owner, served):
    version = served.versions.get(version="2")
    replica = _replica(served, "r-ccc")
    Event.objects.create(
        endpoint=served, type=EventType.ENDPOINT_ENABLED, message="enabled", timestamp=1000
    )
    Event.objects.create(
        endpoint=served,
        type=EventType.VERSION_READY,
        level="VERSION",
        message="v2 ready",
        endpoint_version_name="2",
        stage="Staging",
        timestamp=2000,
    )
    Event.record(served, EventType.REPLICA_STARTED, "started", version=version, replica=replica)
    body = get(as_user(owner), "get-event-history", registered_model_name="iris-classifier")
    events = body.json()["events"]
    assert [e["type"] for e in events] == ["REPLICA_STARTED", "VERSION_READY", "ENDPOINT_ENABLED"]
    assert set(events[2]) == {"timestamp", "type", "level", "message"}
    assert set(events[1]) == {
        "timestamp",
        "type",
        "level",
        "message",
        "endpoint_version_name",
        "stage",
    }
    assert events[0]["replica_id"] == "r-ccc"
    assert events[0]["level"] == "REPLICA"


def test_get_event_history_filters(as_user, owner, served):
    for i in range(5):
        Event.objects.create(
            endpoint=served,
            type=EventType.SCALED_UP,
            level="VERSION",
            message=f"scaled {i}",
            endpoint_version_name="1" if i % 2 else "2",
            timestamp=1000 + i,
        )
    api = as_user(owner)
    only_v1 = get(
        api, "get-event-history", registered_model_name="iris-classifier", endpoint_version_name="1"
    ).json()["events"]
    assert [e["message"] for e in only_v1] == ["scaled 3", "scaled 1"]
    latest = get(
        api, "get-event-history", registered_model_name="iris-classifier", max_results=2
    ).json()["events"]
    assert [e["message"] for e in latest] == ["scaled 4", "scaled 3"]
    since = get(
        api, "get-event-history", registered_model_name="iris-classifier", start_timestamp=1003
    ).json()["events"]
    assert [e["message"] for e in since] == ["scaled 4", "scaled 3"]
    bad = get(api, "get-event-history", registered_model_name="iris-classifier", max_results=0)
    assert_error(bad, 400, "INVALID_PARAMETER_VALUE")


# --- get-version-metrics -------------------------------------------------------------------


def test_get_version_metrics_reads_the_buckets(as_user, owner, served):
    version = served.versions.get(version="1")
    now = time.time()
    metrics.record_requests(
        version.pk, at=now, requests=20, errors=2, latency_ms_sum=100.0, latency_ms_max=9.5
    )
    metrics.record_replicas(version.pk, 2, at=now)
    response = get(
        as_user(owner),
        "get-version-metrics",
        registered_model_name="iris-classifier",
        endpoint_version_name="1",
        start_timestamp=int((now - 60) * 1000),
        end_timestamp=int((now + 1) * 1000),
    )
    assert response.status_code == 200
    points = response.json()["metrics"]
    assert len(points) == 1
    point = points[0]
    assert point["requests"] == 20
    assert point["errors"] == 2
    assert point["error_rate"] == 0.1
    assert point["latency_ms_avg"] == 5.0
    assert point["latency_ms_max"] == 9.5
    assert point["replicas"] == 2


def test_get_version_metrics_defaults_to_the_last_hour(as_user, owner, served):
    version = served.versions.get(version="2")
    metrics.record_requests(
        version.pk, at=time.time(), requests=3, errors=0, latency_ms_sum=3, latency_ms_max=1
    )
    response = get(
        as_user(owner),
        "get-version-metrics",
        registered_model_name="iris-classifier",
        endpoint_version_name="2",
    )
    assert [p["requests"] for p in response.json()["metrics"]] == [3]


def test_get_version_metrics_window_backwards_is_empty(as_user, owner, served):
    response = get(
        as_user(owner),
        "get-version-metrics",
        registered_model_name="iris-classifier",
        endpoint_version_name="1",
        start_timestamp=2000,
        end_timestamp=1000,
    )
    assert response.json() == {
        "metrics": [],
        "latency_ms_p50": None,
        "latency_ms_p95": None,
        "latency_ms_p99": None,
    }


def test_get_version_metrics_has_percentiles_from_the_latency_histogram(as_user, owner, served):
    version = served.versions.get(version="1")
    now = time.time()
    # 90 requests between 2.5 and 5 ms, 10 between 25 and 50 ms, in two buckets.
    metrics.record_requests(
        version.pk,
        at=now - 10,
        requests=90,
        errors=0,
        latency_ms_sum=270.0,
        latency_ms_max=4.0,
        histogram={metrics.latency_bucket(3.0): 90},
    )
    metrics.record_requests(
        version.pk,
        at=now,
        requests=10,
        errors=0,
        latency_ms_sum=400.0,
        latency_ms_max=45.0,
        histogram={metrics.latency_bucket(40.0): 10},
    )
    body = get(
        as_user(owner),
        "get-version-metrics",
        registered_model_name="iris-classifier",
        endpoint_version_name="1",
        start_timestamp=int((now - 60) * 1000),
        end_timestamp=int((now + 1) * 1000),
    ).json()
    # Interpolated within the bucket the rank falls in, as histogram_quantile does.
    assert body["latency_ms_p50"] == round(2.5 + 2.5 * 50 / 90, 3)
    assert body["latency_ms_p95"] == 37.5
    assert body["latency_ms_p99"] == 47.5
    first, second = body["metrics"]
    assert first["latency_ms_p99"] <= 5.0 and second["latency_ms_p50"] == 37.5


def test_get_version_metrics_rejects_a_bad_timestamp(as_user, owner, served):
    response = get(
        as_user(owner),
        "get-version-metrics",
        registered_model_name="iris-classifier",
        endpoint_version_name="1",
        start_timestamp="yesterday",
    )
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "start_timestamp" in body["message"]


# --- get-version-logs / get-version-build-logs --------------------------------------------


def test_get_version_logs_merges_replicas_or_reads_one(as_user, owner, served, tmp_path):
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("loading model\nlistening\n")
    second.write_text("listening too\n")
    _replica(served, "r-one", first)
    _replica(served, "r-two", second)
    api = as_user(owner)
    args = {"registered_model_name": "iris-classifier", "endpoint_version_name": "1"}
    merged = api.post(V2 + "get-version-logs", args, format="json").json()
    assert merged == {
        "logs": "[r-one] loading model\n[r-one] listening\n[r-two] listening too",
    }
    one = api.post(V2 + "get-version-logs", {**args, "replica_id": "r-two"}, format="json")
    assert one.json() == {"logs": "listening too\n"}
    missing = api.post(V2 + "get-version-logs", {**args, "replica_id": "r-zzz"}, format="json")
    assert_error(missing, 404, "RESOURCE_DOES_NOT_EXIST")


@pytest.mark.parametrize("call", ["get-version-logs", "get-version-build-logs"])
def test_logs_need_can_manage(as_user, owner, member, served, tmp_path, call):
    from endpoints import services

    log = tmp_path / "a.log"
    log.write_text("predict got {'ssn': '123-45-6789'}\n")
    _replica(served, "r-one", log)
    served.versions.filter(version="1").update(build_log_path=str(log))
    args = {"registered_model_name": "iris-classifier", "endpoint_version_name": "1"}
    for level in ("CAN_VIEW", "CAN_QUERY"):
        services.permission_set(endpoint=served, user=member, level=level, by=owner)
        body = assert_error(
            as_user(member).post(V2 + call, args, format="json"), 403, "PERMISSION_DENIED"
        )
        assert "123-45-6789" not in body["message"]
    services.permission_set(endpoint=served, user=member, level="CAN_MANAGE", by=owner)
    allowed = as_user(member).post(V2 + call, args, format="json")
    assert allowed.status_code == 200 and "123-45-6789" in allowed.json()["logs"]


def test_get_version_build_logs(as_user, owner, served, tmp_path):
    log = tmp_path / "build.log"
    log.write_text("creating environment\ndone\n")
    served.versions.filter(version="2").update(build_log_path=str(log))
    api = as_user(owner)
    args = {"registered_model_name": "iris-classifier", "endpoint_version_name": "2"}
    assert api.post(V2 + "get-version-build-logs", args, format="json").json() == {
        "logs": "creating environment\ndone\n"
    }
    args["endpoint_version_name"] = "1"
    assert api.post(V2 + "get-version-build-logs", args, format="json").json() == {"logs": ""}


def test_logs_are_read_with_get_and_query_parameters(as_user, owner, served, tmp_path):
    log = tmp_path / "a.log"
    log.write_text("listening\n")
    _replica(served, "r-one", log)
    build = tmp_path / "build.log"
    build.write_text("creating environment\n")
    served.versions.filter(version="1").update(build_log_path=str(build))
    api = as_user(owner)
    args = {"registered_model_name": "iris-classifier", "endpoint_version_name": "1"}
    assert get(api, "get-version-logs", **args).json() == {"logs": "[r-one] listening"}
    assert get(api, "get-version-logs", **args, replica_id="r-one").json() == {
        "logs": "listening\n"
    }
    assert get(api, "get-version-build-logs", **args).json() == {"logs": "creating environment\n"}
    assert_error(
        get(api, "get-version-logs", **args, replica_id="r-zzz"), 404, "RESOURCE_DOES_NOT_EXIST"
    )
    assert_error(get(api, "get-version-build-logs"), 400, "INVALID_PARAMETER_VALUE")


# --- generic errors -------------------------------------------------------------------------------


def test_unknown_api_route_is_a_json_404(as_user, owner):
    for path in ("/api/2.0/preview/mlflow/endpoints-v2/nope", "/api/nothing/here/"):
        assert_error(as_user(owner).get(path), 404, "RESOURCE_DOES_NOT_EXIST")
        assert_error(APIClient().post(path), 404, "RESOURCE_DOES_NOT_EXIST")


def test_body_that_is_not_json_is_a_bad_request(as_user, owner):
    response = as_user(owner).generic(
        "POST", V2 + "enable", "{not json", content_type="application/json"
    )
    assert_error(response, 400, "BAD_REQUEST")


def test_body_that_is_not_an_object_is_a_bad_request(as_user, owner):
    response = as_user(owner).post(V2 + "enable", ["iris-classifier"], format="json")
    assert_error(response, 400, "BAD_REQUEST")


# --- the OpenAPI schema ---------------------------------------------------------------------


def test_schema_documents_every_call_with_its_errors(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    v2 = "/api/2.0/preview/mlflow/endpoints-v2/"
    expected = {
        (v2 + "enable", "post"),
        (v2 + "disable", "post"),
        (v2 + "get-status", "get"),
        (v2 + "list", "get"),
        (v2 + "list-versions", "get"),
        (v2 + "get-version-status", "get"),
        (v2 + "list-version-aliases", "get"),
        (v2 + "get-supported-workload-sizes", "get"),
        (v2 + "get-version-replicas", "get"),
        (v2 + "get-event-history", "get"),
        (v2 + "get-version-metrics", "get"),
        (v2 + "get-version-logs", "get"),
        (v2 + "get-version-logs", "post"),
        (v2 + "get-version-build-logs", "get"),
        (v2 + "get-version-build-logs", "post"),
        (v2 + "restart-compute-config-update", "post"),
        (v2 + "get-permissions", "get"),
        (v2 + "set-permissions", "post"),
        (v2 + "update-served-aliases", "put"),
        (v2 + "get-traffic-splits", "get"),
        (v2 + "update-traffic-split", "put"),
        (v2 + "promote-traffic-split", "post"),
        (v2 + "rollback-traffic-split", "post"),
        (v2 + "get-inference-table", "get"),
        (v2 + "update-inference-table", "put"),
        ("/api/2.0/mlflow/registered-models/alias", "post"),
        ("/api/2.0/mlflow/registered-models/alias", "delete"),
        ("/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config", "put"),
        ("/api/2.0/mlflow/databricks/model-versions/transition-stage", "post"),
        ("/api/2.0/mlflow/model-versions/transition-stage", "post"),
        ("/api/2.0/token/create", "post"),
        ("/api/2.0/token/list", "get"),
        ("/api/2.0/token/delete", "post"),
        ("/api/2.0/service-principals/create", "post"),
        ("/api/2.0/service-principals/list", "get"),
        ("/api/2.0/service-principals/create-token", "post"),
    }
    documented = {(path, method) for path, methods in paths.items() for method in methods}
    assert documented == expected
    for path, method in expected:
        operation = paths[path][method]
        assert {"200", "400", "401", "403", "404"} <= set(operation["responses"]), path
        assert operation["security"], path
        if method not in ("get", "delete"):  # those take query parameters (or a body)
            assert list(operation["requestBody"]["content"]) == ["application/json"], path
