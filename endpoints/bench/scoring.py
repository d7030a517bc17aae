"""The scoring benchmark (``manage.py bench``): what the product answers a one-row request
in, against MLflow's own scoring server as its users run it, same model, clients and run.

In the isolated stack it starts the product as ``make run`` does (web server, Celery worker,
Celery beat), enables the demo ``iris-classifier`` (and the traffic paths' two models)
through the product's service and waits until the reconcile loop has made them READY:
every replica measured is one the product started itself, with its defaults. Beside it,
``mlflow models serve`` serves the same model version from the same registry.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from endpoints.dev import devstack

from . import traffic_paths
from .client import CURL, HTTP_CLIENT, MINIMAL, REQUESTS
from .common import MODEL, Bench, as_command_error, serving_replica, wait
from .load import (
    BODY,
    HalfOpen,
    Result,
    destination,
    measure_in_subprocess,
    median,
    send_once,
)
from .report import Row, print_results, print_targets

MLFLOW = "MLflow server (models serve), direct"
REPLICA = "product's replica, on its port"
PRODUCT = "front door -> product's replica"
SEQUENTIAL_CLIENTS = (HTTP_CLIENT, REQUESTS, CURL)
TARGET_LATENCY_RATIO = 0.5
TARGET_THROUGHPUT_RATIO = 4.0
TARGET_HALF_OPEN_P99_MS = 100.0


def mlflow_serve_command(port: int) -> list[str]:
    """MLflow's scoring server as a user starts it: ``mlflow models serve`` on the
    registry's model, in this environment (no virtualenv of its own), on loopback."""
    script = Path(sys.executable).with_name("mlflow")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]
    return [
        *(*cli, "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local"),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]


def replicas_config() -> str:
    """How the product started the replicas measured (its settings, left at their
    defaults)."""
    serving = settings.SERVING
    return (
        f"replicas started by the product's worker (start: {serving['REPLICA_START']}, "
        f"sandbox: {serving['SANDBOX']}, network: {serving['SANDBOX_NETWORK']}, "
        f"server: {serving['REPLICA_SERVER']})"
    )


