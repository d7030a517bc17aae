"""``manage.py bench_provisioning`` (part of ``make bench``): how long provisioning takes.

In an isolated stack (temporary data directory, its own Redis, database and registry; a
real Celery worker with beat and gunicorn, as ``make run`` starts them) it measures, for
the demo ``iris-classifier``:

- seconds from **enable** to the endpoint being READY (both versions up);
- seconds from the **first request after scale to zero** to its answer (a cold start),
  next to the same request while a replica runs (the warm baseline);
- seconds from a **transition** of v2, already READY in Staging, into Production until
  the stage answers (the alias moves at once: no new replica is needed).
"""

from __future__ import annotations

import statistics
import sys
import time
import urllib.request

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from .bench import BODY, ISOLATED_ENV, MODEL, Bench, _wait, run_isolated

QUIET_SECONDS = 5


class Command(BaseCommand):
    help = "Benchmark provisioning: enable to READY, cold start after scale to zero."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rounds", type=int, default=3, help="Cold starts to measure.")

    def handle(self, *args: object, **options: object) -> None:
        import os

        if os.environ.get(ISOLATED_ENV) != "1":
            run_isolated(
                "bench_provisioning",
                {
                    "SERVING_SCALE_TO_ZERO_AFTER_SECONDS": str(QUIET_SECONDS),
                    "RECONCILE_INTERVAL_SECONDS": "1",
                },
            )
            return
        ProvisioningBench(self, {"web_workers": 2, "web_threads": None, **options}).run()


class ProvisioningBench(Bench):
    def run(self) -> None:
        try:
            self._start_redis()
            self.say("Preparing: database and the demo iris-classifier in the registry …")
            call_command("migrate", interactive=False, verbosity=0)
            from endpoints import demo, registry

            registry.configure_mlflow()
            demo.seed(next(d for d in demo.DEMO_MODELS if d.name == MODEL))
            self._start_worker()
            self.port = self._start_gunicorn()
            self._measure()
        finally:
            # The worker first: a running worker would start the replicas again.
            self._stop()
            self._stop_replicas()

    def _start_worker(self) -> None:
        self._spawn(
            "worker",
            [
                *(sys.executable, "-m", "celery", "-A", "serving_ui", "worker", "-B"),
                *("--concurrency", "2", "--loglevel", "WARNING"),
                *("--schedule", str(self.var / "celerybeat-schedule")),
            ],
        )

    def _stop_replicas(self) -> None:
        from endpoints.provisioning.reconcile import stop_all_replicas

        stop_all_replicas()

    def _measure(self) -> None:
        from django.contrib.auth import get_user_model

        from endpoints import services
        from endpoints.models import EndpointState, Replica, ReplicaState, ServingEndpoint

        user = get_user_model().objects.create_superuser("bench", "bench@example.com", None)
        _, self.token = services.token_create(user=user, name="bench")

        t0 = time.perf_counter()
        services.endpoint_enable(name=MODEL, user=user)
        _wait(
            lambda: (
                ServingEndpoint.objects.get(registered_model_name=MODEL).state
                == EndpointState.READY
            ),
            what="the endpoint",
            timeout=300,
        )
        enable_seconds = time.perf_counter() - t0
        warm = statistics.median(self._score_seconds() for _ in range(20))

        services.compute_config_update(
            name=MODEL,
            stage="Production",
            workload_size="Small",
            scale_to_zero_enabled=True,
            user=user,
        )
        live = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)
        production = Replica.objects.filter(
            version__endpoint__registered_model_name=MODEL,
            version__registry_stage="Production",
        )
        cold: list[float] = []
        for round_no in range(1, self.options["rounds"] + 1):
            self.say(f"cold start {round_no}/{self.options['rounds']}: waiting for zero …")
            _wait(lambda: not production.filter(state__in=live).exists(), what="zero", timeout=120)
            cold.append(self._score_seconds(timeout=300))

        t0 = time.perf_counter()
        services.model_version_transition(
            name=MODEL, version="2", stage="Production", archive_existing_versions=True, user=user
        )
        _wait(lambda: self._answers_with_v2(), what="v2 in Production", timeout=300)
        transition_seconds = time.perf_counter() - t0

        self.say("")
        self.say(f"Provisioning of {MODEL} (local runtime, MLflow scoring server replicas)")
        self.say(f"  enable → READY (2 versions, 1 replica each) {enable_seconds:8.2f} s")
        self.say(f"  v2 (READY in Staging) → Production answers  {transition_seconds:8.2f} s")
        self.say(
            f"  first request after scale to zero          {statistics.median(cold):8.2f} s"
            f"  (median of {len(cold)}: {', '.join(f'{c:.2f}' for c in cold)})"
        )
        self.say(f"  same request, replica running (baseline)   {warm:8.3f} s")
        self.say(
            f"  cold start / warm request                  {statistics.median(cold) / warm:8.0f}x"
        )

    def _score_seconds(self, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        status, _ = self._post(timeout)
        if status != 200:
            raise CommandError(f"scoring answered {status}")
        return time.perf_counter() - t0

    def _post(self, timeout: float) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/model-endpoint/{MODEL}/Production/invocations",
            data=BODY,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()

    def _answers_with_v2(self) -> bool:
        from endpoints.models import StageAlias

        alias = StageAlias.objects.filter(
            endpoint__registered_model_name=MODEL, stage="Production"
        ).first()
        return bool(alias and alias.version.version == "2" and self._post(60)[0] == 200)
