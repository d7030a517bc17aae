"""A compute config's own limits, GPU workload type and autoscaling, through the API
(update-compute-config, get-status) and Compute Settings: stored, shown, summarised in
events, and refused with a message naming the field when they cannot hold.

GPUs are a fake device list (``SERVING_GPU_DEVICES``) or none at all: no GPU is on this
machine. The registry is this run's real MLflow registry, a model of each test's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from endpoints import services
from endpoints.errors import InvalidParameter
from endpoints.models import ComputeConfig, Event, EventType, ServingEndpoint
from endpoints.provisioning.limits import replica_limits
from endpoints.runtime.base import ReplicaLimits
from tests.support.api import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
UPDATE = "/api/2.0/preview/model-serving-api/endpoints-v2/update-compute-config"
TUNED = {
    "cpus": 2,
    "memory_mb": 6144,
    "max_processes": 128,
    "tmp_mb": 512,
    "min_replicas": 2,
    "max_replicas": 3,
    "target_concurrency": 8,
    "scale_down_delay_seconds": 30,
}


@pytest.fixture
def no_gpus(monkeypatch):
    """A host without GPUs: no device list, no /dev/nvidia<N>."""
    monkeypatch.delenv("SERVING_GPU_DEVICES", raising=False)
    monkeypatch.setattr("endpoints.runtime.gpus.DEV", Path("/nonexistent-dev"))


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setenv("SERVING_GPU_DEVICES", "0,1")


@pytest.fixture
def endpoint(model_name, owner) -> ServingEndpoint:
    return services.endpoint_enable(name=model_name, user=owner)


def update(api: APIClient, name: str, stage: str = "Production", **spec):
    spec = {"workload_size_id": "Small", **spec}
    return api.put(
        UPDATE,
        {"registered_model_name": name, "stage": stage, "desired_workload_config_spec": spec},
        format="json",
    )


# --- the API -----------------------------------------------------------------------------------


def test_limits_and_autoscaling_are_stored_shown_and_summarised(as_user, owner, endpoint):
    api = as_user(owner)
    response = update(api, endpoint.registered_model_name, **TUNED)
    assert response.status_code == 200, response.content
    assert response.json()["compute_config"]["workload_spec"] == {
        "workload_size_id": "Small",
        "scale_to_zero_enabled": False,
        **TUNED,
    }
    status = api.get(V2 + "get-status", {"registered_model_name": endpoint.registered_model_name})
    production = status.json()["endpoint_status"]["compute_config"][1]
    assert production["workload_spec"]["memory_mb"] == 6144
    event = Event.objects.filter(type=EventType.COMPUTE_CONFIG_UPDATED).first()
    assert event.message == (
        "Production compute config set to Small with 2 CPUs, 6144 MiB memory, 128 processes, "
        "512 MiB tmpfs, 2 to 3 replicas, 8 requests per replica, scale down after 30 s "
        "by alice@example.com."
    )


def test_a_replica_gets_its_sizes_limits_with_the_configs_over_them(endpoint):
    config = ComputeConfig.objects.create(
        endpoint=endpoint, stage="Production", workload_size="Medium", memory_mb=12288
    )
    assert replica_limits(config) == ReplicaLimits(
        cpus=2, memory_mb=12288, max_processes=512, tmp_mb=4096, gpus=0
    )
    gpu = ComputeConfig(endpoint=endpoint, workload_type="MULTIGPU_MEDIUM")
    assert replica_limits(gpu).gpus == 4
    assert (
        replica_limits(ComputeConfig(endpoint=endpoint, workload_type="GPU_SMALL", gpus=2)).gpus
        == 2
    )


def test_null_or_absent_settings_are_the_sizes_again(as_user, owner, endpoint):
    api = as_user(owner)
    update(api, endpoint.registered_model_name, **TUNED)
    assert endpoint.current_compute_config("Production").memory_mb == 6144
    response = update(api, endpoint.registered_model_name, cpus=None)
    assert response.json()["compute_config"]["workload_spec"] == {
        "workload_size_id": "Small",
        "scale_to_zero_enabled": False,
    }
    assert endpoint.current_compute_config("Production").limit_overrides() == {}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"cpus": -1}, "'desired_workload_config_spec.cpus'"),
        ({"cpus": 0}, "'desired_workload_config_spec.cpus'"),
        ({"memory_mb": 100}, "'desired_workload_config_spec.memory_mb'"),
        ({"memory_mb": 1024.5}, "'desired_workload_config_spec.memory_mb'"),
        ({"max_processes": "many"}, "'desired_workload_config_spec.max_processes'"),
        ({"tmp_mb": -5}, "'desired_workload_config_spec.tmp_mb'"),
        ({"min_replicas": 0}, "'desired_workload_config_spec.min_replicas'"),
        ({"target_concurrency": 0}, "'desired_workload_config_spec.target_concurrency'"),
        ({"scale_down_delay_seconds": -1}, "scale_down_delay_seconds"),
        ({"workload_type": "TPU"}, "'desired_workload_config_spec.workload_type'"),
        ({"min_replicas": 4, "max_replicas": 2}, "Invalid min_replicas 4: above max_replicas 2"),
        ({"max_replicas": 17}, "at most 16 replicas per version"),
        ({"scale_to_zero_delay_seconds": 60}, "scale_to_zero_delay_seconds: it needs"),
        ({"gpus": 1}, "Invalid gpus: a CPU workload_type has no GPU"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(as_user, owner, endpoint, spec, fragment):
    response = update(as_user(owner), endpoint.registered_model_name, **spec)
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert fragment in body["message"]
    config = endpoint.current_compute_config("Production")
    assert (config.workload_type, config.limit_overrides(), config.autoscaling_overrides()) == (
        "CPU",
        {},
        {},
    )


def test_a_gpu_type_without_gpus_is_refused(as_user, owner, endpoint, no_gpus):
    response = update(as_user(owner), endpoint.registered_model_name, workload_type="GPU_SMALL")
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert body["message"] == (
        "Invalid workload_type GPU_SMALL: this installation has no GPU (no /dev/nvidia<N> "
        "device on the worker's host and no SERVING_GPU_DEVICES)."
    )


def test_a_gpu_type_needing_more_gpus_than_there_are_is_refused(as_user, owner, endpoint, two_gpus):
    response = update(
        as_user(owner), endpoint.registered_model_name, workload_type="MULTIGPU_MEDIUM"
    )
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "a replica needs 4 GPUs, this installation has 2" in body["message"]


def test_a_gpu_type_is_accepted_where_gpus_are_found(as_user, owner, endpoint, two_gpus):
    response = update(
        as_user(owner), endpoint.registered_model_name, workload_type="GPU_MEDIUM", gpus=2
    )
    assert response.status_code == 200, response.content
    spec = response.json()["compute_config"]["workload_spec"]
    assert (spec["workload_type"], spec["gpus"]) == ("GPU_MEDIUM", 2)
    assert replica_limits(endpoint.current_compute_config("Production")).gpus == 2


def test_a_fraction_of_a_gpu_needs_ray(as_user, owner, endpoint, two_gpus, monkeypatch):
    api = as_user(owner)
    response = update(api, endpoint.registered_model_name, workload_type="GPU_SMALL", gpus=0.5)
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "a fraction of a GPU needs the Ray runtime" in body["message"]
    # On Ray, the cluster's GPUs count and actors may share one.
    monkeypatch.setattr("endpoints.services.compute.runtime_kind", lambda: "ray")
    monkeypatch.setattr("endpoints.selectors.compute.gpu_capacity", lambda: 1.0)
    response = update(api, endpoint.registered_model_name, workload_type="GPU_SMALL", gpus=0.5)
    assert response.json()["compute_config"]["workload_spec"]["gpus"] == 0.5
    response = update(api, endpoint.registered_model_name, workload_type="GPU_SMALL", gpus=1.5)
    assert "more than one GPU is a whole number" in response.json()["message"]


def test_on_ray_a_cluster_without_gpu_resource_refuses_gpu_types(
    as_user, owner, endpoint, monkeypatch
):
    monkeypatch.setattr("endpoints.selectors.compute.runtime_kind", lambda: "ray")
    monkeypatch.setattr("endpoints.selectors.compute.gpu_capacity", lambda: 0.0)
    response = update(as_user(owner), endpoint.registered_model_name, workload_type="GPU_LARGE")
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "the Ray cluster declares no GPU resource" in body["message"]


def test_the_gpus_are_counted_outside_any_transaction(
    transactional_db, owner, model_name, monkeypatch
):
    """On Ray counting them asks the cluster: a transaction held open meanwhile would hold
    the database's write lock (SQLite takes it up front) and stall every other writer."""
    services.endpoint_enable(name=model_name, user=owner)
    in_transaction = []

    def count() -> float:
        in_transaction.append(connection.in_atomic_block)
        return 1.0

    monkeypatch.setattr("endpoints.selectors.compute.gpu_capacity", count)
    services.compute_config_update(
        name=model_name,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=False,
        workload_type="GPU_SMALL",
        user=owner,
    )
    assert in_transaction == [False]


