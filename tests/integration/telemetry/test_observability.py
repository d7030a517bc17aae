"""What operators and their tools read: ``/metrics`` after real traffic through the real
front door (two web server processes, a real replica), parsed by prometheus_client's own
parser, and ``/healthz`` and ``/readyz`` while Redis or the Celery worker is stopped.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from endpoints import registry
from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess, free_port
from endpoints.kv import bump_generation
from endpoints.models import ServingEndpoint
from endpoints.runtime import ReplicaSpec, get_runtime
from tests.support import iris
from tests.support.rows import add_version
from tests.support.stack import serve_product, wait_for

# The rows are written by hand here: the reconcile loop must not correct them meanwhile.
pytestmark = pytest.mark.usefixtures("reconcile_paused")

MODEL = "iris-classifier"
BAD = {"foo": 1}  # not one of the scoring formats: the replica answers 400


@pytest.fixture(scope="module")
def replica(demo_registry, tmp_path_factory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("metrics-replica")
    model = registry.download_model(MODEL, "1", root / "model")
    runtime = get_runtime()
    port = free_port()
    spec = ReplicaSpec(
        replica_id=f"metrics-{uuid.uuid4().hex[:6]}",
        model_path=str(model),
        host="127.0.0.1",
        port=port,
        log_path=str(root / "replica.log"),
        python=sys.executable,
    )
    pid = runtime.start(spec)
    try:
        wait_for(lambda: runtime.probe("127.0.0.1", port), timeout=120, what="replica")
        yield ("127.0.0.1", port)
    finally:
        runtime.stop(pid, spec.replica_id, grace_seconds=2)


def scrape(base: str, token: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted labels: value}}`` of one scrape, as Prometheus parses it."""
    response = requests.get(
        base + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_metrics_count_the_requests_sent_by_code_across_web_processes(
    transactional_db, web_server, replica, owner, admin_user, make_token
):
    endpoint = ServingEndpoint.objects.create(
        registered_model_name=MODEL, creator=owner, state="READY"
    )
    add_version(endpoint, "1", "Production", replicas=[replica])
    bump_generation()
    token, admin = make_token(owner), make_token(admin_user)
    ids = {"endpoint": MODEL, "version": "1"}
    before = scrape(web_server, admin)

    url = f"{web_server}/model-endpoint/{MODEL}/Production/invocations"
    headers = {"Authorization": f"Bearer {token}"}
    sent = {"200": 0, "400": 0}
    # New connections each time: the kernel spreads them over both web server processes.
    for i in range(30):
        bad = i % 5 == 4
        response = requests.post(url, json=BAD if bad else iris.SPLIT, headers=headers, timeout=30)
        code = str(response.status_code)
        assert code == ("400" if bad else "200"), response.text
        sent[code] += 1
    # A request for a model nobody serves never reaches a version: not counted.
    requests.post(url.replace(MODEL, "no-such-model"), json=iris.SPLIT, headers=headers, timeout=30)

    def flushed() -> dict | None:
        now = scrape(web_server, admin)
        counted = sum(
            value(now, "serving_ui_requests_total", **ids, code=c)
            - value(before, "serving_ui_requests_total", **ids, code=c)
            for c in sent
        )
        return now if counted >= sum(sent.values()) else None

    after = wait_for(flushed, timeout=20, what="the gateway processes' flushed counters")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for code, count in sent.items():
        assert delta("serving_ui_requests_total", **ids, code=code) == count
    assert delta("serving_ui_request_duration_seconds_count", **ids) == 30
    assert delta("serving_ui_request_duration_seconds_bucket", **ids, le="+Inf") == 30
    assert delta("serving_ui_request_duration_seconds_sum", **ids) > 0
    # Buckets are cumulative: each at most the next.
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for labels, v in after["serving_ui_request_duration_seconds_bucket"].items()
        if dict(labels)["endpoint"] == MODEL and dict(labels)["version"] == "1"
    )
    assert all(a[1] <= b[1] for a, b in pairwise(buckets))
    assert value(after, "serving_ui_requests_in_flight", **ids) == 0
    assert value(after, "serving_ui_replicas", **ids, state="Running") == 1
    assert value(after, "serving_ui_replicas", **ids, state="Pending") == 0
    assert "serving_ui_reconcile_duration_seconds_count" in after
    assert "serving_ui_reconcile_failures_total" in after


