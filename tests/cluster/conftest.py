"""A 2-node Ray cluster on this machine and the product running its replicas there (with
``ray_gpu_stack``, nodes that declare a logical GPU each).

``ray.cluster_utils.Cluster`` starts a head node and a second node as separate raylets,
all on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from picking this
machine's own interface address). A Celery worker (with beat) and the web server run with
``SERVING_RUNTIME=ray`` against it; the session's own worker, if one runs, is held still
meanwhile, so only the cluster's worker reconciles.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_cluster import RayStack, cluster_stack


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
