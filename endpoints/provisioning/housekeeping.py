"""Installation-wide chores of the periodic pass: stop orphan processes, rotate logs,
keep the interpreters that fork replicas and this worker's registry client warm."""

from __future__ import annotations

import logging
import sys
from contextlib import suppress

from django.conf import settings

from endpoints import registry
from endpoints.models import EndpointVersion, Replica
from endpoints.runtime import LocalRuntime, Runtime

from . import environments
from .observe import NOT_STOPPED

log = logging.getLogger(__name__)


def collect_orphans(runtime: Runtime) -> int:
    """Stop replica processes of this installation that no live row accounts for."""
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
    """Stop this installation's zygotes (the replicas they forked are stopped apart)."""
    if not isinstance(runtime, LocalRuntime):
        return 0
    return runtime.stop_zygotes(within=str(environments.zygote_dir()))
