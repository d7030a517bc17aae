"""GPU workload types on a 2-node Ray cluster whose nodes declare one logical GPU each
(``ray_gpu_stack``): Ray's accounting of GPUs is real, the GPUs are not (none is on this
machine, and no CUDA code runs). Every node, actor and socket is on 127.0.0.1.

- a GPU_SMALL replica's actor reserves one GPU, so two replicas take both nodes, and each
  replica is shown the GPU Ray gave its actor;
- with ``gpus`` 0.5, four replicas share the two GPUs;
- the installation reports which workload types it can serve.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests

from endpoints import services
from endpoints.models import Replica, ReplicaState
from endpoints.runtime import LocalRuntime
from tests.support.models import constant_model, register
from tests.support.stack import wait_for

pytestmark = pytest.mark.serial

API = "/api/2.0/preview/mlflow/endpoints-v2/"
READY_TIMEOUT = 240
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)


@pytest.fixture
def name(ray_gpu_stack, transactional_db, owner):
    """A constant model's name; its serving is disabled afterwards."""
    model = f"gpu-{uuid.uuid4().hex[:8]}"
    register(model, constant_model("gpu"), "Production")
    yield model
    services.endpoint_disable(name=model, user=owner)
    wait_for(
        lambda: (
            not Replica.objects.filter(
                version__endpoint__registered_model_name=model, state__in=NOT_STOPPED
            ).exists()
        ),
        timeout=120,
        what="every replica to stop",
    )
    wait_for(lambda: _free_gpus() == 2.0, timeout=60, what="the GPUs free again")


def _free_gpus() -> float:
    # Imported once the cluster's fixture told Ray to stay on 127.0.0.1, which Ray reads
    # when it is first imported.
    import ray

    return ray.available_resources().get("GPU", 0.0)


def _serve(name: str, owner, **overrides) -> None:
    services.endpoint_enable(name=name, user=owner)
    services.compute_config_update(
        name=name,
        stage="Production",
        workload_size="Small",
        scale_to_zero_enabled=False,
        workload_type="GPU_SMALL",
        overrides=overrides,
        user=owner,
    )


def _running(name: str, count: int) -> list[Replica]:
    def enough():
        found = list(
            Replica.objects.filter(
                version__endpoint__registered_model_name=name, state=ReplicaState.RUNNING
            )
        )
        return found if len(found) == count else None

    return wait_for(enough, timeout=READY_TIMEOUT, what=f"{count} running replicas")


def _environment(replica_id: str) -> dict[str, str]:
    """The environment of the replica process its actor started (on this machine)."""
    pid = LocalRuntime().discover()[replica_id]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_each_gpu_replica_reserves_a_gpu_and_sees_the_one_its_actor_got(name: str, owner):
    _serve(name, owner, min_replicas=2)
    replicas = _running(name, 2)
    # One GPU per node: the two replicas took one node each, and every GPU.
    assert len({r.node for r in replicas}) == 2
    assert _free_gpus() == 0.0
    for replica in replicas:
        assert _environment(replica.replica_id)["CUDA_VISIBLE_DEVICES"] == "0"


def test_replicas_share_a_gpu_with_a_fraction_of_one(name: str, owner):
    _serve(name, owner, min_replicas=4, gpus=0.5)
    replicas = _running(name, 4)
    assert sorted(
        len([r for r in replicas if r.node == n]) for n in {r.node for r in replicas}
    ) == [
        2,
        2,
    ]
    assert _free_gpus() == 0.0


def test_the_workload_types_say_what_the_cluster_can_give(
    ray_gpu_stack, transactional_db, make_token, owner
):
    answer = requests.get(
        ray_gpu_stack.base + API + "get-supported-workload-sizes",
        headers={"Authorization": f"Bearer {make_token(owner)}"},
        timeout=30,
    ).json()
    assert "workload_types" in answer, answer
    available = {t["workload_type"]: t["available"] for t in answer["workload_types"]}
    # Two GPUs in the cluster: one per replica fits, four does not.
    assert available == {
        "CPU": True,
        "GPU_SMALL": True,
        "GPU_MEDIUM": True,
        "GPU_LARGE": True,
        "MULTIGPU_MEDIUM": False,
    }
