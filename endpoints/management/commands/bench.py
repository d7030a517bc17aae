"""``manage.py bench`` (what ``make bench`` runs): the scoring gateway against MLflow's own
scoring server, in one run, on loopback.

The command re-runs itself in an isolated stack (a temporary data directory, its own
Redis, SQLite database and MLflow registry), registers the demo ``iris-classifier``,
starts one replica directly, writes the rows the gateway routes by and starts gunicorn as
``make run`` does. Then it sends one-row ``dataframe_split`` requests (a) straight to the
replica and (b) through the gateway, with one sequential keep-alive client and with 8
concurrent clients, and prints p50/p99 latency, requests per second and the ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from endpoints import devstack
from endpoints.devstack import ManagedProcess

ISOLATED_ENV = "SERVING_BENCH_ISOLATED"
MODEL = "iris-classifier"
BODY = json.dumps(
    {
        "dataframe_split": {
            "columns": [
                "sepal length (cm)",
                "sepal width (cm)",
                "petal length (cm)",
                "petal width (cm)",
            ],
            "data": [[5.1, 3.5, 1.4, 0.2]],
        }
    }
).encode()


class Command(BaseCommand):
    help = "Benchmark scoring through the gateway against MLflow's scoring server directly."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=2000, help="Sequential requests.")
        parser.add_argument(
            "--concurrent-requests", type=int, default=3000, help="Requests of the 8 clients."
        )
        parser.add_argument("--clients", type=int, default=8)
        parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are shown.")
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--web-threads", type=int, default=None)
        parser.add_argument(
            "--server",
            choices=("gunicorn", "uvicorn"),
            default="gunicorn",
            help="gunicorn gthread (what make run uses) or uvicorn running the same WSGI app.",
        )
        parser.add_argument(
            "--max-seconds", type=float, default=20.0, help="Time cap of one measurement."
        )

    def handle(self, *args: object, **options: object) -> None:
        if os.environ.get(ISOLATED_ENV) != "1":
            run_isolated("bench")
            return
        Bench(self, options).run()


def run_isolated(command: str, extra_env: dict[str, str] | None = None) -> None:
    """Run ``manage.py <command>`` again with settings that point at a fresh temporary
    stack: its own data directory, Redis port, SQLite database and MLflow registry."""
    var = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    port = devstack.free_port()
    env = {
        **os.environ,
        ISOLATED_ENV: "1",
        "SERVING_VAR_DIR": str(var),
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
        "REDIS_URL": f"redis://127.0.0.1:{devstack.free_port()}/0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{var / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{var / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(var / "mlflow" / "artifacts"),
        "SERVING_REPLICA_PORT_MIN": str(port),
        "SERVING_REPLICA_PORT_MAX": str(port + 20),
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    (var / "mlflow").mkdir()
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", command, *sys.argv[2:]],
            cwd=settings.BASE_DIR,
            env=env,
            check=False,
        )
    finally:
        shutil.rmtree(var, ignore_errors=True)
    if result.returncode:
        raise CommandError(f"the benchmark failed (exit code {result.returncode})")


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int


class KeepAliveClient:
    """A minimal HTTP/1.1 client on one socket: its own cost stays far below the servers'."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["Content-Type: application/json", f"Content-Length: {len(BODY)}", "", ""]
        self.request = "\r\n".join(lines).encode() + BODY
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.last_body = b""

    def call(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.buffer = rest
        while len(self.buffer) < length:
            self._receive()
        self.last_body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(head[9:12])

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def measure(
    make_client, *, clients: int, total: int, max_seconds: float, warmup: int = 100
) -> Result:
    per_client = max(1, total // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    connections = [make_client() for _ in range(clients)]
    for client in connections:
        for _ in range(max(1, warmup // clients)):
            client.call()
    start_gate = threading.Barrier(clients + 1)
    deadline = time.monotonic() + max_seconds

    def run(i: int) -> None:
        client, out = connections[i], latencies[i]
        start_gate.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            status = client.call()
            out.append(time.perf_counter() - t0)
            errors[i] += status != 200
            if time.monotonic() > deadline:
                break

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for client in connections:
        client.close()
    merged = sorted(x for out in latencies for x in out)
    return Result(
        p50_ms=merged[len(merged) // 2] * 1000,
        p99_ms=merged[min(len(merged) - 1, int(len(merged) * 0.99))] * 1000,
        rps=len(merged) / elapsed,
        errors=sum(errors),
    )


def measure_in_subprocess(target: dict, load: dict) -> Result:
    """Measure from a fresh interpreter: this process has MLflow and Django loaded, whose
    background threads would compete with the client for the GIL."""
    spec = json.dumps({"target": target, "load": load})
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, spec],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Result(**json.loads(out))


CLIENT_SCRIPT = """
import json, sys
from dataclasses import asdict
from endpoints.management.commands.bench import KeepAliveClient, measure
spec = json.loads(sys.argv[1])
t = spec["target"]
make = lambda: KeepAliveClient(t["host"], t["port"], t["path"], t["headers"])
print(json.dumps(asdict(measure(make, **spec["load"]))))
"""


class Bench:
    def __init__(self, command: Command, options: dict) -> None:
        self.out = command.stdout
        self.options = options
        self.processes: list[ManagedProcess] = []
        self.var = Path(settings.VAR_DIR)

    def run(self) -> None:
        try:
            self._start_redis()
            self.say("Preparing: database, registry with the demo iris-classifier, replica …")
            call_command("migrate", interactive=False, verbosity=0)
            replica, token = self._serve_model()
            gateway_port = self._start_gunicorn()
            self._report(replica, gateway_port, token)
        finally:
            self._stop()

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # --- the stack ----------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, cmd, self.var).start()
        self.processes.append(process)
        return process

    def _start_redis(self) -> None:
        with _as_command_error():
            self.processes.append(
                devstack.start_redis(settings.REDIS_URL, self.var, self.var, timeout=60)
            )

    def _serve_model(self) -> tuple[tuple[str, int], str]:
        from django.contrib.auth import get_user_model

        from endpoints import demo, registry, services
        from endpoints.kv import bump_generation
        from endpoints.models import (
            ComputeConfig,
            EndpointVersion,
            Replica,
            ReplicaState,
            ServiceState,
            ServingEndpoint,
            StageAlias,
        )
        from endpoints.runtime import ReplicaSpec, get_runtime

        registry.configure_mlflow()
        demo.seed(next(d for d in demo.DEMO_MODELS if d.name == MODEL))
        model_dir = registry.download_model(MODEL, "1", self.var / "models" / "v1")
        host, port = "127.0.0.1", settings.SERVING["REPLICA_PORT_MIN"]
        runtime = get_runtime()
        spec = ReplicaSpec(
            replica_id="bench-replica",
            model_path=str(model_dir),
            host=host,
            port=port,
            log_path=str(self.var / "replica.log"),
            python=sys.executable,
        )
        self.replica_pid = runtime.start(spec)
        _wait(lambda: runtime.probe(host, port), what="the replica", timeout=120)

        user = get_user_model().objects.create_superuser("bench", "bench@example.com", None)
        _, token = services.token_create(user=user, name="bench")
        endpoint = ServingEndpoint.objects.create(
            registered_model_name=MODEL, creator=user, state="READY"
        )
        config = ComputeConfig.objects.create(endpoint=endpoint, stage="Production")
        version = EndpointVersion.objects.create(
            endpoint=endpoint,
            version="1",
            registry_stage="Production",
            service_state=ServiceState.READY,
            service_config=config,
            model_path=str(model_dir),
        )
        StageAlias.objects.create(endpoint=endpoint, stage="Production", version=version)
        Replica.objects.create(
            version=version,
            replica_id=spec.replica_id,
            host=host,
            port=port,
            pid=self.replica_pid,
            state=ReplicaState.RUNNING,
        )
        bump_generation()
        return (host, port), token

    def _start_gunicorn(self) -> int:
        from endpoints.management.commands.run_product import WEB_THREADS, gunicorn_command

        port = devstack.free_port()
        threads = self.options["web_threads"] or WEB_THREADS
        workers = self.options["web_workers"]
        if self.options.get("server") == "uvicorn":
            # The same WSGI callable under uvicorn's event loop and thread pool: the
            # alternative server the choice of gunicorn gthread is measured against.
            self.web_config = f"uvicorn --interface wsgi, {workers} workers"
            command = [
                *(str(Path(sys.executable).parent / "uvicorn"), "serving_ui.wsgi:application"),
                *("--interface", "wsgi", "--workers", str(workers), "--host", "127.0.0.1"),
                *("--port", str(port), "--no-access-log", "--log-level", "warning"),
            ]
        else:
            self.web_config = f"gunicorn gthread, {workers} workers x {threads} threads"
            command = gunicorn_command(
                host="127.0.0.1", port=port, workers=workers, threads=threads
            )
        self._spawn("web", command)
        # Any answer will do: the gateway answers a GET on a scoring URL with 405.
        url = f"http://127.0.0.1:{port}/model/-/1/invocations"
        _wait(lambda: devstack.http_status(url) is not None, what="the server")
        return port

    def _stop(self) -> None:
        from endpoints.runtime import get_runtime

        if getattr(self, "replica_pid", None):
            get_runtime().stop(self.replica_pid, "bench-replica", grace_seconds=5)
        for process in reversed(self.processes):
            process.stop(timeout=20)

    # --- measuring ------------------------------------------------------------------------

    def _report(self, replica: tuple[str, int], gateway_port: int, token: str) -> None:
        host, port = replica

        def direct() -> KeepAliveClient:
            return KeepAliveClient(host, port, "/invocations", {})

        def through_gateway() -> KeepAliveClient:
            return KeepAliveClient(
                "127.0.0.1",
                gateway_port,
                f"/model-endpoint/{MODEL}/Production/invocations",
                {"Authorization": f"Bearer {token}"},
            )

        self._check_same_answer(direct, through_gateway)
        o = self.options
        clients = o["clients"]
        targets = {
            "direct": {"host": host, "port": port, "path": "/invocations", "headers": {}},
            "gateway": {
                "host": "127.0.0.1",
                "port": gateway_port,
                "path": f"/model-endpoint/{MODEL}/Production/invocations",
                "headers": {"Authorization": f"Bearer {token}"},
            },
        }
        runs: dict[str, list[Result]] = {k: [] for k in ("ds", "gs", "dc", "gc")}
        for round_no in range(1, o["rounds"] + 1):
            self.say(f"round {round_no}/{o['rounds']} …")
            seq = {"clients": 1, "total": o["requests"], "max_seconds": o["max_seconds"]}
            conc = {
                "clients": clients,
                "total": o["concurrent_requests"],
                "max_seconds": o["max_seconds"],
            }
            runs["ds"].append(measure_in_subprocess(targets["direct"], seq))
            runs["gs"].append(measure_in_subprocess(targets["gateway"], seq))
            runs["dc"].append(measure_in_subprocess(targets["direct"], conc))
            runs["gc"].append(measure_in_subprocess(targets["gateway"], conc))
        self._print(runs, clients)

    def _check_same_answer(self, direct, through_gateway) -> None:
        answers = []
        for make in (direct, through_gateway):
            client = make()
            status = client.call()
            answers.append((status, json.loads(client.last_body)))
            client.close()
        if answers[0] != answers[1] or answers[0][0] != 200:
            raise CommandError(f"direct and gateway answers differ: {answers}")
        self.say(f"Both answer {answers[0][1]} for one row.")

    def _print(self, runs: dict[str, list[Result]], clients: int) -> None:
        med = {k: _median(v) for k, v in runs.items()}
        errors = sum(r.errors for v in runs.values() for r in v)
        rows = [
            ("direct (MLflow scoring server)", "sequential", med["ds"]),
            ("through the gateway", "sequential", med["gs"]),
            ("direct (MLflow scoring server)", f"{clients} clients", med["dc"]),
            ("through the gateway", f"{clients} clients", med["gc"]),
        ]
        self.say("")
        self.say(f"Gateway: {self.web_config}; one replica; one-row dataframe_split")
        self.say(f"{'':32} {'clients':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for label, mode, r in rows:
            self.say(f"{label:32} {mode:>11} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f}")
        seq_ratio = med["gs"].p50_ms / med["ds"].p50_ms
        conc_ratio = med["gc"].rps / med["dc"].rps
        self.say("")
        self.say(
            f"gateway/direct p50 latency, sequential: {seq_ratio:.2f}  (target <= 1.20)  "
            f"{'OK' if seq_ratio <= 1.2 else 'MISSED'}"
        )
        self.say(
            f"gateway/direct p50 latency, {clients} clients: "
            f"{med['gc'].p50_ms / med['dc'].p50_ms:.2f}"
        )
        self.say(
            f"gateway/direct throughput, {clients} clients: {conc_ratio:.2f}  (target >= 0.80)  "
            f"{'OK' if conc_ratio >= 0.8 else 'MISSED'}"
        )
        self.say(f"non-200 answers: {errors}")


def _median(results: list[Result]) -> Result:
    return Result(
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        rps=statistics.median(r.rps for r in results),
        errors=sum(r.errors for r in results),
    )


@contextmanager
def _as_command_error() -> Iterator[None]:
    try:
        yield
    except devstack.WaitTimeout as exc:
        raise CommandError(f"{exc.what} did not come up within {exc.timeout:.0f} s") from None
    except devstack.StackError as exc:
        raise CommandError(str(exc)) from None


def _wait(predicate: Callable[[], object], *, what: str, timeout: float = 60) -> None:
    with _as_command_error():
        devstack.wait_for(predicate, timeout=timeout, what=what, interval=0.1)
