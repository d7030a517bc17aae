"""Helpers of the load and fault tests: tiny models, one deployment per test through the
product's services (committed outside test transactions: the suite's package-wide
deployment must survive, so no ``transactional_db`` flush), and a paced load generator."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import requests
from conftest import wait_for

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

from .conftest import Live

READY_TIMEOUT = 120
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)


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
            json=body or {"dataframe_records": [{"x": 1}]},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

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


class PacedLoad:
    """About ``rate`` requests/s to one URL from ``threads`` clients until stopped; keeps
    every answer as ``(status, first prediction or error text)``."""

    def __init__(self, deployment: Deployment, selector: str, *, rate: float = 50, threads=4):
        self.url = deployment.url(selector)
        self.headers = {"Authorization": f"Bearer {deployment.token}"}
        self.interval = threads / rate
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        next_at = time.monotonic()
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    response = session.post(
                        self.url,
                        json={"dataframe_records": [{"x": 1}]},
                        headers=self.headers,
                        timeout=60,
                    )
                    value = response.json().get("predictions", [None])[0] if response.ok else ""
                    self.answers.append((response.status_code, value or response.text))
                except requests.RequestException as exc:
                    self.answers.append((0, repr(exc)))
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def count(self) -> int:
        return len(self.answers)

    def __enter__(self) -> PacedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
