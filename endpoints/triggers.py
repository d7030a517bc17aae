"""Asking a worker to reconcile an endpoint now, rather than at the next periodic pass.

The task is sent by name, so the web, gateway and provisioning code that triggers a pass
does not import the task module (which imports provisioning): imports only run downward.
A trigger is only ever a shortcut: the periodic ``reconcile_all`` converges without it.
"""

from __future__ import annotations

import logging

from celery import current_app
from django.db import transaction

log = logging.getLogger(__name__)

RECONCILE_ENDPOINT_TASK = "endpoints.tasks.reconcile_endpoint"


def reconcile_soon(endpoint_pk: int, *, countdown: float | None = None) -> None:
    """Enqueue a reconcile of the endpoint; a broker that is away is logged, not raised.

    The desired state is already committed when this runs, so failing the caller (a user's
    request, a scoring request waiting for a wake-up) would lose nothing but time."""
    try:
        current_app.send_task(RECONCILE_ENDPOINT_TASK, args=(endpoint_pk,), countdown=countdown)
    except Exception as exc:
        log.warning("could not enqueue reconcile for endpoint %s: %s", endpoint_pk, exc)


def reconcile_on_commit(endpoint_pk: int) -> None:
    """Reconcile once the current transaction commits (the worker must see its writes)."""
    transaction.on_commit(lambda: reconcile_soon(endpoint_pk))
