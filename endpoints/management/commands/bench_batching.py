"""``manage.py bench_batching`` (part of ``make bench``): replicas of the demo
``iris-classifier`` with micro-batching off and on (``endpoints.bench.batching``)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandParser

from endpoints.bench.batching import BatchingBench
from endpoints.bench.common import ISOLATED_ENV, run_isolated


class Command(BaseCommand):
    help = "Benchmark replicas with micro-batching off and on."

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
        BatchingBench(self.stdout, options).run()