def test_the_check_stands_on_its_own():
    """The service's rules without the API in front: what the UI and the plugin get too."""
    check = {
        "workload_type": "CPU",
        "scale_to_zero_enabled": True,
        "max_replicas_per_version": 16,
        "fractional_gpus": False,
    }
    given = services.check_overrides(
        **check, overrides={"cpus": 0.5, "memory_mb": None, "scale_to_zero_delay_seconds": 120}
    )
    assert given == {"cpus": 0.5, "scale_to_zero_delay_seconds": 120}
    with pytest.raises(
        InvalidParameter, match="Invalid memory_mb 256: a replica needs at least 512 MiB"
    ):
        services.check_overrides(**check, overrides={"memory_mb": 256})
    with pytest.raises(
        InvalidParameter, match=r"Invalid max_processes 1\.5: must be a whole number"
    ):
        services.check_overrides(**check, overrides={"max_processes": 1.5})


# --- Compute Settings --------------------------------------------------------------------------


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def compute_url(name: str) -> str:
    return f"/models/{name}/serving/compute/"


def test_compute_settings_show_each_setting_with_the_sizes_default(owner, endpoint):
    html = logged_in(owner).get(f"/models/{endpoint.registered_model_name}/serving/?tab=compute")
    staging = html.content.decode()
    staging = staging[staging.index('data-testid="compute-staging"') :]
    assert 'name="memory_mb" value="" placeholder="4096"' in staging
    assert 'name="max_replicas" value="" placeholder="1"' in staging
    assert 'name="target_concurrency" value="" placeholder="4"' in staging
    assert '<option value="GPU_SMALL" >GPU_SMALL (1 GPU per replica)' in staging


