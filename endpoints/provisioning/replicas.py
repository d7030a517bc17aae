"""Replica rows and their processes: start, stop, state changes, log tails.

A replica's row is committed (Pending, a free port reserved in Redis for a minute)
before its process starts, so a worker killed in between leaves a row the next pass
adopts or expires, never an unknown process.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import socket
import sys
import time
from contextlib import suppress
from dataclasses import replace

from django.conf import settings
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError

from endpoints import kv
from endpoints.models import ComputeConfig, EndpointVersion, Replica, ReplicaState, ServiceState
from endpoints.runtime import LocalRuntime, ReplicaSpec, Runtime, cgroups
from endpoints.runtime.batching import BatchSettings
from endpoints.runtime.gpus import local_devices, parse_devices

from . import environments
from .limits import replica_limits
from .observe import NOT_STOPPED

log = logging.getLogger(__name__)

PORT_RESERVATION_SECONDS = 60
PORTS_TRIED = 200
# While a pass waits for the replicas it started, it probes them this often.
START_POLL_SECONDS = 0.03


def serving(key: str):
    return settings.SERVING[key]


def set_state(replica: Replica, new_state: str, message: str = "") -> None:
    replica.state = new_state
    replica.state_message = message
    fields = ["state", "state_message"]
    if new_state in (ReplicaState.ERROR, ReplicaState.TERMINATED):
        replica.stopped_at = timezone.now()
        fields.append("stopped_at")
    replica.save(update_fields=fields)


def count_start_failure(version: EndpointVersion) -> None:
    EndpointVersion.objects.filter(pk=version.pk).update(start_failures=F("start_failures") + 1)
    version.start_failures += 1


def with_log_tail(runtime: Runtime, message: str, replica: Replica, lines: int = 8) -> str:
    """``message`` followed by the replica's last lines of output, when it has any."""
    tail = ""
    if replica.log_path:
        with suppress(OSError):
            text = runtime.read_log(replica.log_path, max_bytes=16 * 1024)
            kept = [line for line in text.splitlines() if line.strip()][-lines:]
            tail = "\n".join(kept)[-1500:]
    return f"{message} Last output:\n{tail}" if tail else message


def begin_stop(replica: Replica, message: str) -> bool:
    """Take a replica out of routing now (its process is stopped after the drain).

    True when it was serving, so routing changed."""
    was_running = replica.state == ReplicaState.RUNNING
    replica.state = ReplicaState.TERMINATING
    replica.state_message = message
    replica.stopped_at = timezone.now()
    replica.save(update_fields=["state", "state_message", "stopped_at"])
    return was_running


def allocate_port(runtime: Runtime, host: str) -> int | None:
    low, high = serving("REPLICA_PORT_MIN"), serving("REPLICA_PORT_MAX")
    taken = set(Replica.objects.filter(state__in=NOT_STOPPED).values_list("port", flat=True))
    candidates = [p for p in range(low, high + 1) if p not in taken]
    random.shuffle(candidates)
    client = kv.redis_client()
    for port in candidates[:PORTS_TRIED]:
        if not runtime.port_is_free(host, port):
            continue
        # A short reservation: two workers starting replicas at once pick different ports.
        with suppress(RedisError):
            key = kv.port_reservation_key(host, port)
            if not client.set(key, "1", nx=True, ex=PORT_RESERVATION_SECONDS):
                continue
        return port
    return None


def allocate_gpus(runtime: Runtime, version: EndpointVersion) -> tuple[int, ...] | None:
    """This host's GPUs for a new replica of ``version``, none of them another live
    replica's: () when it needs none or its runtime places GPUs itself (Ray), None when
    too few are free now.

    Each device is reserved in Redis before the rows are read, and the reservation is
    dropped once the new row holds it: so a worker that reserved a device either sees the
    row of the one that had it before, or that one's reservation stops it."""
    count = math.ceil(replica_limits(replica_config(version)).gpus)
    if not count or not isinstance(runtime, LocalRuntime):
        return ()
    host = socket.gethostname()
    chosen: list[int] = []
    for device in local_devices():
        if not _reserve_gpu(host, device):
            continue
        if device in _gpus_in_use(host):
            release_gpus((device,))
            continue
        chosen.append(device)
        if len(chosen) == count:
            return tuple(chosen)
    release_gpus(tuple(chosen))
    return None


def _reserve_gpu(host: str, device: int) -> bool:
    with suppress(RedisError):
        key = kv.gpu_reservation_key(host, device)
        return bool(kv.redis_client().set(key, "1", nx=True, ex=PORT_RESERVATION_SECONDS))
    return True  # without Redis, the rows alone decide (as for ports)


def _gpus_in_use(host: str) -> set[int]:
    rows = Replica.objects.filter(state__in=NOT_STOPPED, worker_host=host).exclude(gpu_devices="")
    return {d for row in rows.values_list("gpu_devices", flat=True) for d in parse_devices(row)}


