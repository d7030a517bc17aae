"""The runtime interface: what the reconcile loop needs from wherever replicas run."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ReplicaLimits:
    """What one replica may use; 0 means no limit (docs/provisioning.md, workload sizes)."""

    cpus: float = 0.0
    memory_mb: int = 0
    max_processes: int = 0
    # The size of every tmpfs the replica gets (``/tmp``, ``/dev/shm``, the sandbox's covers).
    tmp_mb: int = 0
    # GPUs (fractions allowed on Ray) and, on the local runtime, the device indexes given.
    gpus: float = 0.0
    gpu_devices: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReplicaSpec:
    replica_id: str
    model_path: str
    host: str
    port: int
    log_path: str
    # The interpreter that runs the model server: the product's own, or a per-model venv's.
    python: str
    request_timeout_seconds: float = 120.0
    # Which HTTP server answers: "serving-ui" (the product's own) or "mlflow" (MLflow's).
    server: str = "serving-ui"
    extra_env: dict[str, str] = field(default_factory=dict)
    # "zygote": forked from a pre-warmed interpreter of ``python`` (imports already done),
    # a fresh one when that cannot be reached; "spawn": always a fresh interpreter.
    start_mode: str = "zygote"
    # Where zygotes keep their sockets and logs (under the data directory); "": spawn.
    zygote_dir: str = ""
    # "bwrap": the model runs in the sandbox of ``runtime.sandbox``; "off": as the product's
    # own user with the product's view of the files; "": the host's default
    # (``SERVING_SANDBOX``, else bwrap where installed).
    sandbox: str = ""
    # In the sandbox: "none", a network namespace of its own (it reaches nothing; the port
    # it serves on is bound for it), or "host", the host's network (``sandbox``).
    network: str = "none"
    # The directory holding every model a zygote may fork replicas of (in its sandbox,
    # read-only; each replica keeps its own model only). "": the model's parent directory.
    models_root: str = ""
    # A runtime whose replicas run on other machines downloads the model itself: its
    # ``models:/<name>/<version>`` URI and the registry that resolves it.
    model_uri: str = ""
    registry_uri: str = ""
    limits: ReplicaLimits = field(default_factory=ReplicaLimits)

    def __post_init__(self) -> None:
        # A spec that crossed to another process as a dict (``asdict``: to a Ray actor, a
        # helper process) has its limits back as a dict.
        if isinstance(self.limits, dict):
            limits = {**self.limits, "gpu_devices": tuple(self.limits.get("gpu_devices", ()))}
            object.__setattr__(self, "limits", ReplicaLimits(**limits))


@dataclass(frozen=True)
class Placement:
    """Where a started replica listens and on which node it runs."""

    host: str
    port: int
    node: str


def ping(host: str, port: int, *, timeout: float = 2.0) -> bool:
    """Whether the replica at ``host:port`` answers its health check (``GET /ping``)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Runtime(Protocol):
    def start(self, spec: ReplicaSpec) -> int:
        """Start a replica and return its process id without waiting for it to be healthy."""
        ...

    def stop(self, pid: int, replica_id: str, *, grace_seconds: float) -> None:
        """Stop gracefully (in-flight requests finish), then forcibly after the grace period."""
        ...

    def terminate(self, pid: int, replica_id: str) -> None:
        """Ask a replica to stop (it finishes in-flight requests); returns at once."""
        ...

    def kill(self, pid: int, replica_id: str) -> None:
        """Stop a replica now."""
        ...

    def is_alive(self, pid: int, replica_id: str) -> bool: ...

    def probe(self, host: str, port: int, *, timeout: float = 2.0) -> bool:
        """True when the replica answers its health check."""
        ...

    def discover(self, within: str = "") -> dict[str, int]:
        """Every replica process on this host: {replica_id: pid}; with ``within``, only
        those whose command line mentions it (this installation's data directory)."""
        ...

    def port_is_free(self, host: str, port: int) -> bool: ...

    def placement(self, replica_id: str) -> Placement | None:
        """Where ``start`` put the replica; None: at the spec's host and port, here."""
        ...

    def lost_nodes(self) -> set[str]:
        """Nodes known to be lost (a replica recorded on one went with it)."""
        ...

    def enforcement(self, replica_id: str) -> str:
        """How the limits of a replica ``start`` started are held ("cgroup v2", "cgroup
        v1", "rlimits"; "" when it has none)."""
        ...

    def stop_reason(self, replica_id: str) -> str:
        """Why a replica that is gone stopped, when its limits say so ("out of memory
        (limit 4096 MiB)"); "" otherwise."""
        ...

    def release(self, replica_id: str) -> None:
        """Give up what held a replica that is gone (its group)."""
        ...

    def read_log(self, log_path: str, *, max_bytes: int) -> str: ...

    def rotate_log(self, log_path: str, *, max_bytes: int) -> bool: ...


def listening_socket(host: str, port: int) -> socket.socket:
    """``host:port`` bound (not yet listening: the replica starts listening once its model
    is loaded), inheritable by a process started next: how a replica without a network of
    its own gets its port (``replica --listen-fd``).

    Made with ``IPPROTO_TCP``, not 0: asyncio turns Nagle off only on sockets whose
    ``proto`` says TCP, and the connections a forked replica accepts on this very object
    inherit it (with Nagle on, every keep-alive answer waits ~40 ms for the client's
    delayed ACK). ``TCP_NODELAY`` on the listener is inherited by them too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
