"""Installation-wide chores of the periodic pass: stop orphan processes, rotate logs."""

from __future__ import annotations

import logging
from contextlib import suppress

from django.conf import settings

from endpoints.models import Replica
from endpoints.runtime import Runtime

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
