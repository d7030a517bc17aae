"""Paced load on one scoring URL, for tests that change what serves it (a rollout, a killed
replica or worker, a lost node) and then read every answer it got."""

from __future__ import annotations

import threading
import time

import requests

from tests.support.stack import wait_for

# A one-row body the tests' constant models answer (and the iris model refuses: 400).
BODY = {"dataframe_records": [{"x": 1}]}


class Load:
    """About ``rate`` requests/s to ``name``'s ``selector`` URL from ``threads`` clients
    until stopped; keeps every answer as ``(status, first prediction or error text)``, a
    request that got no answer as ``(0, the error)``."""

    def __init__(
        self, base: str, token: str, name: str, selector: str, *, rate: float = 50, threads=1
    ) -> None:
        self.url = f"{base}/model-endpoint/{name}/{selector}/invocations"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.interval = threads / rate
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        next_at = time.monotonic()
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    response = session.post(self.url, json=BODY, headers=self.headers, timeout=60)
                    value = response.json().get("predictions", [None])[0] if response.ok else ""
                    self.answers.append((response.status_code, value or response.text))
                except requests.RequestException as exc:
                    self.answers.append((0, repr(exc)))
                # Paced, not as fast as answers come: what a client does, on a machine the
                # replicas share with the test.
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def count(self) -> int:
        return len(self.answers)

    def wait_for_more(self, count: int, what: str, timeout: float = 60) -> None:
        """Wait until ``count`` more answers than now have come."""
        seen = self.count()
        wait_for(lambda: self.count() >= seen + count, timeout=timeout, what=what)

    def wait_for_only(self, value: str, what: str, timeout: float = 30) -> None:
        """Wait until more than 20 answers have come since now and the last 10 are all
        ``value`` (once gateways route to the new version, every answer is its)."""
        seen = len(self.answers)
        wait_for(
            lambda: (
                len(self.answers) > seen + 20
                and all(answer == value for _, answer in self.answers[-10:])
            ),
            timeout=timeout,
            what=what,
        )

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
