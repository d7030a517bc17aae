"""``manage.py bench_cluster`` (part of ``make bench``): the gateway in front of a replica
the Ray runtime placed, against the same gateway in front of a local replica, same run.

In an isolated stack (``bench.run_isolated``) it starts a 2-node Ray cluster on loopback,
registers the demo ``iris-classifier``, starts one replica with the local runtime and one
with the Ray runtime (an actor that downloads the model from the registry on its node),
routes an endpoint to each and sends one-row ``dataframe_split`` requests through the front
door, sequentially and with 8 clients, alternating the two paths each round. Target: the
Ray-placed replica's p50 within 1.1x of the local one's (the gateway forwards straight to
the replica's address either way; Ray is not on the scoring path).
"""

from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandParser

from endpoints import devstack

from ._load import Result, measure_in_subprocess, median
from .bench import ISOLATED_ENV, MODEL, Bench, _route, _wait, run_isolated
from .run_cluster import start_ray_cluster

RAY_MODEL = "iris-classifier-ray"
TARGET_RATIO = 1.1
LOCAL, RAY = "gateway -> local replica", "gateway -> Ray-placed replica"


class Command(BaseCommand):
    help = "Benchmark the gateway in front of a Ray-placed replica against a local one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=2000, help="Sequential requests.")
        parser.add_argument(
            "--concurrent-requests", type=int, default=3000, help="Requests of the 8 clients."
        )
        parser.add_argument("--clients", type=int, default=8)
        parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are shown.")
        parser.add_argument("--web-workers", type=int, default=2, help="Web server processes.")
        parser.add_argument(
            "--max-seconds", type=float, default=20.0, help="Time cap of one measurement."
        )

    def handle(self, *args: object, **options: object) -> None:
        if os.environ.get(ISOLATED_ENV) != "1":
            run_isolated("bench_cluster", {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
            return
        ClusterBench(self, options).run()


class ClusterBench(Bench):
    def run(self) -> None:
        from django.core.management import call_command

        self.cluster = None
        self.ray_runtime = None
        try:
            self._start_redis()
            self.say("Preparing: database, registry, a 2-node Ray cluster, two replicas …")
            call_command("migrate", interactive=False, verbosity=0)
            self.cluster = start_ray_cluster(node_cpus=2, nodes=2)
            token = self._serve_both()
            port = self._start_gunicorn()
            targets = self._front_targets(port, token)
            self._check_same_answer(targets)
            self._print_cluster(self._measure_alternating(targets))
        finally:
            self._stop_cluster()

    def _serve_both(self) -> str:
        from django.conf import settings

        from endpoints.kv import bump_generation
        from endpoints.runtime import LocalRuntime, ReplicaSpec
        from endpoints.runtime.ray import RayRuntime

        user, model_dir, token = self._bench_model()
        self.local_runtime = LocalRuntime()
        self.ray_runtime = RayRuntime(
            address=self.cluster.address, namespace=os.environ["SERVING_RAY_NAMESPACE"]
        )
        self.started: list[tuple[object, int, str]] = []
        for name, runtime in ((MODEL, self.local_runtime), (RAY_MODEL, self.ray_runtime)):
            replica_id = f"bench-{'ray' if runtime is self.ray_runtime else 'local'}"
            spec = ReplicaSpec(
                replica_id=replica_id,
                model_path=str(model_dir),
                host="127.0.0.1",
                port=devstack.free_port(),
                log_path=str(self.var / f"{replica_id}.log"),
                python=sys.executable,
                start_mode="spawn",
                model_uri=f"models:/{MODEL}/1",
                registry_uri=settings.MLFLOW_REGISTRY_URI,
            )
            pid = runtime.start(spec)
            self.started.append((runtime, pid, replica_id))
            placed = runtime.placement(replica_id)
            address = (placed.host, placed.port) if placed else (spec.host, spec.port)
            _wait(lambda a=address, r=runtime: r.probe(*a), what=replica_id, timeout=180)
            _route(name, user, model_dir, address, pid)
            where = placed.node if placed else "this host"
            self.say(f"{replica_id}: {address[0]}:{address[1]} on {where}")
        bump_generation()
        return token

    def _front_targets(self, port: int, token: str) -> dict[str, dict]:
        auth = {"Authorization": f"Bearer {token}"}
        return {
            label: {
                "host": "127.0.0.1",
                "port": port,
                "path": f"/model-endpoint/{model}/Production/invocations",
                "headers": auth,
            }
            for label, model in ((LOCAL, MODEL), (RAY, RAY_MODEL))
        }

    def _measure_alternating(self, targets: dict[str, dict]) -> dict[tuple[str, str], Result]:
        o = self.options
        seq = {"clients": 1, "total": o["requests"], "max_seconds": o["max_seconds"]}
        conc = {
            "clients": o["clients"],
            "total": o["concurrent_requests"],
            "max_seconds": o["max_seconds"],
        }
        runs: dict[tuple[str, str], list[Result]] = {}
        for round_no in range(1, o["rounds"] + 1):
            self.say(f"round {round_no}/{o['rounds']} …")
            # Alternate which path goes first: neither gets the quieter moments.
            order = [LOCAL, RAY] if round_no % 2 else [RAY, LOCAL]
            for mode, load in (("sequential", seq), (f"{o['clients']} clients", conc)):
                for label in order:
                    result = measure_in_subprocess(targets[label], load)
                    runs.setdefault((label, mode), []).append(result)
        return {key: median(results) for key, results in runs.items()}

    def _print_cluster(self, runs: dict[tuple[str, str], Result]) -> None:
        self.say("")
        self.say(f"Web server: {self.web_config}; one replica per path; one-row dataframe_split")
        self.say(f"{'':32} {'clients':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7}")
        for (label, mode), r in runs.items():
            self.say(
                f"{label:32} {mode:>11} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f} {r.errors:7}"
            )
        local, ray = runs[(LOCAL, "sequential")], runs[(RAY, "sequential")]
        ratio = ray.p50_ms / local.p50_ms
        ok = ratio <= TARGET_RATIO and not ray.errors
        self.say("")
        self.say(f"{'target':46} {'figure':>18} {'local replica':>14}  result")
        self.say(
            f"{f'Ray-placed p50 <= {TARGET_RATIO}x local':46} "
            f"{f'{ray.p50_ms:.2f} ms ({ratio:.2f}x)':>18} {f'{local.p50_ms:.2f} ms':>14}  "
            f"{'PASS' if ok else 'MISS'}"
        )

    def _stop_cluster(self) -> None:
        for runtime, pid, replica_id in getattr(self, "started", []):
            runtime.stop(pid, replica_id, grace_seconds=5)
        for process in reversed(self.processes):
            process.stop(timeout=20)
        if self.ray_runtime is not None:
            import ray

            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
