"""A 2-node Ray cluster on this machine and the product running its replicas there (with
``ray_gpu_stack``, nodes that declare a logical GPU each).

``ray.cluster_utils.Cluster`` starts a head node and a second node as separate raylets,
all on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from picking this
machine's own interface address). A Celery worker (with beat) and the web server run with
``SERVING_RUNTIME=ray`` against it; the session's own worker, if one runs, is held still
meanwhile, so only the cluster's worker reconciles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import _until_up, serve_product
from django.conf import settings

from endpoints import runtime
from endpoints.dev.devstack import ManagedProcess

NODE_CPUS = 2


@dataclass
class RayStack:
    cluster: object
    other_node: object
    env: dict[str, str]
    base: str
    worker: ManagedProcess
    log_dir: Path

    def kill_worker(self) -> None:
        self.worker.kill()

    def start_new_worker(self) -> None:
        self.worker = start_worker(self.env, self.log_dir, "cluster-worker-2")


def start_worker(env: dict[str, str], log_dir: Path, name: str) -> ManagedProcess:
    worker = ManagedProcess(
        name,
        [
            *(sys.executable, "-m", "celery", "-A", "serving_ui", "worker", "-B"),
            *("--loglevel", "INFO", "--concurrency", "2"),
            *("--hostname", f"cluster-{os.getpid()}-{name}@%h"),
            *("--schedule", str(Path(settings.VAR_DIR) / f"{name}-beat-schedule")),
        ],
        log_dir,
        env=env,
    ).start()
    _until_up(worker, lambda: "ready" in worker.output(), timeout=60, what="celery worker")
    return worker


@pytest.fixture(scope="module")
def ray_stack(
    django_db_setup, django_db_blocker, redis_server, stack_log_dir: Path, reconcile_paused
) -> Iterator[RayStack]:
    yield from cluster_stack(stack_log_dir)


@pytest.fixture(scope="module")
def ray_gpu_stack(
    django_db_setup, django_db_blocker, redis_server, stack_log_dir: Path, reconcile_paused
) -> Iterator[RayStack]:
    """The same, each node declaring one logical GPU (Ray's resource: no GPU is here)."""
    yield from cluster_stack(stack_log_dir, gpus_per_node=1)


def cluster_stack(stack_log_dir: Path, *, gpus_per_node: int = 0) -> Iterator[RayStack]:
    # Ray's node processes (and so the actors) inherit this process's environment.
    before = dict(os.environ)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["SERVING_RAY_NODE_DIR"] = str(Path(settings.VAR_DIR) / "ray-nodes")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "num_gpus": gpus_per_node,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    other = cluster.add_node(
        num_cpus=NODE_CPUS, num_gpus=gpus_per_node, node_ip_address="127.0.0.1"
    )
    cluster.wait_for_nodes()
    # The registry's tables exist before the worker and the tests reach it at once.
    from endpoints import registry

    registry.client().search_registered_models(max_results=1)
    env = {
        "SERVING_RUNTIME": "ray",
        "RAY_ADDRESS": cluster.address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "SERVING_RAY_NODE_DIR": os.environ["SERVING_RAY_NODE_DIR"],
    }
    os.environ.update(env)  # this process reads through the same runtime
    runtime._ray_runtime = None  # connected to this cluster, not an earlier module's
    worker = start_worker(env, stack_log_dir, "cluster-worker")
    web = serve_product("cluster-web", stack_log_dir, env=env)
    base = next(web)
    stack = RayStack(cluster, other, env, base, worker, stack_log_dir)
    try:
        yield stack
    finally:
        stack.worker.stop()
        next(web, None)
        import ray

        ray.shutdown()
        cluster.shutdown()
        runtime._ray_runtime = None
        os.environ.clear()
        os.environ.update(before)
