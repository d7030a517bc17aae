"""The provisioning benchmark (``manage.py bench_provisioning``), for the demo
``iris-classifier`` in an isolated stack started as ``make run`` starts it: enable → READY,
the first request after scale to zero (next to a warm one), a transition of a READY
version under load (every request must succeed) and the unique memory of one more
replica; with replicas forked from a zygote and, as the baseline, spawned
(docs/performance.md, "How to measure").
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from django.core.management.base import CommandError

from .common import MODEL, Bench, run_isolated, wait
from .load import BODY

QUIET_SECONDS = 5
RESULTS_ENV = "SERVING_BENCH_RESULTS"
MODES = ("zygote", "spawn")
# (figure, label, target, unit) in the summary.
TARGETS = (
    ("enable_seconds", "enable → READY (2 versions)", 3.0, "s"),
    ("cold_seconds", "first request after scale to zero", 1.0, "s"),
    ("replica_uss_mib", "unique memory per extra replica (USS)", 100.0, "MiB"),
    ("transition_failed", "failed requests in a transition under load", 0.0, "req"),
)
LOAD_THREADS = 4


def compare_modes(stdout: IO[str], modes: list[str]) -> None:
    """One fresh stack per replica start mode, then both against the targets."""
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="serving-bench-results-") as tmp:
        for mode in modes:
            path = Path(tmp) / f"{mode}.json"
            env = {
                "SERVING_SCALE_TO_ZERO_AFTER_SECONDS": str(QUIET_SECONDS),
                RESULTS_ENV: str(path),
            }
            if mode != "zygote":  # the default
                env["SERVING_REPLICA_START"] = mode
            run_isolated("bench_provisioning", env)
            results[mode] = json.loads(path.read_text())
    summary(stdout.write, results, load_before, os.getloadavg()[0])


def summary(
    say: Callable[[str], object], results: dict[str, dict], load_before: float, load_after: float
) -> None:
    say("")
    say(f"Replica start ({os.cpu_count()} cores; load average {load_before:.1f} at the start,")
    say(f"{load_after:.1f} at the end: above ~1 the machine was busy and figures are slower)")
    say(f"  {'':40} " + " ".join(f"{m:>18}" for m in results) + "   target")
    for key, label, target, unit in TARGETS:
        cells = []
        for mode in results:
            value = results[mode][key]
            verdict = "PASS" if value <= target else "MISS"
            cells.append(f"{value:7.2f} {unit:<3} {verdict}")
        say(f"  {label:40} " + " ".join(f"{c:>18}" for c in cells) + f"   ≤ {target:g} {unit}")
    zygote = results.get("zygote")
    if zygote is None:
        return
    say(
        f"  zygote warm-up after the worker starts   {zygote['warm_up_seconds']:7.2f} s"
        f"   (zygote RSS {zygote['zygote_rss_mib']:.0f} MiB, once per environment)"
    )


class ProvisioningBench(Bench):
    def run(self) -> None:
        try:
            self.say("Preparing: database and the demo iris-classifier in the registry …")
            self.prepare()
            worker_started = time.perf_counter()
            self.port = self.start_product()
            self.results = {"warm_up_seconds": self._wait_for_zygote(worker_started)}
            self._measure()
            self._measure_memory()
            self._write_results()
        finally:
            self.stop()

    def _timeline(self, what: str, since: float) -> None:
        """Where the time went: the events recorded since ``since``, in seconds from it."""
        from endpoints.models import Event

        self.say(f"  {what}: events")
        events = list(
            Event.objects.filter(timestamp__gte=int(since * 1000)).order_by("timestamp", "pk")
        )
        width = max((len(event.type) for event in events), default=0)
        for event in events:
            seconds = event.timestamp / 1000 - since
            self.say(f"    +{seconds:6.2f} s  {event.type:{width}} {event.message}")

    def _wait_for_zygote(self, since: float) -> float:
        """Seconds from the worker's start until its zygote answers (0 in spawn mode): the
        product warms it when it starts, before any endpoint needs it."""
        from django.conf import settings

        from endpoints.provisioning import environments
        from endpoints.runtime import LocalRuntime

        if settings.SERVING["REPLICA_START"] != "zygote":
            return 0.0
        runtime, zygote_dir = LocalRuntime(), str(environments.zygote_dir())
        models = str(environments.models_root())
        wait(
            lambda: runtime.zygote_answers(sys.executable, zygote_dir, models),
            what="the zygote",
            timeout=300,
        )
        return time.perf_counter() - since

    def _measure_memory(self) -> None:
        """USS of each replica once Production runs Medium (two replicas of one version)."""
        import psutil

        from endpoints import services
        from endpoints.models import Replica, ReplicaState
        from endpoints.provisioning import environments
        from endpoints.runtime import LocalRuntime

        services.compute_config_update(
            name=MODEL,
            stage="Production",
            workload_size="Medium",
            scale_to_zero_enabled=False,
            user=self.user,
        )
        running = Replica.objects.filter(
            version__endpoint__registered_model_name=MODEL,
            version__registry_stage="Production",
            state=ReplicaState.RUNNING,
        )
        wait(lambda: running.count() >= 2, what="two Production replicas", timeout=300)
        uss = [_uss_mib(r.pid) for r in running]
        zygotes = LocalRuntime().discover_zygotes(str(environments.zygote_dir()))
        self.results["replica_uss_mib"] = statistics.median(uss)
        # Its resident set: shared with its replicas, so their USS leaves it out.
        self.results["zygote_rss_mib"] = sum(
            psutil.Process(pid).memory_info().rss / 2**20 for pid in zygotes.values()
        )
        self.say(
            f"  USS per replica (Medium)                  {', '.join(f'{u:.0f}' for u in uss)} MiB"
        )

    def _write_results(self) -> None:
        path = os.environ.get(RESULTS_ENV)
        if path:
            Path(path).write_text(json.dumps(self.results))

    def _measure(self) -> None:
        from endpoints import services
        from endpoints.models import EndpointState, Replica, ReplicaState, ServingEndpoint

        user = self.user
        t0, enabled_at = time.perf_counter(), time.time()
        services.endpoint_enable(name=MODEL, user=user)
        wait(
            lambda: (
                ServingEndpoint.objects.get(registered_model_name=MODEL).state
                == EndpointState.READY
            ),
            what="the endpoint",
            timeout=300,
        )
        enable_seconds = time.perf_counter() - t0
        self._timeline("enable", enabled_at)
        warm = statistics.median(self._score_seconds() for _ in range(20))

        services.compute_config_update(
            name=MODEL,
            stage="Production",
            workload_size="Small",
            scale_to_zero_enabled=True,
            user=user,
        )
        live = (ReplicaState.PENDING, ReplicaState.RUNNING, ReplicaState.TERMINATING)
        production = Replica.objects.filter(
            version__endpoint__registered_model_name=MODEL,
            version__registry_stage="Production",
        )
        cold: list[float] = []
        for round_no in range(1, self.options["rounds"] + 1):
            self.say(f"cold start {round_no}/{self.options['rounds']}: waiting for zero …")
            wait(lambda: not production.filter(state__in=live).exists(), what="zero", timeout=120)
            requested_at = time.time()
            cold.append(self._score_seconds(timeout=300))
            self._timeline(f"cold start {round_no}", requested_at)

        with self._load() as load:
            t0 = time.perf_counter()
            services.model_version_transition(
                name=MODEL,
                version="2",
                stage="Production",
                archive_existing_versions=True,
                user=user,
            )
            wait(lambda: self._answers_with_v2(), what="v2 in Production", timeout=300)
            transition_seconds = time.perf_counter() - t0
            load.until(count=load.sent() + 200)  # and a while on v2 alone

        self.results.update(
            enable_seconds=enable_seconds,
            cold_seconds=statistics.median(cold),
            transition_failed=float(load.failed),
        )
        mode = os.environ.get("SERVING_REPLICA_START", "zygote")
        self.say("")
        self.say(f"Provisioning of {MODEL} (local runtime, replicas started by {mode})")
        self.say(f"  enable → READY (2 versions, 1 replica each) {enable_seconds:8.2f} s")
        self.say(f"  v2 (READY in Staging) → Production answers  {transition_seconds:8.2f} s")
        self.say(
            f"  requests during the transition             {load.sent():8d}"
            f"  ({load.failed} failed, {LOAD_THREADS} clients)"
        )
        self.say(
            f"  first request after scale to zero          {statistics.median(cold):8.2f} s"
            f"  (median of {len(cold)}: {', '.join(f'{c:.2f}' for c in cold)})"
        )
        self.say(f"  same request, replica running (baseline)   {warm:8.3f} s")
        self.say(
            f"  cold start / warm request                  {statistics.median(cold) / warm:8.0f}x"
        )

    @contextlib.contextmanager
    def _load(self) -> Iterator[ClientLoad]:
        load = ClientLoad(lambda: self._post(60)[0], threads=LOAD_THREADS)
        try:
            yield load
        finally:
            load.stop()

    def _score_seconds(self, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        status, _ = self._post(timeout)
        if status != 200:
            raise CommandError(f"scoring answered {status}")
        return time.perf_counter() - t0

    def _post(self, timeout: float) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/model-endpoint/{MODEL}/Production/invocations",
            data=BODY.encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()

    def _answers_with_v2(self) -> bool:
        from endpoints.models import StageAlias

        alias = StageAlias.objects.filter(
            endpoint__registered_model_name=MODEL, stage="Production"
        ).first()
        return bool(alias and alias.version.version == "2" and self._post(60)[0] == 200)


class ClientLoad:
    """Clients sending scoring requests back to back until stopped; counts the failures
    (any answer but 200, or no answer)."""

    def __init__(self, send: Callable[[], int], *, threads: int) -> None:
        self._send = send
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self.failed = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                ok = self._send() == 200
            except (OSError, ValueError):  # urllib's HTTPError is an OSError
                ok = False
            with self._lock:
                self._sent += 1
                self.failed += not ok

    def sent(self) -> int:
        with self._lock:
            return self._sent

    def until(self, *, count: int) -> None:
        wait(lambda: self.sent() >= count, what=f"{count} requests", timeout=120)

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=70)


def _uss_mib(pid: int) -> float:
    """Memory only this process holds: shared pages (a zygote's imports) do not count."""
    import psutil

    return psutil.Process(pid).memory_full_info().uss / 2**20
