"""Replicas on a Ray cluster (``SERVING_RUNTIME=ray``): each one a detached actor
(``ray_actor``) named by its replica id in the installation's namespace, placed by its
workload size's CPUs and memory (which its node also holds it to), reached by the gateway
at its node's address (Ray is not on the scoring path). Ray never restarts an actor: the
reconcile loop replaces a dead one like a crashed process, and ``discover`` finds the
living ones again after a worker restart. The ``pid`` handed back is the actor's on its
node, shown in events only (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayError

from .base import Placement, ReplicaLimits, ReplicaSpec, ping
from .local import LocalRuntime
from .ray_actor import ReplicaSupervisor

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 10.0
# Ray starts every worker process with this; checked when the runtime connects.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayUnavailable(OSError):
    """The Ray cluster cannot be reached or refused a replica."""


class Unsure(Exception):
    """Ray could not tell whether a replica's actor is alive."""


def _node_of(node_id: str, address: str) -> str:
    """How a node is shown: its address and the start of its Ray node id."""
    return f"{address}/{node_id[:8]}"


class RayRuntime:
    def __init__(
        self,
        *,
        address: str,
        namespace: str,
        placement_timeout: float = 60.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.placement_timeout = placement_timeout
        self._placements: dict[str, Placement] = {}
        # {replica id: how its node holds its limits}, {replica id: why it stopped}.
        self._enforced: dict[str, str] = {}
        self._reasons: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        # Local files (build logs) are read like the local runtime reads them.
        self._files = object.__new__(LocalRuntime)

    # --- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        with self._lock:
            if ray.is_initialized():
                return
            # Ray enables faulthandler on sys.stderr, which must be a real file: a Celery
            # worker replaces it with a logging proxy.
            stderr, sys.stderr = sys.stderr, sys.__stderr__
            try:
                ray.init(
                    address=self.address or "auto",
                    namespace=self.namespace,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )
            finally:
                sys.stderr = stderr

    def _actor(self, replica_id: str):
        """The actor's handle (kept once found); None when no actor has that name."""
        self.connect()
        handle = self._handles.get(replica_id)
        if handle is None:
            try:
                handle = ray.get_actor(replica_id, namespace=self.namespace)
            except ValueError:
                return None
            self._handles[replica_id] = handle
        return handle

    def _call(self, replica_id: str, method: str, *args, timeout: float = CALL_TIMEOUT_SECONDS):
        """``method`` of the replica's actor. Raises LookupError when the actor is gone for
        certain (Ray reports it dead, or no actor has its name), Unsure when Ray could not
        tell (a timeout, a busy or briefly unreachable actor, a control store that is slow
        while it handles a lost node): a live replica is never taken for dead."""
        actor = self._actor(replica_id)
        if actor is None:
            if self._listed(replica_id):
                raise Unsure(replica_id)
            raise LookupError(replica_id)
        try:
            return ray.get(getattr(actor, method).remote(*args), timeout=timeout)
        except ActorDiedError as exc:
            self._handles.pop(replica_id, None)
            raise LookupError(replica_id) from exc
        except (GetTimeoutError, RayError) as exc:
            raise Unsure(replica_id) from exc

    def _listed(self, replica_id: str) -> bool:
        """Whether Ray still lists a live actor of that name in the namespace."""
        try:
            names = ray.util.list_named_actors(all_namespaces=True)
        except RayError:
            return True  # cannot tell: not gone for certain
        return any(
            e.get("name") == replica_id and e.get("namespace") == self.namespace for e in names
        )

    # --- the runtime interface -------------------------------------------------------------

    def start(self, spec: ReplicaSpec) -> int:
        self.connect()
        options: dict[str, Any] = {
            "name": spec.replica_id,
            "namespace": self.namespace,
            "lifetime": "detached",
            # The reconcile loop is the one source of truth: it replaces a dead actor.
            "max_restarts": 0,
            "max_concurrency": 4,
            "scheduling_strategy": "SPREAD",
            **reservation(spec.limits),
        }
        if spec.limits.gpus:
            options["num_gpus"] = spec.limits.gpus
        actor_class = ray.remote(_Supervisor)
        try:
            actor = actor_class.options(**options).remote(asdict(spec), self.namespace)
            placed = ray.get(actor.start.remote(), timeout=self.placement_timeout)
        except GetTimeoutError as exc:
            self._kill_actor(spec.replica_id)
            raise RayUnavailable(
                f"no node of the Ray cluster had room for a replica ({_needs(spec.limits)}) "
                f"within {self.placement_timeout:.0f}s"
            ) from exc
        except (RayError, ValueError) as exc:
            self._kill_actor(spec.replica_id)
            raise RayUnavailable(f"the Ray cluster refused the replica: {exc}") from exc
        where = Placement(placed["host"], placed["port"], placed["node"])
        self._placements[spec.replica_id] = where
        self._enforced[spec.replica_id] = placed.get("limits", "")
        return int(placed["pid"])

    def enforcement(self, replica_id: str) -> str:
        return self._enforced.get(replica_id, "")

    def stop_reason(self, replica_id: str) -> str:
        """What the replica's node recorded as it exited (asked before its actor went)."""
        return self._reasons.get(replica_id, "")

    def release(self, replica_id: str) -> None:
        """Nothing here: a replica's node removes its group as it exits."""

    def placement(self, replica_id: str) -> Placement | None:
        found = self._placements.get(replica_id)
        if found is None:
            with contextlib.suppress(LookupError, Unsure):
                info = self._call(replica_id, "info")
                found = Placement(info["host"], info["port"], info["node"])
        return found

    def stop(self, pid: int, replica_id: str, *, grace_seconds: float) -> None:
        self.terminate(pid, replica_id)
        from .local import wait_until

        if not wait_until(lambda: not self.is_alive(pid, replica_id), timeout=grace_seconds):
            self.kill(pid, replica_id)

    def terminate(self, pid: int, replica_id: str) -> None:
        with contextlib.suppress(LookupError, Unsure):
            self._call(replica_id, "terminate")

    def kill(self, pid: int, replica_id: str) -> None:
        self._keep_log(replica_id)
        with contextlib.suppress(LookupError, Unsure):
            self._call(replica_id, "kill", timeout=2)
        self._kill_actor(replica_id)

    def _kill_actor(self, replica_id: str) -> None:
        actor = self._actor(replica_id)
        if actor is not None:
            with contextlib.suppress(RayError, ValueError):
                ray.kill(actor, no_restart=True)
        self._placements.pop(replica_id, None)
        self._handles.pop(replica_id, None)

    def is_alive(self, pid: int, replica_id: str) -> bool:
        try:
            state = self._call(replica_id, "status")
        except LookupError:
            return False
        except Unsure:
            return True  # not gone for certain: the probe decides about its health
        if state in ("exited", "failed"):
            # Its replica is gone: the actor keeps nothing worth keeping but its log and
            # why it stopped.
            self._reasons[replica_id] = self._call_quiet(replica_id, "stop_reason") or ""
            self._keep_log(replica_id)
            self._kill_actor(replica_id)
            return False
        return True

    def lost_nodes(self) -> set[str]:
        """The nodes Ray reports dead (a dead node's actors died with it), so the event of a
        replica that went with its node names the node."""
        try:
            return {n["node"] for n in self.nodes() if not n["alive"]}
        except RayError:
            return set()

    def probe(self, host: str, port: int, *, timeout: float = 2.0) -> bool:
        return ping(host, port, timeout=timeout)

    def discover(self, within: str = "") -> dict[str, int]:
        """{replica id: pid} of every live actor in this installation's namespace."""
        self.connect()
        found: dict[str, int] = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") != self.namespace:
                continue
            with contextlib.suppress(LookupError, Unsure):
                info = self._call(entry["name"], "info", timeout=5)
                found[entry["name"]] = int(info["pid"])
                self._placements[entry["name"]] = Placement(
                    info["host"], info["port"], info["node"]
                )
        return found

    def port_is_free(self, host: str, port: int) -> bool:
        # The replica's node picks another port when this one is taken there.
        return True

    def read_log(self, log_path: str, *, max_bytes: int) -> str:
        """A replica's log through its actor (on its node); a build log, or the log a
        stopped replica left, from this host's file."""
        replica_id = Path(log_path).stem
        with contextlib.suppress(LookupError, Unsure):
            return self._call(replica_id, "read_log", max_bytes)
        return self._files.read_log(log_path, max_bytes=max_bytes)

    def rotate_log(self, log_path: str, *, max_bytes: int) -> bool:
        with contextlib.suppress(LookupError, Unsure):
            return bool(self._call(Path(log_path).stem, "rotate_log", max_bytes))
        return False

    def _keep_log(self, replica_id: str) -> None:
        """Copy a finished replica's log to this host before its actor goes, so the Logs
        tab still shows it (where the local runtime would have written it)."""
        actor_spec = self._call_quiet(replica_id, "spec_log_path")
        if not actor_spec:
            return
        local_path, text = actor_spec
        with contextlib.suppress(OSError):
            Path(local_path).parent.mkdir(parents=True, exist_ok=True)
            Path(local_path).write_text(text, encoding="utf-8")

    def _call_quiet(self, replica_id: str, method: str):
        with contextlib.suppress(LookupError, Unsure):
            return self._call(replica_id, method, timeout=5)
        return None

    def gpu_capacity(self) -> float:
        """The GPUs the cluster's live nodes declare (Ray's ``GPU`` resource)."""
        self.connect()
        return float(ray.cluster_resources().get("GPU", 0.0))

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes: {"node", "alive", "cpus"} each."""
        self.connect()
        return [
            {
                "node": _node_of(n["NodeID"], n["NodeManagerAddress"]),
                "alive": bool(n.get("Alive")),
                "cpus": n.get("Resources", {}).get("CPU", 0),
            }
            for n in ray.nodes()
        ]


def reservation(limits: ReplicaLimits) -> dict[str, float]:
    """What a replica's actor reserves on its node: its workload size's CPUs (one when
    it sets none) and memory."""
    reserved: dict[str, float] = {"num_cpus": limits.cpus or 1.0}
    if limits.memory_mb:
        reserved["memory"] = limits.memory_mb * 1024 * 1024
    return reserved


def _needs(limits: ReplicaLimits) -> str:
    reserved = reservation(limits)
    memory = f", {limits.memory_mb} MiB" if "memory" in reserved else ""
    return f"{reserved['num_cpus']:g} CPU{memory}"


class _Supervisor(ReplicaSupervisor):
    """The actor: knows its node when Ray constructs it there."""

    def __init__(self, spec: dict[str, Any], namespace: str) -> None:
        node_id = ray.get_runtime_context().get_node_id()
        host = ray.util.get_node_ip_address()
        # The GPUs Ray gave this actor: the replica it starts is shown those.
        given = tuple(int(i) for i in ray.get_gpu_ids() if str(i).isdigit())
        limits = {**spec.get("limits", {}), "gpu_devices": given}
        super().__init__({**spec, "limits": limits}, namespace, _node_of(node_id, host), host)


def from_environment() -> RayRuntime:
    return RayRuntime(
        address=os.environ.get("RAY_ADDRESS", ""),
        namespace=os.environ.get("SERVING_RAY_NAMESPACE", "serving-ui"),
        placement_timeout=float(os.environ.get("SERVING_RAY_PLACEMENT_TIMEOUT_SECONDS", "60")),
    )
