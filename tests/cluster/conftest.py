"""A 2-node Ray cluster on this machine and the product running its replicas there.

``ray.cluster_utils.Cluster`` starts a head node and a second node as separate raylets,
all on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from picking this
machine's own interface address). A Celery worker (with beat) and the web server run with
``SERVING_RUNTIME=ray`` against it; the session's own worker, if one runs, is held still
meanwhile, so only the cluster's worker reconciles.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.ray_cluster import RayStack
from tests.support.stack import serve_product, start_worker

# What each node declares to Ray. A replica reserves its workload size's CPUs and memory
# (Medium: 2 CPUs and 8 GiB), and a transition of a Medium stage runs the new version's
# two replicas beside the old one's: four per node at most. The reservations are Ray's
# bookkeeping; these tests' replicas use a few hundred MiB each.
NODE_CPUS = 4
NODE_MEMORY = 32 * 1024**3


@pytest.fixture(scope="module")
def ray_stack(
    django_db_setup, django_db_blocker, redis_server, stack_log_dir: Path, reconcile_paused
) -> Iterator[RayStack]:
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
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    other = cluster.add_node(num_cpus=NODE_CPUS, memory=NODE_MEMORY, node_ip_address="127.0.0.1")
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
        os.environ.clear()
        os.environ.update(before)
