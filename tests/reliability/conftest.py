"""Fixtures of the reliability and security suite.

The security tests share one real deployment of the demo iris model (``live``: enabled
through the product's services, served by the worker, with users holding each permission)
and score through the real gateway (the front door, the ``web_server`` fixture); a canary HTTP
server records every request that reaches it, to show hostile paths reach nothing else.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import wait_for
from fakes import Gate

from endpoints.models import (
    Replica,
    ReplicaState,
    ServingEndpoint,
)

Address = tuple[str, int]

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
IRIS_SPLIT = {
    "dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]},
}


@dataclass
class Canary:
    """An HTTP server that answers like a model server and remembers every request."""

    address: Address
    requests: list[dict] = field(default_factory=list)

    def clear(self) -> None:
        self.requests.clear()


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            payload = b'{"predictions": ["canary"]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _record

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Canary(("127.0.0.1", server.server_address[1]), seen)
    server.shutdown()
    server.server_close()


# --- a real deployment shared by the suite ------------------------------------------------------

IDENTITIES = ("anonymous", "outsider", "viewer", "querier", "manager", "admin", "principal")
GRANTS = {"viewer": "CAN_VIEW", "querier": "CAN_QUERY", "manager": "CAN_MANAGE"}
# An endpoint row for a model the registry does not have: management calls that would
# disturb the live deployment (disable, compute config) are made against it instead.
SPARE = "rel-spare-endpoint"


@dataclass
class Live:
    """iris-classifier served for real by the worker, plus users holding each permission."""

    base: str
    users: dict[str, object]
    tokens: dict[str, str]
    model: str = "iris-classifier"

    def url(self, selector: str = "Production", prefix: str = "model-endpoint") -> str:
        return f"{self.base}/{prefix}/{self.model}/{selector}/invocations"

    def headers(self, identity: str) -> dict[str, str]:
        token = self.tokens.get(identity)
        return {"Authorization": f"Bearer {token}"} if token else {}


def _make_users(prefix: str) -> dict[str, object]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from endpoints import services

    User = get_user_model()
    users: dict[str, object] = {}
    users["owner"] = User.objects.create_user(f"{prefix}-owner", password="pw-owner-1234")
    users["owner"].user_permissions.add(Permission.objects.get(codename="add_servingendpoint"))
    for name in ("outsider", "viewer", "querier", "manager"):
        users[name] = User.objects.create_user(f"{prefix}-{name}", password=f"pw-{name}-1234")
    users["admin"] = User.objects.create_superuser(f"{prefix}-admin", password="pw-admin-1234")
    principal = services.service_principal_create(username=f"{prefix}-bot", by=users["admin"])
    users["principal"] = principal.user
    return users


def _grant(endpoint: ServingEndpoint, users: dict[str, object]) -> None:
    from endpoints import services

    for name, level in {**GRANTS, "principal": "CAN_QUERY"}.items():
        services.permission_set(endpoint=endpoint, user=users[name], level=level, by=users["owner"])


def _live_replicas(model: str) -> int:
    return Replica.objects.filter(
        version__endpoint__registered_model_name=model,
        state__in=(ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING),
    ).count()


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
        users = _make_users(prefix)
        endpoint = services.endpoint_enable(name="iris-classifier", user=users["owner"])
        spare = ServingEndpoint.objects.create(registered_model_name=SPARE, creator=users["owner"])
        _grant(endpoint, users)
        _grant(spare, users)
        tokens = {
            name: services.token_create(user=user, name="reliability")[1]
            for name, user in users.items()
        }
    state = Live(web_server, users, tokens)

    def answers() -> bool:
        return all(
            requests.post(
                state.url(stage), json=IRIS_SPLIT, headers=state.headers("owner"), timeout=30
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
                lambda: _live_replicas("iris-classifier") == 0,
                timeout=60,
                what="iris-classifier replicas to stop",
            )
            ServingEndpoint.objects.filter(pk__in=(endpoint.pk, spare.pk)).delete()
            for user in users.values():
                user.delete()


@pytest.fixture
def deployment(live, django_db_blocker) -> Iterator:
    from .helpers import Deployment

    deployment = Deployment(live, django_db_blocker)
    yield deployment
    deployment.remove()


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A gate for ``fakes.gate_model`` replicas of this run, opened after the test."""
    from endpoints.provisioning import environments

    data = environments.data_dir()
    with Gate(logs=data / "logs", models=data / "models") as gate:
        yield gate