def test_compute_settings_save_limits_autoscaling_and_type(owner, endpoint, two_gpus):
    client = logged_in(owner)
    response = client.post(
        compute_url(endpoint.registered_model_name),
        {
            "stage": "Staging",
            "workload_size": "Medium",
            "workload_type": "GPU_SMALL",
            "memory_mb": "10240",
            "cpus": "",
            "max_replicas": "2",
        },
    )
    assert response.status_code == 302
    config = endpoint.current_compute_config("Staging")
    assert (config.workload_type, config.memory_mb, config.cpus, config.max_replicas) == (
        "GPU_SMALL",
        10240,
        None,
        2,
    )
    html = client.get(response["Location"]).content.decode()
    staging = html[html.index('data-testid="compute-staging"') :]
    assert "Current: Medium, GPU_SMALL, 10240 MiB memory, at most 2 replicas" in staging
    assert 'name="memory_mb" value="10240" placeholder="8192"' in staging
    assert '<details class="tunables" open>' in staging


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_mb": "64"}, "Invalid memory_mb 64: a replica needs at least 512 MiB."),
        ({"cpus": "lots"}, "cpus: Enter a number."),
        (
            {"min_replicas": "3", "max_replicas": "1"},
            "Invalid min_replicas 3: above max_replicas 1.",
        ),
    ],
)
def test_compute_settings_show_why_a_value_is_refused(owner, endpoint, fields, message):
    response = logged_in(owner).post(
        compute_url(endpoint.registered_model_name),
        {"stage": "Staging", "workload_size": "Small", **fields},
        follow=True,
    )
    assert message in response.content.decode()
    assert endpoint.compute_configs.filter(stage="Staging").count() == 1  # the first one only


def test_compute_settings_refuse_a_gpu_type_without_gpus(owner, endpoint, no_gpus):
    response = logged_in(owner).post(
        compute_url(endpoint.registered_model_name),
        {"stage": "Production", "workload_size": "Small", "workload_type": "GPU_SMALL"},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "Invalid workload_type GPU_SMALL: this installation has no GPU" in html
    assert "no such GPUs here" in html
    assert endpoint.current_compute_config("Production").workload_type == "CPU"
