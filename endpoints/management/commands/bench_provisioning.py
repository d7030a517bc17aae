"""``manage.py bench_provisioning`` (part of ``make bench``): how long provisioning takes,
with replicas forked from a zygote (the default) and spawned fresh, each in a fresh
isolated stack (``endpoints.bench.provisioning``)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandParser

from endpoints.bench.common import ISOLATED_ENV
from endpoints.bench.provisioning import MODES, ProvisioningBench, compare_modes


class Command(BaseCommand):
    help = "Benchmark provisioning: enable to READY, cold start after scale to zero."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rounds", type=int, default=3, help="Cold starts to measure.")
        parser.add_argument(
            "--modes",
            default=",".join(MODES),
            help="Replica start modes to measure, comma-separated (zygote, spawn).",
        )

    def handle(self, *args: object, **options: object) -> None:
        if os.environ.get(ISOLATED_ENV) != "1":
            compare_modes(self.stdout, str(options["modes"]).split(","))
            return
        ProvisioningBench(self.stdout, options).run()
