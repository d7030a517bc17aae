"""``manage.py bench`` (what ``make bench`` runs): the product's scoring path against MLflow's
own scoring server, in one run, on loopback.

The command re-runs itself in an isolated stack (a temporary data directory, its own
Redis, SQLite database and MLflow registry), registers the demo ``iris-classifier``,
starts two replicas of it directly (MLflow's scoring server and the product's), writes
the rows the gateway routes by (one endpoint per replica) and starts the web server as
``make run`` does. It sends one-row ``dataframe_split`` requests with one sequential
keep-alive client and with 8 concurrent clients to: MLflow's server directly (the
baseline), the product's replica directly, the front door in front of the product's
replica (the product path) and in front of MLflow's, and the product path with a 90/10
traffic split and with the inference table capturing every request. Then it opens 1,000
connections that never finish their request head and measures the login page and scoring
beside them.
It prints every figure and a targets table with the same run's baseline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from endpoints import devstack
from endpoints.devstack import ManagedProcess

from ._bench_traffic import (
    hot_path_costs,
    hot_path_rows,
    route_traffic_paths,
    traffic_rows,
    traffic_targets,
)
from ._load import BODY, HalfOpen, KeepAliveClient, Result, measure_in_subprocess, median

ISOLATED_ENV = "SERVING_BENCH_ISOLATED"
MODEL = "iris-classifier"
# The same model behind MLflow's scoring server, under an endpoint of its own.
MLFLOW_MODEL = "iris-classifier-mlflow"
HALF_OPEN = 1000
TARGET_LATENCY_RATIO = 0.5
TARGET_THROUGHPUT_RATIO = 4.0
TARGET_HALF_OPEN_P99_MS = 100.0

__all__ = ["BODY", "ISOLATED_ENV", "MODEL", "Bench", "run_isolated"]


class Command(BaseCommand):
    help = "Benchmark the product's scoring path against MLflow's scoring server directly."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=2000, help="Sequential requests.")
        parser.add_argument(
            "--concurrent-requests", type=int, default=3000, help="Requests of the 8 clients."
        )
        parser.add_argument("--clients", type=int, default=8)
        parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are shown.")
        parser.add_argument("--web-workers", type=int, default=2, help="Web server processes.")
        parser.add_argument("--half-open", type=int, default=HALF_OPEN)
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


class Bench:
    def __init__(self, command: Command, options: dict) -> None:
        self.out = command.stdout
        self.options = options
        self.processes: list[ManagedProcess] = []
        self.var = Path(settings.VAR_DIR)
        self.replica_pids: dict[str, int] = {}

    def run(self) -> None:
        try:
            self._start_redis()
            self.say("Preparing: database, registry with the demo iris-classifier, replicas …")
            call_command("migrate", interactive=False, verbosity=0)
            token = self._serve_models()
            port = self._start_gunicorn()
            targets = self._targets(port, token)
            self._check_same_answer(targets)
            runs = self._measure_paths(targets)
            half_open = self._measure_half_open(port, targets)
            self._print(runs, half_open)
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

    def _bench_model(self) -> tuple[object, Path, str]:
        """A bench superuser, the demo model registered and downloaded, and the user's
        token."""
        from django.contrib.auth import get_user_model

        from endpoints import demo, registry, services

        registry.configure_mlflow()
        demo.seed(next(d for d in demo.DEMO_MODELS if d.name == MODEL))
        model_dir = registry.download_model(MODEL, "1", self.var / "models" / "v1")
        user = get_user_model().objects.create_superuser("bench", "bench@example.com", None)
        _, token = services.token_create(user=user, name="bench")
        return user, Path(model_dir), token

    def _serve_models(self) -> str:
        """Both replicas and their routing rows; the token that may score them."""
        from endpoints.kv import bump_generation

        user, model_dir, token = self._bench_model()
        self.replicas = {
            "product": self._start_replica("serving-ui", model_dir, devstack.free_port()),
            "mlflow": self._start_replica("mlflow", model_dir, devstack.free_port()),
        }
        for name, replica in ((MODEL, "product"), (MLFLOW_MODEL, "mlflow")):
            _route(name, user, model_dir, self.replicas[replica], self.replica_pids[replica])
        product = (self.replicas["product"], self.replica_pids["product"])
        route_traffic_paths(user, model_dir, *product, route=_route)
        bump_generation()
        return token

    def _start_replica(self, server: str, model_dir: Path, port: int) -> tuple[str, int]:
        from endpoints.runtime import ReplicaSpec, get_runtime

        replica_id = "mlflow" if server == "mlflow" else "product"
        spec = ReplicaSpec(
            replica_id=replica_id,
            model_path=str(model_dir),
            host="127.0.0.1",
            port=port,
            log_path=str(self.var / f"replica-{replica_id}.log"),
            python=sys.executable,
            server=server,
        )
        runtime = get_runtime()
        self.replica_pids[replica_id] = runtime.start(spec)
        _wait(lambda: runtime.probe("127.0.0.1", port), what=f"the {server} replica", timeout=120)
        return ("127.0.0.1", port)

    def _start_gunicorn(self) -> int:
        """The product's web server as `make run` starts it (name kept: the provisioning
        benchmark builds on this class)."""
        from endpoints.management.commands.run_product import web_command

        port = devstack.free_port()
        processes = self.options["web_workers"]
        self.web_config = f"front door: uvicorn, {processes} single-worker processes"
        self._spawn("web", web_command(host="127.0.0.1", port=port, processes=processes))
        # Any answer will do: the gateway answers a GET on a scoring URL with 405.
        url = f"http://127.0.0.1:{port}/model/-/1/invocations"
        _wait(lambda: devstack.http_status(url) is not None, what="the server")
        return port

    def _stop(self) -> None:
        from endpoints.runtime import get_runtime

        for replica_id, pid in getattr(self, "replica_pids", {}).items():
            get_runtime().stop(pid, replica_id, grace_seconds=5)
        for process in reversed(self.processes):
            process.stop(timeout=20)

    # --- measuring ------------------------------------------------------------------------

    def _targets(self, port: int, token: str) -> dict[str, dict]:
        auth = {"Authorization": f"Bearer {token}"}

        def direct(replica: str) -> dict:
            host, replica_port = self.replicas[replica]
            return {"host": host, "port": replica_port, "path": "/invocations", "headers": {}}

        def front(model: str) -> dict:
            path = f"/model-endpoint/{model}/Production/invocations"
            return {"host": "127.0.0.1", "port": port, "path": path, "headers": auth}

        return {
            "MLflow scoring server, direct": direct("mlflow"),
            "product replica, direct": direct("product"),
            "front door -> product replica": front(MODEL),
            "front door -> MLflow server": front(MLFLOW_MODEL),
            **traffic_targets(front),
            "login page": {**front(MODEL), "path": "/login/", "method": "GET", "headers": {}},
        }

    def _check_same_answer(self, targets: dict[str, dict]) -> None:
        answers = set()
        for target in targets.values():
            if target.get("method") == "GET":
                continue
            client = KeepAliveClient(**target)
            status = client.call()
            answers.add((status, client.last_body.replace(b" ", b"")))
            client.close()
        if len(answers) != 1 or next(iter(answers))[0] != 200:
            raise CommandError(f"the scoring paths answer differently: {answers}")
        self.say(f"All scoring paths answer {next(iter(answers))[1].decode()} for one row.")

    def _measure_paths(self, targets: dict[str, dict]) -> dict[tuple[str, str], Result]:
        o = self.options
        seq = {"clients": 1, "total": o["requests"], "max_seconds": o["max_seconds"]}
        conc = {
            "clients": o["clients"],
            "total": o["concurrent_requests"],
            "max_seconds": o["max_seconds"],
        }
        runs: dict[tuple[str, str], list[Result]] = {}
        scoring = [label for label, t in targets.items() if t.get("method") != "GET"]
        for round_no in range(1, o["rounds"] + 1):
            self.say(f"round {round_no}/{o['rounds']} …")
            for label in scoring:
                for mode, load in (("sequential", seq), (f"{o['clients']} clients", conc)):
                    result = measure_in_subprocess(targets[label], load)
                    runs.setdefault((label, mode), []).append(result)
        return {key: median(results) for key, results in runs.items()}

    def _measure_half_open(self, port: int, targets: dict[str, dict]) -> dict[str, object]:
        count = self.options["half_open"]
        self.say(f"Opening {count} connections that never finish their request head …")
        held = HalfOpen("127.0.0.1", port, count)
        try:
            load = {"clients": 1, "total": 500, "max_seconds": 20.0, "warmup": 10}
            ui = measure_in_subprocess(targets["login page"], load)
            scoring = measure_in_subprocess(targets["front door -> product replica"], load)
            still_open = held.still_open()
        finally:
            held.close()
        return {"count": count, "ui": ui, "scoring": scoring, "still_open": still_open}

    # --- the report -----------------------------------------------------------------------

    def _print(self, runs: dict[tuple[str, str], Result], half_open: dict[str, object]) -> None:
        self.say("")
        self.say(f"Web server: {self.web_config}; one replica per path; one-row dataframe_split")
        self.say(f"{'':32} {'clients':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7}")
        for (label, mode), r in runs.items():
            self.say(
                f"{label:32} {mode:>11} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f} {r.errors:7}"
            )
        count, ui, scoring = half_open["count"], half_open["ui"], half_open["scoring"]
        self.say("")
        self.say(f"With {count} half-open connections held against the front door:")
        for label, r in (("login page (GET /login/)", ui), ("scoring, product path", scoring)):
            self.say(
                f"{label:32} {'sequential':>11} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
                f"{r.rps:8.0f} {r.errors:7}"
            )
        self.say(f"half-open connections still held open by the server: {half_open['still_open']}")
        self._print_targets(runs, ui, scoring, count)

    def _print_targets(
        self, runs: dict[tuple[str, str], Result], ui: Result, scoring: Result, count: int
    ) -> None:
        clients = f"{self.options['clients']} clients"
        base_seq = runs[("MLflow scoring server, direct", "sequential")]
        base_conc = runs[("MLflow scoring server, direct", clients)]
        path_seq = runs[("front door -> product replica", "sequential")]
        path_conc = runs[("front door -> product replica", clients)]
        rows = [
            (
                f"product path p50 <= {TARGET_LATENCY_RATIO}x MLflow direct",
                f"{path_seq.p50_ms:.2f} ms ({path_seq.p50_ms / base_seq.p50_ms:.2f}x)",
                f"{base_seq.p50_ms:.2f} ms",
                path_seq.p50_ms <= TARGET_LATENCY_RATIO * base_seq.p50_ms,
            ),
            (
                f"{clients} req/s >= {TARGET_THROUGHPUT_RATIO:g}x MLflow direct",
                f"{path_conc.rps:.0f} ({path_conc.rps / base_conc.rps:.2f}x)",
                f"{base_conc.rps:.0f}",
                path_conc.rps >= TARGET_THROUGHPUT_RATIO * base_conc.rps,
            ),
            (
                f"UI p99, {count} half-open < {TARGET_HALF_OPEN_P99_MS:g} ms",
                f"{ui.p99_ms:.2f} ms",
                "-",
                ui.p99_ms < TARGET_HALF_OPEN_P99_MS and not ui.errors,
            ),
            (
                f"scoring p99, {count} half-open < {TARGET_HALF_OPEN_P99_MS:g} ms",
                f"{scoring.p99_ms:.2f} ms",
                "-",
                scoring.p99_ms < TARGET_HALF_OPEN_P99_MS and not scoring.errors,
            ),
        ]
        self.say("")
        self.say(f"{'target':46} {'figure':>18} {'MLflow direct':>14}  result")
        for label, figure, baseline, ok in rows:
            self.say(f"{label:46} {figure:>18} {baseline:>14}  {'PASS' if ok else 'MISS'}")
        self.say("")
        self.say(f"{'traffic (same run)':46} {'figure':>18} {'plain routing':>14}  result")
        costs = hot_path_rows(hot_path_costs(BODY))
        for label, figure, baseline, ok in traffic_rows(runs, path_seq) + costs:
            result = "-" if ok is None else "PASS" if ok else "MISS"
            self.say(f"{label:46} {figure:>18} {baseline:>14}  {result}")


def _route(name: str, user: object, model_dir: Path, address: tuple[str, int], pid: int) -> None:
    """The rows of a READY version answering ``name``'s Production, as the reconcile loop
    writes them."""
    from endpoints.models import (
        ComputeConfig,
        EndpointVersion,
        Replica,
        ReplicaState,
        ServiceState,
        ServingEndpoint,
        StageAlias,
    )

    endpoint = ServingEndpoint.objects.create(
        registered_model_name=name, creator=user, state="READY"
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
        replica_id=f"bench-{name}",
        host=address[0],
        port=address[1],
        pid=pid,
        state=ReplicaState.RUNNING,
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
