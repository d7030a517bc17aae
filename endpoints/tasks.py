"""Celery tasks: thin wrappers that call the reconcile loop.

Reconciling is idempotent and guarded by a per-endpoint lock, so a task may run twice, late
or never: the periodic ``reconcile_all`` converges regardless.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def reconcile_endpoint(endpoint_pk: int) -> None:
    from .reconcile import reconcile_endpoint as run

    run(endpoint_pk)


@shared_task(ignore_result=True)
def reconcile_all() -> None:
    from .reconcile import reconcile_all as run

    run()
