"""``manage.py bench_limits`` (part of ``make bench``): another endpoint's latency beside a
Small replica that spins on every core (``endpoints.bench.noisy``)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandParser

from endpoints.bench.common import ISOLATED_ENV, run_isolated
from endpoints.bench.noisy import NoisyNeighbourBench


class Command(BaseCommand):
    help = "Benchmark an endpoint's latency beside a replica that spins on every core."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=1000, help="Per measurement.")
        parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are shown.")
        parser.add_argument(
            "--max-seconds", type=float, default=15.0, help="Time cap of one measurement."
        )

    def handle(self, *args: object, **options: object) -> None:
        if os.environ.get(ISOLATED_ENV) != "1":
            run_isolated("bench_limits")
            return
        NoisyNeighbourBench(self.stdout, options).run()
