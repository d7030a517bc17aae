"""Fixtures of the reliability and security suite.

The security tests share one real deployment of the demo iris model (``live``: enabled
through the product's services, served by the worker, with users holding each permission)
and score through the real gateway (the front door, the ``web_server`` fixture); a canary HTTP
server records every request that reaches it, to show hostile paths reach nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from endpoints.models import ServingEndpoint
from tests.support import iris
from tests.support.canary import Canary, serve_canary
from tests.support.deployment import (
    SPARE,
    Deployment,
    Live,
    grant,
    live_replicas,
    make_users,
)
from tests.support.models import Gate
from tests.support.stack import wait_for


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    with serve_canary() as canary:
        yield canary


@pytest.fixture(scope="package")
def live(
    request, django_db_blocker, demo_registry, celery_worker_process, web_server
) -> Iterator[Live]:
    """Serving enabled for iris-classifier through the product (the worker starts its
    replicas); everything is removed again at the end of the suite. Its rows are committed
    outside any test transaction, so tests of this package use ``db`` (rolled back), never
    ``transactional_db`` (which would flush them)."""
    import requests

    from endpoints import services

    prefix = f"rel{uuid.uuid4().hex[:4]}"
    with django_db_blocker.unblock():
        users = make_users(prefix)
        endpoint = services.endpoint_enable(name="iris-classifier", user=users["owner"])
        spare = ServingEndpoint.objects.create(registered_model_name=SPARE, creator=users["owner"])
        grant(endpoint, users)
        grant(spare, users)
        tokens = {
            name: services.token_create(user=user, name="reliability")[1]
            for name, user in users.items()
        }
    state = Live(web_server, users, tokens)

    def answers() -> bool:
        return all(
            requests.post(
                state.url(stage), json=iris.SPLIT, headers=state.headers("owner"), timeout=30
            ).status_code
            == 200
            for stage in ("Production", "Staging")
        )

    try:
        wait_for(answers, timeout=120, what="iris-classifier to be served", interval=0.5)
        yield state
    finally:
        with django_db_blocker.unblock():
            ServingEndpoint.objects.filter(pk__in=(endpoint.pk, spare.pk)).update(enabled=False)
            from endpoints.tasks import reconcile_endpoint

            reconcile_endpoint.delay(endpoint.pk)
            wait_for(
                lambda: live_replicas("iris-classifier") == 0,
                timeout=60,
                what="iris-classifier replicas to stop",
            )
            ServingEndpoint.objects.filter(pk__in=(endpoint.pk, spare.pk)).delete()
            for user in users.values():
                user.delete()


@pytest.fixture
def deployment(live, django_db_blocker) -> Iterator[Deployment]:
    deployment = Deployment(live, django_db_blocker)
    yield deployment
    deployment.remove()


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A gate for ``gate_model`` replicas (``tests.support.models``) of this run, opened after
    the test."""
    from endpoints.provisioning import environments

    data = environments.data_dir()
    with Gate(logs=data / "logs", models=data / "models") as gate:
        yield gate