def test_metrics_need_an_admin_or_the_metrics_token(
    transactional_db, web_server, owner, admin_user, make_token
):
    url = web_server + "/metrics"
    assert requests.get(url, timeout=10).status_code == 401
    bad = requests.get(url, headers={"Authorization": "Bearer sui_nope"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["error_code"] == "UNAUTHENTICATED"
    member = requests.get(url, headers={"Authorization": f"Bearer {make_token(owner)}"}, timeout=10)
    assert member.status_code == 403 and member.json()["error_code"] == "PERMISSION_DENIED"
    admin = requests.get(
        url, headers={"Authorization": f"Bearer {make_token(admin_user)}"}, timeout=10
    )
    assert admin.status_code == 200


@pytest.fixture(scope="module")
def separate_metrics(django_db_setup, redis_server, stack_log_dir) -> Iterator[tuple[str, str]]:
    port = free_port()
    env = {"METRICS_LISTEN": f"127.0.0.1:{port}", "METRICS_TOKEN": "scrape-secret"}
    for base in serve_product("web-metrics-listen", stack_log_dir, workers=1, env=env):
        yield base, f"http://127.0.0.1:{port}"


def test_metrics_listen_serves_them_on_their_own_address_only(separate_metrics):
    public, private = separate_metrics
    on_public = requests.get(
        public + "/metrics", headers={"Authorization": "Bearer scrape-secret"}, timeout=10
    )
    assert on_public.status_code == 404
    answer = requests.get(private + "/metrics", timeout=30)
    assert answer.status_code == 200
    names = {f.name for f in text_string_to_metric_families(answer.text)}
    assert {"serving_ui_requests", "serving_ui_replicas"} <= names


# --- health ----------------------------------------------------------------------------------


class Stack:
    """Redis, a Celery worker (no beat: it must not reconcile the shared database) and a
    web server of their own, so that stopping them disturbs no other test."""

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.root = root
        self.log_dir = log_dir
        self.url = f"redis://127.0.0.1:{free_port()}/0"
        self.env = {"REDIS_URL": self.url}
        self.redis: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None

    def start_redis(self) -> None:
        self.redis = devstack.start_redis(self.url, self.root / "redis", self.log_dir, timeout=20)

    def start_worker(self) -> None:
        name = f"hb-{uuid.uuid4().hex[:6]}"
        command = [sys.executable, "-m", "celery", "-A", "serving_ui", "worker", "-l", "INFO"]
        command += ["--concurrency", "1", "--hostname", f"{name}@%h"]
        self.worker = ManagedProcess(name, command, self.log_dir, env=self.env).start()
        self.worker.wait_until(
            lambda: " ready." in self.worker.output(), timeout=60, what="celery worker"
        )


@pytest.fixture(scope="module")
def own_stack(django_db_setup, tmp_path_factory) -> Iterator[tuple[Stack, str]]:
    root = tmp_path_factory.mktemp("readyz")
    stack = Stack(root, root)
    stack.start_redis()
    stack.start_worker()
    try:
        for base in serve_product("web-readyz", root, workers=1, env=stack.env):
            yield stack, base
    finally:
        devstack.stop_all([p for p in (stack.worker, stack.redis) if p is not None])


def readyz(base: str) -> requests.Response:
    return requests.get(base + "/readyz", timeout=10)


def until(base: str, status: int, what: str) -> dict:
    """The body of the first /readyz answer with ``status``."""
    seen: list[str] = []

    def answered() -> dict | None:
        response = readyz(base)
        seen[:] = [response.text]
        return response.json() if response.status_code == status else None

    try:
        return devstack.wait_for(answered, timeout=40, what=what)
    except devstack.WaitTimeout:
        pytest.fail(f"/readyz never answered {status} ({what}); last: {seen}")


def test_readyz_follows_the_worker_and_redis(own_stack):
    stack, base = own_stack
    up = wait_for(lambda: (r := readyz(base)).status_code == 200 and r, timeout=30, what="ready")
    body = up.json()
    assert body["status"] == "ready" and body["failed"] == []
    assert body["database"]["ok"] and body["redis"]["ok"] and body["worker"]["workers"] == 1
    assert requests.get(base + "/healthz", timeout=10).json() == {"status": "ok"}

    # The worker stops: its heartbeat is withdrawn, /readyz names it.
    stack.worker.stop()
    down = until(base, 503, "worker stopped")
    assert down["failed"] == ["worker"]
    assert "heartbeat" in down["worker"]["error"]

    stack.start_worker()
    until(base, 200, "worker started again")

    # Redis stops: /readyz names it (the heartbeats live there, so the worker's check fails
    # with it); /healthz still answers, without I/O.
    stack.redis.stop()
    down = until(base, 503, "Redis stopped")
    assert "redis" in down["failed"]
    assert "Redis" in down["redis"]["error"]
    assert down["database"]["ok"]
    assert requests.get(base + "/healthz", timeout=10).status_code == 200

    stack.start_redis()
    until(base, 200, "Redis started again")


def test_health_paths_take_get_only(own_stack):
    _, base = own_stack
    response = requests.post(base + "/healthz", timeout=10)
    assert response.status_code == 405
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert response.headers["Allow"] == "GET, HEAD"
