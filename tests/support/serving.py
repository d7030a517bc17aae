"""An endpoint's observed state as the worker writes it, for tests on the real stack:
waiting for READY, its running replicas, where a stage alias points, its events; and a
scoring request through the front door."""

from __future__ import annotations

import requests

from endpoints.models import (
    EndpointState,
    Event,
    Replica,
    ReplicaState,
    ServingEndpoint,
    StageAlias,
)
from tests.support.load import BODY
from tests.support.stack import wait_for

READY_TIMEOUT = 120
NOT_STOPPED = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)


def endpoint_of(name: str) -> ServingEndpoint:
    return ServingEndpoint.objects.get(registered_model_name=name)


def wait_ready(name: str, timeout: float = READY_TIMEOUT) -> ServingEndpoint:
    """Wait until serving ``name`` is READY; fail at once if it FAILED."""

    def ready():
        endpoint = endpoint_of(name)
        assert endpoint.state != EndpointState.FAILED, endpoint.state_message
        return endpoint if endpoint.state == EndpointState.READY else None

    return wait_for(ready, timeout=timeout, what=f"{name} to be READY")


def running(name: str, version: str | None = None) -> list[Replica]:
    """``name``'s RUNNING replicas (of ``version`` only, if given)."""
    replicas = Replica.objects.filter(
        version__endpoint__registered_model_name=name, state=ReplicaState.RUNNING
    )
    if version is not None:
        replicas = replicas.filter(version__version=version)
    return list(replicas)


def alias(name: str, stage: str) -> str | None:
    """The version ``name``'s ``stage`` (or ``@alias``) URL serves, if any."""
    row = StageAlias.objects.filter(endpoint__registered_model_name=name, stage=stage).first()
    return row.version.version if row else None


def events(name: str, type: str) -> list[Event]:
    return list(Event.objects.filter(endpoint__registered_model_name=name, type=type))


def wait_until_stopped(**which) -> None:
    """Wait until no replica matching ``which`` is starting, running or stopping."""
    wait_for(
        lambda: not Replica.objects.filter(state__in=NOT_STOPPED, **which).exists(),
        timeout=60,
        what=f"replicas of {which} to stop",
    )


def score(
    base: str, token: str, name: str, selector: str, *, timeout: float = 60
) -> requests.Response:
    """One scoring request for ``name``'s ``selector`` through the front door at ``base``."""
    return requests.post(
        f"{base}/model-endpoint/{name}/{selector}/invocations",
        json=BODY,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )
