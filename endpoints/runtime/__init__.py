"""Starting, stopping, probing and reading the output of replicas (model server processes).

``base`` defines the interface, ``local`` runs replicas as processes on this host.
Nothing in this package imports Django, so the replica launcher stays lean.
"""

from __future__ import annotations

from .base import ReplicaSpec, Runtime
from .local import LocalRuntime

__all__ = ["LocalRuntime", "ReplicaSpec", "Runtime", "get_runtime"]


def get_runtime() -> Runtime:
    return LocalRuntime()
