"""Starting, stopping, probing and reading the output of replicas (model server processes).

``base`` defines the interface, ``local`` runs replicas as processes on this host, ``ray``
runs each one as a Ray actor on a node of a Ray cluster (``SERVING_RUNTIME=ray``).
Nothing in this package imports Django, so the replica launcher stays lean: the choice
is read from the environment, which the settings fill in.
"""

from __future__ import annotations

import os

from .base import Placement, ReplicaSpec, Runtime
from .local import LocalRuntime

__all__ = ["LocalRuntime", "Placement", "ReplicaSpec", "Runtime", "get_runtime", "runtime_kind"]

_ray_runtime: Runtime | None = None


def runtime_kind() -> str:
    return os.environ.get("SERVING_RUNTIME", "local")


def get_runtime() -> Runtime:
    """The runtime this installation runs replicas with (one Ray connection per process)."""
    global _ray_runtime
    if runtime_kind() != "ray":
        return LocalRuntime()
    if _ray_runtime is None:
        from .ray import from_environment

        _ray_runtime = from_environment()
    return _ray_runtime
