"""The Celery application: provisioning runs here, never in a web process."""

from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_ui.settings")

app = Celery("serving_ui")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_reconcile(sender: Celery, **kwargs: object) -> None:
    # The periodic pass is what makes provisioning correct: a lost message, a crashed
    # worker or a transition made directly in MLflow is caught up on the next tick.
    from django.conf import settings

    sender.add_periodic_task(
        settings.RECONCILE_INTERVAL_SECONDS,
        sender.signature("endpoints.tasks.reconcile_all"),
        name="reconcile all endpoints",
    )
    # Old replica rows and logs, build logs and events are deleted (their retention).
    sender.add_periodic_task(
        settings.SERVING["HOUSEKEEPING_INTERVAL_SECONDS"],
        sender.signature("endpoints.tasks.apply_retention"),
        name="apply retention",
    )
    # Days of inference tables past their retention, whether or not anything is captured.
    sender.add_periodic_task(
        settings.SERVING["HOUSEKEEPING_INTERVAL_SECONDS"],
        sender.signature("endpoints.tasks.purge_inference_tables"),
        name="purge inference tables",
    )


_heartbeat = None


@signals.worker_ready.connect
def _start_heartbeat(sender: object, **kwargs: object) -> None:
    # The front door's /readyz counts workers by this heartbeat (endpoints.telemetry.readiness).
    global _heartbeat
    from endpoints.telemetry.readiness import Heartbeat

    _heartbeat = Heartbeat(str(sender.hostname))
    _heartbeat.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(sender: object, **kwargs: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
