"""What the Ray cluster tests hold: the 2-node cluster on this machine, and the product's
worker and web server running replicas there (``SERVING_RUNTIME=ray``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from endpoints import runtime
from endpoints.dev.devstack import ManagedProcess
from tests.support.stack import serve_product, start_worker


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
        self.worker = start_worker(self.log_dir, "cluster-worker-2", self.env)


# What each node declares to Ray. A replica reserves its workload size's CPUs and memory
# (Medium: 2 CPUs and 8 GiB), and a transition of a Medium stage runs the new version's
# two replicas beside the old one's: four per node at most. The reservations are Ray's
# bookkeeping; these tests' replicas use a few hundred MiB each.
NODE_CPUS = 4
NODE_MEMORY = 32 * 1024**3


def cluster_stack(stack_log_dir: Path, *, gpus_per_node: int = 0) -> Iterator[RayStack]:
    """The cluster, a worker and a web server using it; everything stopped afterwards."""
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
            "memory": NODE_MEMORY,
            "num_gpus": gpus_per_node,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    other = cluster.add_node(
        num_cpus=NODE_CPUS, memory=NODE_MEMORY, num_gpus=gpus_per_node, node_ip_address="127.0.0.1"
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
    worker = start_worker(stack_log_dir, "cluster-worker", env)
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
