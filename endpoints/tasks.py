"""Celery tasks: thin wrappers that call the reconcile loop.

Reconciling is idempotent and guarded by a per-endpoint lock, so a task may run twice, late
or never: the periodic ``reconcile_all`` converges regardless. Other modules trigger
``reconcile_endpoint`` by name through ``endpoints.triggers``.
"""

from __future__ import annotations

from celery import shared_task

from endpoints.provisioning import housekeeping, reconcile


@shared_task(acks_late=True, ignore_result=True)
def reconcile_endpoint(endpoint_pk: int) -> None:
    reconcile.reconcile_endpoint(endpoint_pk)


@shared_task(ignore_result=True)
def reconcile_all() -> None:
    reconcile.reconcile_all()


@shared_task(ignore_result=True)
def apply_retention() -> None:
    housekeeping.apply_retention()


@shared_task(ignore_result=True)
def purge_inference_tables() -> None:
    housekeeping.purge_inference_tables()
