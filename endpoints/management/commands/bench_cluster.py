"""``manage.py bench_cluster`` (part of ``make bench``): the front door in front of a
replica the Ray runtime placed, against one in front of a local replica, same run
(``endpoints.bench.cluster``)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandParser

from endpoints.bench.cluster import ClusterBench
from endpoints.bench.common import ISOLATED_ENV, run_isolated
from endpoints.management.commands.run_cluster import RAY_LOOPBACK_ENV


class Command(BaseCommand):
    help = "Benchmark the front door in front of a Ray-placed replica against a local one."

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
            run_isolated("bench_cluster", RAY_LOOPBACK_ENV)
            return
        ClusterBench(self.stdout, options).run()
