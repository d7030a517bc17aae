"""The reliability suite's deployments, made through the product's services and committed
outside test transactions: the suite's shared one (``Live``: the demo iris model, served
by the worker, with users holding each permission) and one per test (``Deployment``: the
shared one must survive, so no ``transactional_db`` flush), and load on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import requests

from endpoints import services
from endpoints.models import (
    EndpointVersion,
    Event,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    StageAlias,
)
from tests.support.load import BODY, Load
from tests.support.serving import NOT_STOPPED, READY_TIMEOUT
from tests.support.stack import wait_for

IDENTITIES = ("anonymous", "outsider", "viewer", "querier", "manager", "admin", "principal")
GRANTS = {"viewer": "CAN_VIEW", "querier": "CAN_QUERY", "manager": "CAN_MANAGE"}
# An endpoint row for a model the registry does not have: management calls that would
# disturb the live deployment (disable, compute config) are made against it instead.
SPARE = "rel-spare-endpoint"


# --- the suite's shared deployment -----------------------------------------------------------


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


def make_users(prefix: str) -> dict[str, object]:
    """An owner who may create endpoints, a user for each of ``IDENTITIES`` but anonymous
    (none holds a grant yet), and a service principal."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

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


def grant(endpoint: ServingEndpoint, users: dict[str, object]) -> None:
    """Each of ``GRANTS`` on ``endpoint``, and CAN_QUERY to the service principal."""
    for name, level in {**GRANTS, "principal": "CAN_QUERY"}.items():
        services.permission_set(endpoint=endpoint, user=users[name], level=level, by=users["owner"])


def live_replicas(model: str) -> int:
    """How many of ``model``'s replicas are starting, running or stopping."""
    return Replica.objects.filter(
        version__endpoint__registered_model_name=model, state__in=NOT_STOPPED
    ).count()


# --- the stack, without transactional_db -----------------------------------------------------


class Deployment:
    """One model served for the test; disabled and removed afterwards."""

    def __init__(self, live: Live, blocker) -> None:
        self.live = live
        self.blocker = blocker
        self.name = f"rel-{uuid.uuid4().hex[:8]}"
        self.owner = live.users["owner"]
        self.token = live.tokens["owner"]

    def db(self, fn: Callable, *args, **kwargs):
        with self.blocker.unblock():
            return fn(*args, **kwargs)

    def enable(self) -> None:
        self.db(services.endpoint_enable, name=self.name, user=self.owner)

    def transition(self, version: str, stage: str) -> None:
        self.db(
            services.model_version_transition,
            name=self.name,
            version=version,
            stage=stage,
            archive_existing_versions=True,
            user=self.owner,
        )

    def configure(self, stage: str, size: str, scale_to_zero: bool = False) -> None:
        self.db(
            services.compute_config_update,
            name=self.name,
            stage=stage,
            workload_size=size,
            scale_to_zero_enabled=scale_to_zero,
            user=self.owner,
        )

    def alias(self, stage: str) -> str | None:
        row = self.db(
            lambda: (
                StageAlias.objects.filter(endpoint__registered_model_name=self.name, stage=stage)
                .select_related("version")
                .first()
            )
        )
        return row.version.version if row else None

    def version(self, version: str) -> EndpointVersion | None:
        return self.db(
            lambda: EndpointVersion.objects.filter(
                endpoint__registered_model_name=self.name, version=version
            ).first()
        )

    def replicas(self, version: str | None = None, states=(ReplicaState.RUNNING,)) -> list:
        def query():
            rows = Replica.objects.filter(
                version__endpoint__registered_model_name=self.name, state__in=states
            )
            if version is not None:
                rows = rows.filter(version__version=version)
            return list(rows.select_related("version"))

        return self.db(query)

    def events(self, type: str) -> list[Event]:
        return self.db(
            lambda: list(Event.objects.filter(endpoint__registered_model_name=self.name, type=type))
        )

    def wait_serving(self, stage: str, version: str) -> None:
        def ready():
            row = self.version(version)
            assert row is None or row.service_state != ServiceState.FAILED, row.service_message
            return self.alias(stage) == version and self.replicas(version)

        wait_for(ready, timeout=READY_TIMEOUT, what=f"{self.name} v{version} serving {stage}")

    def url(self, selector: str) -> str:
        return f"{self.live.base}/model-endpoint/{self.name}/{selector}/invocations"

    def score(self, selector: str, body: dict | None = None, **kwargs) -> requests.Response:
        return requests.post(
            self.url(selector),
            json=body or BODY,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    def load(self, selector: str, *, rate: float = 50, threads: int = 4) -> Load:
        """Paced load on ``selector``'s URL (start it with ``with``)."""
        return Load(self.live.base, self.token, self.name, selector, rate=rate, threads=threads)

    def remove(self) -> None:
        def disable():
            ServingEndpoint.objects.filter(registered_model_name=self.name).update(enabled=False)
            endpoint = ServingEndpoint.objects.filter(registered_model_name=self.name).first()
            if endpoint is not None:
                services.request_reconcile(endpoint)

        self.db(disable)
        wait_for(
            lambda: not self.replicas(states=NOT_STOPPED),
            timeout=60,
            what=f"{self.name} replicas to stop",
        )
        self.db(lambda: ServingEndpoint.objects.filter(registered_model_name=self.name).delete())
