"""The batching benchmark (``manage.py bench_batching``): two endpoints made of the demo
``iris-classifier``, one with batching off and one whose Production compute config turns it
on, their replicas measured on their own ports, alternating, with concurrent one-row
requests: ``dataframe_records`` (merged) and ``dataframe_split`` of doubles (answered by the
scikit-learn shortcut first: a control). Both replicas must give the same bodies
(docs/performance.md, "Batching").
"""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import transaction

from .client import MINIMAL
from .common import MODEL, Bench, register_copy, serving_replica
from .load import (
    BODY,
    RECORDS_BODY,
    KeepAliveClient,
    Result,
    destination,
    measure_in_subprocess,
    median,
)

BATCHING_MODEL = "iris-classifier-batching"
BODIES = {"dataframe_records": RECORDS_BODY, "dataframe_split": BODY}


class BatchingBench(Bench):
    def run(self) -> None:
        try:
            self.say("Preparing: registry with the demo iris-classifier, the product …")
            self.prepare()
            register_copy(BATCHING_MODEL, ("Production",))
            self.start_product()
            self._enable_both()
            self.wait_ready(MODEL, BATCHING_MODEL)
            replicas = {
                "off": serving_replica(MODEL),
                f"on ({self.options['max_batch_size']} rows, {self.options['max_wait_ms']} ms)": (
                    serving_replica(BATCHING_MODEL)
                ),
            }
            for label, replica in replicas.items():
                self.say(f"batching {label}: replica {replica.address}, started by the product")
            addresses = {label: (r.host, r.port) for label, r in replicas.items()}
            self._check_same_answers(addresses)
            self._report(addresses)
        finally:
            self.stop()

    def _enable_both(self) -> None:
        """Both endpoints; the batching one with its compute config in the same commit, so
        the first pass already starts its replica with batching on."""
        from endpoints import services

        with transaction.atomic():
            self.enable(BATCHING_MODEL)
            services.compute_config_update(
                name=BATCHING_MODEL,
                stage="Production",
                workload_size="Small",
                scale_to_zero_enabled=False,
                max_batch_size=self.options["max_batch_size"],
                max_wait_ms=self.options["max_wait_ms"],
                user=self.user,
            )
        self.enable(MODEL)

    def _check_same_answers(self, replicas: dict[str, tuple[str, int]]) -> None:
        for fmt, body in BODIES.items():
            answers = set()
            for host, port in replicas.values():
                client = KeepAliveClient(host, port, "/invocations", {}, body=body)
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
            # Alternate which replica goes first: neither gets the quieter moments.
            order = list(replicas.items())[:: 1 if round_ % 2 else -1]
            for fmt, body in BODIES.items():
                for label, (host, port) in order:
                    to = destination(host, port, "/invocations", body=body)
                    result = measure_in_subprocess(MINIMAL, to, load)
                    runs.setdefault((fmt, label), []).append(result)
        self._print(runs, clients)

    def _print(self, runs: dict[tuple[str, str], list[Result]], clients: int) -> None:
        self.say(
            f"\nOne replica of {MODEL} per row, started by the product, measured on its port; "
            f"{clients} concurrent clients (the minimal client), one-row requests:\n"
        )
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
