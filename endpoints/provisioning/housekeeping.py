"""Installation-wide chores of the periodic pass: stop orphan processes, rotate logs,
keep the interpreters that fork replicas and this worker's registry client warm; and the
retention clean-ups Celery beat runs apart (``apply_retention``,
``purge_inference_tables``)."""

from __future__ import annotations

import logging
import sys
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from endpoints import registry
from endpoints.models import EndpointVersion, Event, Replica, ReplicaState
from endpoints.runtime import LocalRuntime, Runtime
from endpoints.telemetry import inference_tables

from . import environments
from .observe import NOT_STOPPED

log = logging.getLogger(__name__)


def collect_orphans(runtime: Runtime) -> int:
    """Stop replica processes of this installation that no live row accounts for, then
    remove the limit groups of replicas that are gone."""
    stopped = _stop_orphans(runtime)
    release_groups(runtime)
    return stopped


def release_groups(runtime: Runtime) -> int:
    """Remove the empty cgroups of this installation's replicas whose rows are stopped
    (a replica that exited by itself leaves its group for the pass that reads why)."""
    if not isinstance(runtime, LocalRuntime):
        return 0  # a Ray node removes a replica's group as the replica exits
    live = Replica.objects.filter(state__in=NOT_STOPPED).values_list("replica_id", flat=True)
    return runtime.release_groups(set(live))


def _stop_orphans(runtime: Runtime) -> int:
    found = runtime.discover(within=str(environments.data_dir()))
    if not found:
        return 0
    known = set(
        Replica.objects.filter(replica_id__in=found, state__in=NOT_STOPPED).values_list(
            "replica_id", flat=True
        )
    )
    stopped = 0
    for replica_id, pid in found.items():
        if replica_id in known:
            continue
        log.warning("reconcile: stopping orphan replica %s (pid %s)", replica_id, pid)
        runtime.kill(pid, replica_id)
        stopped += 1
    return stopped


def rotate_logs(runtime: Runtime) -> None:
    limit = settings.SERVING["LOG_MAX_BYTES"]
    for path in Replica.objects.filter(state__in=NOT_STOPPED).values_list("log_path", flat=True):
        if path:
            with suppress(OSError):
                runtime.rotate_log(path, max_bytes=limit)


def warm_zygotes(runtime: Runtime) -> None:
    """Start warming the zygote of the product's own environment, and of each per-model
    environment a desired version runs in, before a replica needs it: the first start
    after the worker comes up is then as fast as the next ones."""
    if settings.SERVING["REPLICA_START"] != "zygote" or not isinstance(runtime, LocalRuntime):
        return
    environments_in_use = (
        EndpointVersion.objects.filter(desired=True)
        .exclude(environment_path="")
        .values_list("environment_path", flat=True)
        .distinct()
    )
    for python in {sys.executable, *environments_in_use}:
        zygote_dir, models = str(environments.zygote_dir()), str(environments.models_root())
        if runtime.warm_zygote(python, zygote_dir, models, settings.SERVING["SANDBOX"]):
            log.info("reconcile: warming the replica environment of %s", python)


def warm_registry() -> None:
    """Open this worker process's registry client and store with one small read: the
    first one costs seconds (MLflow's imports, the database schema check), which the
    first pass after a user's change would otherwise pay."""
    try:
        registry.client().search_registered_models(max_results=1)
    except Exception as exc:  # the passes that need the registry report it
        log.warning("reconcile: the model registry cannot be read yet: %s", exc)


def stop_zygotes(runtime: Runtime) -> int:
    """Stop this installation's zygotes (the replicas they forked are stopped apart) and
    remove the cgroups its stopped replicas left."""
    if not isinstance(runtime, LocalRuntime):
        return 0
    stopped = runtime.stop_zygotes(within=str(environments.zygote_dir()))
    runtime.release_all_groups()
    return stopped


# --- retention ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Retained:
    """What one clean-up deleted."""

    replicas: int = 0
    replica_logs: int = 0
    build_logs: int = 0
    events: int = 0


def _delete_log(path: str) -> int:
    """Delete a log file and its rotated part; how many files were there."""
    deleted = 0
    for candidate in (Path(path), Path(path + ".1")):
        with suppress(FileNotFoundError):
            candidate.unlink()
            deleted += 1
    return deleted


def apply_retention(*, now: datetime | None = None) -> Retained:
    """Delete what is older than its retention (``SERVING_REPLICA_RETENTION_DAYS``,
    ``SERVING_EVENT_RETENTION_DAYS``):

    - replicas stopped (Terminated or Error) before the cut-off: their log files, then
      their rows;
    - the build log of a version that is no longer desired and has had no live replica
      since the cut-off (its row stays: the version's history is its events);
    - events older than theirs.
    """
    now = now or timezone.now()
    replica_cutoff = now - timedelta(days=float(settings.SERVING["REPLICA_RETENTION_DAYS"]))
    event_cutoff = now - timedelta(days=float(settings.SERVING["EVENT_RETENTION_DAYS"]))

    stopped = Replica.objects.filter(
        state__in=(ReplicaState.TERMINATED, ReplicaState.ERROR), stopped_at__lt=replica_cutoff
    )
    replica_logs = sum(
        _delete_log(path) for path in stopped.values_list("log_path", flat=True) if path
    )
    replicas, _ = stopped.delete()

    build_logs = 0
    idle = (
        EndpointVersion.objects.filter(desired=False, created_at__lt=replica_cutoff)
        .exclude(build_log_path="")
        .exclude(replicas__state__in=NOT_STOPPED)
        .annotate(last_stop=Max("replicas__stopped_at"))
    )
    for version in idle:
        if version.last_stop is not None and version.last_stop >= replica_cutoff:
            continue
        build_logs += _delete_log(version.build_log_path)
        EndpointVersion.objects.filter(pk=version.pk).update(build_log_path="")

    events, _ = Event.objects.filter(timestamp__lt=int(event_cutoff.timestamp() * 1000)).delete()
    retained = Retained(replicas, replica_logs, build_logs, events)
    if replicas or build_logs or events:
        log.info("retention: deleted %s", retained)
    return retained


def purge_inference_tables(*, today: date | None = None) -> int:
    """Remove the days of every inference table older than
    ``SERVING_INFERENCE_RETENTION_DAYS`` (tables of disabled endpoints and of endpoints
    nobody queries any more included); how many days were removed."""
    removed = inference_tables.purge(int(settings.SERVING["INFERENCE_RETENTION_DAYS"]), today=today)
    if removed:
        log.info("retention: removed %d days of inference tables", len(removed))
    return len(removed)
