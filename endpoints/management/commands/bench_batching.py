"""``manage.py bench_batching`` (part of ``make bench``): one replica of the demo
``iris-classifier`` with micro-batching off and on, in one run, on loopback.

The command re-runs itself in an isolated stack (``bench.run_isolated``), registers the
demo model, downloads it and starts two replicas of it: one without batching and one
with it (``--max-batch-size``, ``--max-wait-ms``). They are measured one at a time,
alternating, with concurrent keep-alive clients sending one-row requests in two formats:

- ``dataframe_records``: parsed and predicted MLflow's way, so batching merges them;
- ``dataframe_split`` of doubles: the scikit-learn shortcut answers these before batching
  is considered, so both replicas should measure alike (a control).

It prints p50/p99 latency and requests per second of each (medians of ``--rounds``), and
checks that both replicas give the same body to the same request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ._load import BODY as SPLIT_BODY
from ._load import KeepAliveClient, Result, median
from .bench import ISOLATED_ENV, MODEL, run_isolated

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
RECORDS_BODY = json.dumps(
    {"dataframe_records": [dict(zip(FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True))]}
)
BODIES = {"dataframe_records": RECORDS_BODY.encode(), "dataframe_split": SPLIT_BODY}


class BodyClient(KeepAliveClient):
    """The load generator's client, sending ``body`` to a replica's ``/invocations``."""

    def __init__(self, host: str, port: int, body: str) -> None:
        super().__init__(host, port, "/invocations", {})  # opens the connection
        head = [
            "POST /invocations HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body.encode())}",
        ]
        self.request = "\r\n".join([*head, "", ""]).encode() + body.encode()


# Run in a fresh interpreter: this process has MLflow and Django loaded, whose background
# threads would compete with the clients for the GIL.
CLIENT_SCRIPT = """
import json, sys
from dataclasses import asdict
from endpoints.management.commands._load import measure
from endpoints.management.commands.bench_batching import BodyClient
spec = json.loads(sys.argv[1])
make = lambda: BodyClient(**spec["target"])
print(json.dumps(asdict(measure(make, **spec["load"]))))
"""


class Command(BaseCommand):
    help = "Benchmark one replica with micro-batching off and on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clients", type=int, default=16)
        parser.add_argument("--requests", type=int, default=3000, help="Per measurement.")
        parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are shown.")
        parser.add_argument("--max-batch-size", type=int, default=32)
        parser.add_argument("--max-wait-ms", type=int, default=2)
        parser.add_argument(
            "--max-seconds", type=float, default=15.0, help="Time cap of one measurement."
        )

    def handle(self, *args: object, **options: object) -> None:
        if os.environ.get(ISOLATED_ENV) != "1":
            run_isolated("bench_batching")
            return
        BatchingBench(self, options).run()


class BatchingBench:
    """Runs in the isolated stack. MLflow and the runtime are imported where used: the
    clients' interpreter imports this module and must stay lean."""

    def __init__(self, command: Command, options: dict) -> None:
        self.out = command.stdout
        self.options = options
        self.var = Path(settings.VAR_DIR)
        self.started: list[tuple[int, str]] = []

    def run(self) -> None:
        from endpoints.runtime import get_runtime

        self.runtime = get_runtime()
        try:
            model_dir = self._model()
            batching = self._settings()
            replicas = {
                "off": self._start(model_dir, "off", {}),
                f"on ({batching.max_size} rows, {batching.max_wait_ms} ms)": self._start(
                    model_dir, "on", batching.env()
                ),
            }
            self._check_same_answers(replicas)
            self._report(replicas)
        finally:
            for pid, replica_id in self.started:
                self.runtime.stop(pid, replica_id, grace_seconds=5)

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _settings(self):  # -> BatchSettings
        from endpoints.runtime.batching import BatchSettings

        return BatchSettings(self.options["max_batch_size"], self.options["max_wait_ms"])

    def _model(self) -> Path:
        from endpoints import demo, registry

        self.say("Preparing: registry with the demo iris-classifier, two replicas …")
        registry.configure_mlflow()
        demo.seed(next(d for d in demo.DEMO_MODELS if d.name == MODEL))
        return registry.download_model(MODEL, "1", self.var / "models" / "v1")

    def _start(self, model_dir: Path, name: str, env: dict[str, str]) -> tuple[str, int]:
        from endpoints.runtime import ReplicaSpec

        host = "127.0.0.1"
        port = settings.SERVING["REPLICA_PORT_MIN"] + len(self.started)
        spec = ReplicaSpec(
            replica_id=f"bench-batching-{name}",
            model_path=str(model_dir),
            host=host,
            port=port,
            log_path=str(self.var / f"replica-{name}.log"),
            python=sys.executable,
            extra_env=env,
        )
        self.started.append((self.runtime.start(spec), spec.replica_id))
        deadline = time.monotonic() + 120
        while not self.runtime.probe(host, port):
            if time.monotonic() > deadline:
                raise CommandError(f"the replica ({name}) did not answer within 120 s")
            time.sleep(0.2)
        return host, port

    def _check_same_answers(self, replicas: dict[str, tuple[str, int]]) -> None:
        for fmt, body in BODIES.items():
            answers = set()
            for host, port in replicas.values():
                client = BodyClient(host, port, body.decode())
                status = client.call()
                answers.add((status, client.last_body))
                client.close()
            if len(answers) != 1:
                raise CommandError(f"the replicas answer {fmt} differently: {answers}")

    def _report(self, replicas: dict[str, tuple[str, int]]) -> None:
        clients = self.options["clients"]
        load = {
            "clients": clients,
            "total": self.options["requests"],
            "max_seconds": self.options["max_seconds"],
        }
        runs: dict[tuple[str, str], list[Result]] = {}
        for round_ in range(1, self.options["rounds"] + 1):
            self.say(f"Round {round_}/{self.options['rounds']} …")
            for fmt, body in BODIES.items():
                for label, (host, port) in replicas.items():
                    target = {"host": host, "port": port, "body": body.decode()}
                    runs.setdefault((fmt, label), []).append(_measure(target, load))
        self._print(runs, clients)

    def _print(self, runs: dict[tuple[str, str], list[Result]], clients: int) -> None:
        self.say(f"\nOne replica of {MODEL}, {clients} concurrent clients, one-row requests:\n")
        self.say(f"{'request':<18} {'batching':<22} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        medians = {key: median(results) for key, results in runs.items()}
        for (fmt, label), r in medians.items():
            line = f"{fmt:<18} {label:<22} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f}"
            self.say(line + (f"  ({r.errors} errors)" if r.errors else ""))
        for fmt in BODIES:
            off, on = (r for (f, _), r in medians.items() if f == fmt)
            self.say(
                f"{fmt}: throughput on/off {on.rps / off.rps:.2f}, "
                f"p50 on/off {on.p50_ms / off.p50_ms:.2f}, p99 on/off {on.p99_ms / off.p99_ms:.2f}"
            )


def _measure(target: dict, load: dict) -> Result:
    spec = json.dumps({"target": target, "load": load})
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, spec],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Result(**json.loads(out))
