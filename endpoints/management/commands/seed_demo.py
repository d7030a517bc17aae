"""``manage.py seed_demo``: register the demo models (idempotent)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from endpoints.dev import demo


class Command(BaseCommand):
    help = "Train and register the demo models in the MLflow registry, where missing."

    def handle(self, *args: object, **options: object) -> None:
        created = demo.seed_all(echo=self.stdout.write)
        if created:
            self.stdout.write(f"Registered demo models: {', '.join(created)}.")
        else:
            self.stdout.write("Demo models already registered.")
