"""``manage.py bench`` (what ``make bench`` runs first): the product's scoring path against
MLflow's own scoring server, in one run, on loopback (``endpoints.bench.scoring``)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandParser

from endpoints.bench.common import ISOLATED_ENV, run_isolated
from endpoints.bench.scoring import ScoringBench

HALF_OPEN = 1000


class Command(BaseCommand):
    help = "Benchmark the product's scoring path against MLflow's scoring server."

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
        ScoringBench(self.stdout, options).run()