def gpu_wait(version: EndpointVersion) -> float:
    """Seconds a replica of ``version`` has been waiting for a free GPU (0: from now)."""
    now = time.time()
    with suppress(RedisError):
        client = kv.redis_client()
        key = kv.gpu_wait_key(version.pk)
        client.set(key, repr(now), nx=True, ex=3600)
        return now - float(client.get(key) or now)
    return 0.0


def gpu_wait_over(version: EndpointVersion) -> None:
    with suppress(RedisError):
        kv.redis_client().delete(kv.gpu_wait_key(version.pk))


def release_gpus(devices: tuple[int, ...]) -> None:
    """Drop the reservations of ``devices``: a replica row holds them, or none will."""
    host = socket.gethostname()
    with suppress(RedisError):
        for device in devices:
            kv.redis_client().delete(kv.gpu_reservation_key(host, device))


def create_row(
    version: EndpointVersion, name: str, port: int, restarts: int, gpu_devices: tuple[int, ...]
) -> Replica:
    """The Pending row of a new replica of ``version`` of the registered model ``name``."""
    replica_id = f"v{version.version}-{secrets.token_hex(4)}"[:32]
    return Replica.objects.create(
        version=version,
        replica_id=replica_id,
        host=serving("REPLICA_HOST"),
        port=port,
        gpu_devices=",".join(str(d) for d in gpu_devices),
        worker_host=socket.gethostname(),
        # Where the runtime placed it is recorded once it started (``launch``).
        node=socket.gethostname(),
        log_path=str(environments.replica_log_path(name, version.version, replica_id)),
        restarts=restarts,
    )


def launch(runtime: Runtime, replica: Replica) -> str:
    """Start the row's process; "" on success, else why it could not start."""
    version = replica.version
    config = replica_config(version)
    spec = ReplicaSpec(
        replica_id=replica.replica_id,
        model_path=version.model_path,
        host=replica.host,
        port=replica.port,
        log_path=replica.log_path,
        python=version.environment_path or sys.executable,
        request_timeout_seconds=serving("REQUEST_TIMEOUT_SECONDS"),
        server=serving("REPLICA_SERVER"),
        start_mode=serving("REPLICA_START"),
        zygote_dir=str(environments.zygote_dir()),
        extra_env=batching_env(config),
        sandbox=serving("SANDBOX"),
        network=serving("SANDBOX_NETWORK"),
        models_root=str(environments.models_root()),
        model_uri=f"models:/{replica.version.endpoint.registered_model_name}/{version.version}",
        registry_uri=settings.MLFLOW_REGISTRY_URI,
        limits=replace(replica_limits(config), gpu_devices=parse_devices(replica.gpu_devices)),
    )
    if spec.sandbox == "off":
        log.warning(
            "replica %s runs WITHOUT a sandbox (SERVING_SANDBOX=off): its model's code can "
            "read and change everything the product's user can",
            spec.replica_id,
        )
    try:
        replica.pid = runtime.start(spec)
    except OSError as exc:
        return f"Could not start the model server: {exc}"
    fields = ["pid"]
    placed = runtime.placement(replica.replica_id)
    if placed is not None:
        replica.host, replica.port, replica.node = placed.host, placed.port, placed.node
        fields += ["host", "port", "node"]
    replica.save(update_fields=fields)
    return ""


def replica_config(version: EndpointVersion) -> ComputeConfig | None:
    """The compute config a replica started now serves: the one rolling out, else the one
    serving, else (a first deployment) the stage's newest."""
    if version.config_update_state == ServiceState.PENDING and version.target_config:
        return version.target_config
    return version.service_config or version.endpoint.current_compute_config(version.registry_stage)


def limits_note(runtime: Runtime, replica: Replica) -> str:
    """The limits ``replica`` started with and how its host holds them, in words."""
    limits = replica_limits(replica_config(replica.version))
    return cgroups.describe(limits, runtime.enforcement(replica.replica_id))


def batching_env(config: ComputeConfig | None) -> dict[str, str]:
    """The replica environment that turns on the batching ``config`` asks for."""
    if config is None or not config.batching_enabled:
        return {}
    return BatchSettings(config.max_batch_size, config.max_wait_ms).env()


def zygote_starts(runtime: Runtime) -> list[str]:
    """Interpreters whose zygote the runtime (re)started since it was last asked."""
    return runtime.take_zygote_starts() if isinstance(runtime, LocalRuntime) else []


def await_answers(runtime: Runtime, started: list[Replica], *, seconds: float) -> None:
    """Wait until every replica in ``started`` answers ``/ping`` or exits, ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    waiting = [r for r in started if r.pid]
    while waiting and time.monotonic() < deadline:
        time.sleep(START_POLL_SECONDS)
        waiting = [
            r
            for r in waiting
            if not runtime.probe(r.host, r.port, timeout=0.5)
            and runtime.is_alive(r.pid, r.replica_id)
        ]