class ScoringBench(Bench):
    def run(self) -> None:
        try:
            self.say("Preparing: database, registry with the demo iris-classifier …")
            self.prepare()
            traffic_paths.register()
            mlflow_port = self._start_mlflow_server()
            port = self.start_product(self.options["web_workers"])
            self.say("Enabling the models through the product; its worker starts the replicas …")
            self.enable(MODEL, *traffic_paths.MODELS)
            self.wait_ready(MODEL, *traffic_paths.MODELS)
            traffic_paths.configure(self.user)
            self._wait_for_mlflow_server(mlflow_port)
            targets = self._targets(port, mlflow_port)
            self._check_same_answer(targets)
            wait(
                lambda: traffic_paths.answered_by_second_version(targets[traffic_paths.SPLIT]),
                what="the split's share of version 2",
            )
            runs = self._measure_paths(targets)
            half_open = self._measure_half_open(port, targets)
            self._print(runs, half_open)
        finally:
            self.stop()

    # --- the servers ----------------------------------------------------------------------

    def _start_mlflow_server(self) -> int:
        port = devstack.free_port()
        command = mlflow_serve_command(port)
        self.say("Baseline: " + " ".join(["mlflow", *command[command.index("models") :]]))
        # As in an activated virtualenv: MLflow runs the ``uvicorn`` it finds on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.mlflow = self.spawn("mlflow-models-serve", command, {"PATH": path})
        return port

    def _wait_for_mlflow_server(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}/ping"
        with as_command_error():
            self.mlflow.wait_until(
                lambda: devstack.http_status(url) == 200,
                timeout=300,
                what="MLflow's scoring server",
            )

    # --- measuring ------------------------------------------------------------------------

    def _targets(self, port: int, mlflow_port: int) -> dict[str, dict]:
        auth = {"Authorization": f"Bearer {self.token}"}
        replica = serving_replica(MODEL)
        self.say(f"The product's replica of {MODEL} Production: {replica.address}")

        def front(model: str) -> dict:
            path = f"/model-endpoint/{model}/Production/invocations"
            return destination("127.0.0.1", port, path, auth)

        return {
            MLFLOW: destination("127.0.0.1", mlflow_port, "/invocations"),
            REPLICA: destination(replica.host, replica.port, "/invocations"),
            PRODUCT: front(MODEL),
            **traffic_paths.targets(front),
            "login page": destination("127.0.0.1", port, "/login/", method="GET"),
        }

    def _check_same_answer(self, targets: dict[str, dict]) -> None:
        answers = {}
        for label, t in targets.items():
            if t["method"] != "POST":
                continue
            status, _, body = send_once(t)
            answers[label] = (status, body.replace(b" ", b""))
        if len(set(answers.values())) != 1 or next(iter(answers.values()))[0] != 200:
            raise CommandError(f"the scoring paths answer differently: {answers}")
        self.say(f"All scoring paths answer {answers[PRODUCT][1].decode()} for one row.")

    def _plan(self) -> list[tuple[str, str, dict]]:
        """(row's client label, client, load) of every measurement of one path."""
        o = self.options
        seq = {"clients": 1, "total": o["requests"], "max_seconds": o["max_seconds"]}
        conc = {
            "clients": o["clients"],
            "total": o["concurrent_requests"],
            "max_seconds": o["max_seconds"],
        }
        clients = [c for c in SEQUENTIAL_CLIENTS if c != CURL or shutil.which("curl")]
        if CURL not in clients:
            self.say("curl is not installed: its rows are left out.")
        plan = [(client, client, seq) for client in clients]
        return [*plan, (self.concurrent, MINIMAL, conc)]

    @property
    def concurrent(self) -> str:
        return f"minimal x {self.options['clients']}"

    def _measure_paths(self, targets: dict[str, dict]) -> dict[tuple[str, str], Result]:
        runs: dict[tuple[str, str], list[Result]] = {}
        scoring = [label for label, t in targets.items() if t["method"] == "POST"]
        plan, rounds = self._plan(), self.options["rounds"]
        for round_no in range(1, rounds + 1):
            self.say(f"round {round_no}/{rounds} …")
            for label in scoring:
                for row, client, load in plan:
                    result = measure_in_subprocess(client, targets[label], load)
                    runs.setdefault((label, row), []).append(result)
        return {key: median(results) for key, results in runs.items()}

    def _measure_half_open(self, port: int, targets: dict[str, dict]) -> dict[str, object]:
        count = self.options["half_open"]
        self.say(f"Opening {count} connections that never finish their request head …")
        held = HalfOpen("127.0.0.1", port, count)
        try:
            load = {"clients": 1, "total": 500, "max_seconds": 20.0, "warmup": 10}
            ui = measure_in_subprocess(HTTP_CLIENT, targets["login page"], load)
            scoring = measure_in_subprocess(HTTP_CLIENT, targets[PRODUCT], load)
            still_open = held.still_open()
        finally:
            held.close()
        return {"count": count, "ui": ui, "scoring": scoring, "still_open": still_open}

    # --- the report -----------------------------------------------------------------------

    def _print(self, runs: dict[tuple[str, str], Result], half_open: dict[str, object]) -> None:
        self.say("")
        self.say(f"Web server: {self.web_config}; {replicas_config()}")
        self.say(f"One-row dataframe_split; medians of {self.options['rounds']} rounds")
        print_results(self.say, runs)
        count, ui, scoring = half_open["count"], half_open["ui"], half_open["scoring"]
        self.say("")
        self.say(f"With {count} half-open connections held against the front door:")
        print_results(
            self.say,
            {("login page (GET /login/)", HTTP_CLIENT): ui, (PRODUCT, HTTP_CLIENT): scoring},
        )
        self.say(f"half-open connections still held open by the server: {half_open['still_open']}")
        self.say("")
        print_targets(self.say, "MLflow server", self._target_rows(runs, ui, scoring, count))
        self.say("")
        plain = runs[(PRODUCT, HTTP_CLIENT)]
        costs = traffic_paths.hot_path_rows(traffic_paths.hot_path_costs(BODY.encode()))
        traffic = traffic_paths.rows(runs, plain, HTTP_CLIENT) + costs
        print_targets(self.say, "plain routing", traffic + traffic_paths.captured_rows())

    def _target_rows(
        self, runs: dict[tuple[str, str], Result], ui: Result, scoring: Result, count: int
    ) -> list[Row]:
        rows = []
        for client in dict.fromkeys(c for _, c in runs):
            path, base = runs[(PRODUCT, client)], runs[(MLFLOW, client)]
            if client == self.concurrent:
                ratio = path.rps / base.rps
                rows.append(
                    (
                        f"req/s >= {TARGET_THROUGHPUT_RATIO:g}x MLflow, {client}",
                        f"{path.rps:.0f} ({ratio:.2f}x)",
                        f"{base.rps:.0f}",
                        ratio >= TARGET_THROUGHPUT_RATIO and not path.errors,
                    )
                )
                continue
            ratio = path.p50_ms / base.p50_ms
            rows.append(
                (
                    f"product path p50 <= {TARGET_LATENCY_RATIO}x MLflow, {client}",
                    f"{path.p50_ms:.2f} ms ({ratio:.2f}x)",
                    f"{base.p50_ms:.2f} ms",
                    ratio <= TARGET_LATENCY_RATIO and not path.errors,
                )
            )
        for label, r in (("UI", ui), ("scoring", scoring)):
            rows.append(
                (
                    f"{label} p99, {count} half-open < {TARGET_HALF_OPEN_P99_MS:g} ms",
                    f"{r.p99_ms:.2f} ms",
                    "-",
                    r.p99_ms < TARGET_HALF_OPEN_P99_MS and not r.errors,
                )
            )
        return rows
