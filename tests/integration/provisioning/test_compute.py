"""Compute settings on the real stack: Redis, a Celery worker with beat and real replica
processes (sandboxed where bubblewrap is installed), the worker's host given two GPUs by a
fake device list (``SERVING_GPU_DEVICES=0,1``: no GPU is on this machine).

- GPU replicas are each given devices no other one holds, see only those, and one more
  waits for a free device;
- a rollout of new limits replaces the replicas (its event names the limits), one of
  autoscaling settings keeps them.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoints import services
from endpoints.models import (
    EndpointState,
    EndpointVersion,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
)
from tests.support.models import constant_model, register
from tests.support.stack import pause_workers, start_worker, wait_for

GPU_ENV = {"SERVING_GPU_DEVICES": "0,1"}
READY_TIMEOUT = 180
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)


@pytest.fixture(scope="module")
def gpu_worker(celery_worker_process, stack_log_dir: Path) -> Iterator[None]:
    """The session's worker held still, one whose host has the fake GPUs in its place
    (this process checks compute configs with the same list)."""
    paused = pause_workers()
    before = os.environ.get("SERVING_GPU_DEVICES")
    os.environ.update(GPU_ENV)
    worker = start_worker(stack_log_dir, "worker-gpus", GPU_ENV)
    try:
        yield
    finally:
        worker.stop()
        if before is None:
            os.environ.pop("SERVING_GPU_DEVICES", None)
        else:
            os.environ["SERVING_GPU_DEVICES"] = before
        for process in paused:
            process.send_signal(signal.SIGCONT)


@pytest.fixture
def served(stack: str, gpu_worker, owner) -> Iterator[str]:
    """A constant model's endpoint, READY with one replica; disabled afterwards."""
    name = f"compute-{uuid.uuid4().hex[:8]}"
    register(name, constant_model("ok"), "Production")
    services.endpoint_enable(name=name, user=owner)
    wait_for(lambda: _state(name) == EndpointState.READY, timeout=READY_TIMEOUT, what="READY")
    yield name
    services.endpoint_disable(name=name, user=owner)
    wait_for(lambda: not _replicas(name, NOT_STOPPED).exists(), timeout=90, what="replicas to stop")


def _state(name: str) -> str:
    endpoint = ServingEndpoint.objects.get(registered_model_name=name)
    assert endpoint.state != EndpointState.FAILED, endpoint.state_message
    return endpoint.state


def _replicas(name: str, states=(ReplicaState.RUNNING,)):
    return Replica.objects.filter(version__endpoint__registered_model_name=name, state__in=states)


def _version(name: str) -> EndpointVersion:
    return EndpointVersion.objects.get(endpoint__registered_model_name=name)


def _applied(name: str) -> bool:
    version = _version(name)
    assert version.config_update_state != ServiceState.FAILED, version.config_update_message
    return version.config_update_state == ServiceState.READY


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_gpu_replicas_get_devices_of_their_own_and_see_only_those(served: str, owner):
    services.compute_config_update(
        name=served,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=False,
        workload_type="GPU_SMALL",
        overrides={"min_replicas": 2},
        user=owner,
    )
    wait_for(lambda: _applied(served), timeout=READY_TIMEOUT, what="the GPU config applied")
    replicas = list(_replicas(served))
    assert sorted(r.gpu_devices for r in replicas) == ["0", "1"]
    for replica in replicas:
        env = _environment(replica.pid)
        assert env["CUDA_VISIBLE_DEVICES"] == replica.gpu_devices
        started = Event.objects.get(type=EventType.REPLICA_STARTED, replica_id=replica.replica_id)
        assert f"GPUs {replica.gpu_devices}" in started.message

    # A third replica finds no free GPU: it waits, and the version says why.
    services.compute_config_update(
        name=served,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=False,
        workload_type="GPU_SMALL",
        overrides={"min_replicas": 3},
        user=owner,
    )
    wait_for(
        lambda: "No free GPU" in _version(served).service_message,
        timeout=READY_TIMEOUT,
        what="the third replica to wait for a GPU",
    )
    # No third replica was started (the CPU replica the GPU rollout replaced may still be
    # draining).
    assert _replicas(served, (ReplicaState.PENDING, ReplicaState.RUNNING)).count() == 2


def test_new_limits_replace_the_replicas_and_autoscaling_keeps_them(served: str, owner):
    (first,) = _replicas(served)
    services.compute_config_update(
        name=served,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=False,
        overrides={"memory_mb": 6144},
        user=owner,
    )
    wait_for(lambda: _applied(served), timeout=READY_TIMEOUT, what="the new limits applied")
    (second,) = _replicas(served)
    assert second.replica_id != first.replica_id
    started = Event.objects.filter(
        endpoint__registered_model_name=served, type=EventType.CONFIG_UPDATE_STARTED
    ).first()
    assert "replaced by ones with the new limits: 1 CPU, 6144 MiB memory" in started.message

    services.compute_config_update(
        name=served,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=False,
        overrides={"memory_mb": 6144, "max_replicas": 2, "scale_down_delay_seconds": 5},
        user=owner,
    )
    newest = ServingEndpoint.objects.get(registered_model_name=served).current_compute_config(
        "Production"
    )
    wait_for(
        lambda: _version(served).service_config_id == newest.pk,
        timeout=READY_TIMEOUT,
        what="the autoscaling settings applied",
    )
    assert [r.replica_id for r in _replicas(served)] == [second.replica_id]
