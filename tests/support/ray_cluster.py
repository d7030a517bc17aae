"""What the Ray cluster tests hold: the 2-node cluster on this machine, and the product's
worker and web server running replicas there (``SERVING_RUNTIME=ray``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from endpoints.dev.devstack import ManagedProcess
from tests.support.stack import start_worker


@dataclass
class RayStack:
    cluster: object
    other_node: object
    env: dict[str, str]
    base: str
    worker: ManagedProcess
    log_dir: Path

    def kill_worker(self) -> None:
        self.worker.kill()

    def start_new_worker(self) -> None:
        self.worker = start_worker(self.log_dir, "cluster-worker-2", self.env)
