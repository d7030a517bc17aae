"""The state of one reconcile pass, which ``converge`` drives and ``apply`` writes to."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

from django.conf import settings
from redis.exceptions import RedisError

from endpoints import kv
from endpoints.models import EndpointVersion, Replica, ServingEndpoint
from endpoints.runtime import Runtime


class Pass:
    """One pass over an endpoint: its routing changes, the replicas to stop once routing
    no longer sends them requests, and whether another pass should follow soon."""

    def __init__(
        self, endpoint: ServingEndpoint, runtime: Runtime, fence: Callable[[], None]
    ) -> None:
        self.endpoint = endpoint
        self.runtime = runtime
        self.fence = fence  # raises once this pass must stop acting (its lock may be lost)
        self.routing_changed = False
        self.to_terminate: list[Replica] = []
        self.replaced: dict[str, int] = {}  # version → restarts of the replica replaced
        self.build_errors: dict[str, str] = {}  # version → why preparing it failed
        self.pending = False
        self.follow_up_seconds = 1.0  # the soonest follow-up asked for
        self.started: list[Replica] = []  # replicas started in this pass
        self.await_seconds = 0.0  # how long to wait for them to answer
        self._versions: dict[str, EndpointVersion] = {}
        self._replicas: dict[str, Replica] = {}

    def version(self, number: str) -> EndpointVersion:
        if number not in self._versions:
            self._versions[number] = self.endpoint.versions.select_related(
                "service_config", "target_config"
            ).get(version=number)
        return self._versions[number]

    def replica(self, replica_id: str) -> Replica:
        if replica_id not in self._replicas:
            self._replicas[replica_id] = Replica.objects.select_related("version").get(
                replica_id=replica_id
            )
        return self._replicas[replica_id]

    def remember_version(self, version: EndpointVersion) -> None:
        self._versions[version.version] = version

    def remember(self, replica: Replica) -> None:
        self._replicas[replica.replica_id] = replica

    def forget_rows(self) -> None:
        """Read rows afresh: another process may have written them since."""
        self._versions.clear()
        self._replicas.clear()

    def publish(self) -> None:
        """Tell gateways now that routing changed (a replica they wait for serves)."""
        if self.routing_changed:
            with suppress(RedisError):
                kv.bump_generation()
            self.routing_changed = False

    def finish(self) -> None:
        """Publish routing changes, give gateways a moment, then stop what was drained."""
        if self.routing_changed or self.to_terminate:
            with suppress(RedisError):
                kv.bump_generation()
        if not self.to_terminate:
            return
        # Gateways learn of the change at once, but a request may just have been sent.
        time.sleep(settings.SERVING["DRAIN_SECONDS"])
        self.fence()
        for replica in self.to_terminate:
            if replica.pid:
                self.runtime.terminate(replica.pid, replica.replica_id)
        self.pending = True  # a later pass confirms they are gone
