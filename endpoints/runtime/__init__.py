"""Starting, stopping, probing and reading the output of replicas (model server processes).
Nothing here imports Django, so replicas stay lean; which runtime runs them is read from
the environment, which the settings fill in.

- ``base``: the interface the reconcile loop needs; ``local``: processes on this host;
  ``ray`` and ``ray_actor``: each replica a detached Ray actor (``SERVING_RUNTIME=ray``);
- ``replica``: the launcher (``python -m endpoints.runtime.replica``); ``replica_app``: the
  ASGI app it serves, MLflow's scoring protocol, with ``fastpath`` and ``batching``;
- ``zygote``: a pre-warmed interpreter per environment that forks replicas;
  ``zygote_pool``: starting zygotes and asking them for replicas;
- ``sandbox``: the view every runtime puts model code in; ``confine``: a forked replica
  confining itself; ``seccomp``: the filter of a replica without a network;
- ``gpus``: this host's GPUs, what a replica given some sees and which nodes it binds.
"""

from __future__ import annotations

import os

from . import gpus
from .base import Placement, ReplicaSpec, Runtime
from .local import LocalRuntime

__all__ = [
    "LocalRuntime",
    "Placement",
    "ReplicaSpec",
    "Runtime",
    "get_runtime",
    "gpu_capacity",
    "runtime_kind",
]

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


def gpu_capacity() -> float:
    """The GPUs replicas can be given here: the Ray cluster's, or this host's devices."""
    if runtime_kind() == "ray":
        return get_runtime().gpu_capacity()
    return float(len(gpus.local_devices()))
