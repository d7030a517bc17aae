"""The cluster benchmark (``manage.py bench_cluster``): the front door in front of a replica
the Ray runtime placed against one in front of a local replica, same run. Two
installations side by side, each enabling the demo ``iris-classifier`` and letting its loop
start the replica; target: the Ray-placed replica's p50 within 1.1x of the local one's
(docs/performance.md, "How to measure").
"""

from __future__ import annotations

import os
import subprocess
import sys

import requests
from django.conf import settings
from django.core.management.base import CommandError

from endpoints.dev import devstack
from endpoints.management.commands.run_cluster import start_ray_cluster
from endpoints.management.commands.run_product import beat_command, worker_command

from .client import HTTP_CLIENT, MINIMAL
from .common import MODEL, READY_TIMEOUT, REPLICA_PORTS, Bench, serving_replica, wait
from .load import Result, destination, measure_in_subprocess, median, send_once
from .report import print_results, print_targets

TARGET_RATIO = 1.1
LOCAL, RAY = "front door -> local replica", "front door -> Ray-placed replica"
API = "/api/2.0/preview/mlflow/endpoints-v2/"


class RayInstallation:
    """The second installation: its processes run with ``env``, it is set up with
    management commands and driven through its REST API, like a user's."""

    def __init__(self, bench: Bench, address: str) -> None:
        var = bench.var / "ray-installation"
        var.mkdir()
        port = devstack.free_port()
        self.var = var
        self.env = {
            "SERVING_VAR_DIR": str(var),
            "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{devstack.free_port()}/0",
            "SERVING_REPLICA_PORT_MIN": str(port),
            "SERVING_REPLICA_PORT_MAX": str(port + REPLICA_PORTS),
            "SERVING_RUNTIME": "ray",
            "RAY_ADDRESS": address,
        }
        self.bench = bench

    def start(self, web_workers: int) -> None:
        self.bench.start_redis(self.env["REDIS_URL"], self.var)
        self._manage("migrate", "--verbosity", "0")
        self._manage(
            "createsuperuser", "--noinput", "--username", "bench", "--email", "bench@example.com"
        )
        self.token = self._manage("create_token", "bench", "--name", "bench").strip()
        self.bench.spawn("ray-worker", worker_command(), self.env)
        self.bench.spawn("ray-beat", beat_command(self.var), self.env)
        self.port = self.bench.start_web(web_workers, self.env)

    def _manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=settings.BASE_DIR,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise CommandError(f"manage.py {args[0]} failed: {result.stderr[-2000:]}")
        return result.stdout

    def api(self, method: str, name: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{API}{name}"
        headers = {"Authorization": f"Bearer {self.token}"}
        if method == "GET":
            response = requests.get(url, params=params, headers=headers, timeout=30)
        else:
            response = requests.post(url, json=params, headers=headers, timeout=30)
        if response.status_code != 200:
            raise CommandError(f"{method} {name}: {response.status_code} {response.text}")
        return response.json()

    def enable(self, name: str) -> None:
        self.api("POST", "enable", registered_model_name=name)

    def ready(self, name: str) -> bool:
        status = self.api("GET", "get-status", registered_model_name=name)["endpoint_status"]
        if status["state"] == "FAILED":
            raise CommandError(f"serving {name} on Ray failed: {status['state_message']}")
        return status["state"] == "READY"

    def replica(self, name: str, version: str) -> dict:
        found = self.api(
            "GET", "get-version-replicas", registered_model_name=name, endpoint_version_name=version
        )["replicas"]
        return next(r for r in found if r["state"] == "Running")


class ClusterBench(Bench):
    def run(self) -> None:
        self.cluster = None
        try:
            self.say("Preparing: database, registry, the product, a 2-node Ray cluster …")
            self.prepare()
            local_port = self.start_product(self.options["web_workers"])
            self.enable(MODEL)
            # Ray's nodes, and so the replicas' actors, inherit this process's environment.
            os.environ["SERVING_RAY_NODE_DIR"] = str(self.var / "ray-nodes")
            self.cluster = start_ray_cluster(node_cpus=2, nodes=2)
            ray = RayInstallation(self, self.cluster.address)
            ray.start(self.options["web_workers"])
            ray.enable(MODEL)
            self.wait_ready(MODEL)
            wait(lambda: ray.ready(MODEL), what=f"{MODEL} READY on Ray", timeout=READY_TIMEOUT)
            self._where(ray)
            targets = {
                LOCAL: self._front(local_port, self.token),
                RAY: self._front(ray.port, ray.token),
            }
            self._check_same_answer(targets)
            self._print(self._measure_alternating(targets))
        finally:
            self.stop()
            if self.cluster is not None:
                self.cluster.shutdown()

    def _where(self, ray: RayInstallation) -> None:
        local = serving_replica(MODEL)
        placed = ray.replica(MODEL, "1")
        self.say(f"local replica: {local.address} on {local.node} (local runtime)")
        self.say(f"Ray-placed replica: {placed['address']} on node {placed['node']}")

    def _front(self, port: int, token: str) -> dict:
        path = f"/model-endpoint/{MODEL}/Production/invocations"
        return destination("127.0.0.1", port, path, {"Authorization": f"Bearer {token}"})

    def _check_same_answer(self, targets: dict[str, dict]) -> None:
        answers = set()
        for t in targets.values():
            status, _, body = send_once(t)
            answers.add((status, body))
        if len(answers) != 1 or next(iter(answers))[0] != 200:
            raise CommandError(f"the two paths answer differently: {answers}")

    def _measure_alternating(self, targets: dict[str, dict]) -> dict[tuple[str, str], Result]:
        o = self.options
        seq = {"clients": 1, "total": o["requests"], "max_seconds": o["max_seconds"]}
        conc = {
            "clients": o["clients"],
            "total": o["concurrent_requests"],
            "max_seconds": o["max_seconds"],
        }
        plan = ((HTTP_CLIENT, HTTP_CLIENT, seq), (f"minimal x {o['clients']}", MINIMAL, conc))
        runs: dict[tuple[str, str], list[Result]] = {}
        for round_no in range(1, o["rounds"] + 1):
            self.say(f"round {round_no}/{o['rounds']} …")
            # Alternate which path goes first: neither gets the quieter moments.
            order = [LOCAL, RAY] if round_no % 2 else [RAY, LOCAL]
            for row, client, load in plan:
                for label in order:
                    result = measure_in_subprocess(client, targets[label], load)
                    runs.setdefault((label, row), []).append(result)
        return {key: median(results) for key, results in runs.items()}

    def _print(self, runs: dict[tuple[str, str], Result]) -> None:
        self.say("")
        self.say(f"Web servers: {self.web_config} each; one-row dataframe_split")
        print_results(self.say, runs)
        local, ray = runs[(LOCAL, HTTP_CLIENT)], runs[(RAY, HTTP_CLIENT)]
        ratio = ray.p50_ms / local.p50_ms
        row = (
            f"Ray-placed p50 <= {TARGET_RATIO}x local, {HTTP_CLIENT}",
            f"{ray.p50_ms:.2f} ms ({ratio:.2f}x)",
            f"{local.p50_ms:.2f} ms",
            ratio <= TARGET_RATIO and not ray.errors,
        )
        self.say("")
        print_targets(self.say, "local replica", [row])
