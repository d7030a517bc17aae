"""What /metrics and /readyz are built from: a gateway process's counters reaching the
Redis totals and the collector, the requests the capture left out counted by reason, the
worker heartbeat, /metrics access rules. Real Redis and database; no web server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from endpoints import kv
from endpoints.gateway.capture import Capture
from endpoints.gateway.ops import answer
from endpoints.gateway.reporting import LoadTracker, send_reports
from endpoints.gateway.scoring import Gateway
from endpoints.models import InferenceTable, ReplicaState, ServingEndpoint
from endpoints.telemetry import inference_tables, metrics, prometheus, readiness
from tests.support.capture import ROW_BYTES, offer
from tests.support.rows import add_replica, add_version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]


def forget(version_pk: int) -> None:
    """Another test's version may have had the same primary key."""
    client = kv.redis_client()
    client.delete(kv.metrics_totals_key(version_pk), kv.load_key(version_pk))
    for key in client.scan_iter(kv.metrics_pattern(version_pk)):
        client.delete(key)


# --- a gateway process's counters → Redis totals → the collector --------------------------------


@pytest.fixture
def version(owner):
    endpoint = ServingEndpoint.objects.create(
        registered_model_name="obs-model", creator=owner, state="READY"
    )
    v = add_version(endpoint, "3", "Production")
    forget(v.pk)
    return v


def scrape() -> dict[str, dict[tuple, float]]:
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(prometheus.render().decode()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def labels(**extra: str) -> tuple:
    return tuple(sorted({"endpoint": "obs-model", "version": "3", **extra}.items()))


def test_counted_requests_reach_the_collector_by_code_with_rejections(version):
    tracker = LoadTracker()
    for status, latency_ms in ((200, 3.0), (200, 30.0), (400, 2.0), (503, 700.0), (429, 1.0)):
        assert tracker.admit(version.pk, limit=10)
        tracker.finish(version.pk, status, latency_ms)
    tracker.reject(version.pk)  # the endpoint's limit
    for _ in range(2):
        assert tracker.admit(version.pk, limit=2)
    assert not tracker.admit(version.pk, limit=2)  # the version's queue
    send_reports(tracker)
    add_replica(version, ("127.0.0.1", 20002))
    add_replica(version, ("127.0.0.1", 20003), state=ReplicaState.PENDING)

    samples = scrape()
    requests = samples["serving_ui_requests_total"]
    assert requests[labels(code="200")] == 2
    assert requests[labels(code="400")] == 1
    assert requests[labels(code="503")] == 1
    assert requests[labels(code="429")] == 1
    # The histogram leaves the 429 out.
    assert samples["serving_ui_request_duration_seconds_count"][labels()] == 4
    buckets = samples["serving_ui_request_duration_seconds_bucket"]
    assert buckets[labels(le="0.0025")] == 1
    assert buckets[labels(le="0.005")] == 2
    assert buckets[labels(le="0.05")] == 3
    assert buckets[labels(le="1.0")] == 4
    assert buckets[labels(le="+Inf")] == 4
    assert samples["serving_ui_request_duration_seconds_sum"][labels()] == pytest.approx(0.735)
    assert samples["serving_ui_queue_rejections_total"][labels()] == 2
    assert samples["serving_ui_requests_in_flight"][labels()] == 2
    replicas = samples["serving_ui_replicas"]
    assert replicas[labels(state="Running")] == 1
    assert replicas[labels(state="Pending")] == 1
    assert replicas[labels(state="Error")] == 0


def test_cold_starts_count_one_per_wake_up(version):
    from endpoints.telemetry import load_reports

    load_reports.clear_wake(version.pk)
    load_reports.request_wake(version.pk, version.endpoint_id)
    load_reports.request_wake(version.pk, version.endpoint_id)  # a second request waiting
    assert scrape()["serving_ui_cold_starts_total"][labels()] == 1
    load_reports.clear_wake(version.pk)


def test_reconcile_passes_are_a_histogram_with_failures(monkeypatch, redis_server):
    # A key of this test's own: a worker left running by another test shares this Redis
    # and records its passes in the installation's key meanwhile.
    key = f"{kv.RECONCILE_TOTALS_KEY}:test-{uuid.uuid4().hex}"
    monkeypatch.setattr(kv, "RECONCILE_TOTALS_KEY", key)
    before = scrape()
    metrics.record_reconcile_pass(0.03, failed=False)
    metrics.record_reconcile_pass(2.0, failed=True)
    after = scrape()

    def delta(name: str, **lab: str) -> float:
        key = tuple(sorted(lab.items()))
        return after[name].get(key, 0) - before.get(name, {}).get(key, 0)

    assert delta("serving_ui_reconcile_duration_seconds_count") == 2
    assert delta("serving_ui_reconcile_duration_seconds_bucket", le="0.05") == 1
    assert delta("serving_ui_reconcile_duration_seconds_bucket", le="2.5") == 2
    assert delta("serving_ui_reconcile_failures_total") == 1
    redis_server.delete(key)


# --- requests the capture left out, by reason ---------------------------------------------------


@pytest.fixture
def table_dir(tmp_path, settings):
    settings.SERVING = {
        **settings.SERVING,
        "INFERENCE_DIR": tmp_path / "inference",
        "CAPTURE_QUEUE_BYTES": 10 * ROW_BYTES,
    }
    return tmp_path / "inference"


def test_requests_left_out_are_counted_by_endpoint_and_reason_in_metrics(table_dir, owner):
    name = f"drops-{uuid.uuid4().hex[:8]}"
    endpoint = ServingEndpoint.objects.create(registered_model_name=name, creator=owner)
    InferenceTable.objects.create(endpoint=endpoint, enabled=True)
    kv.redis_client().delete(kv.capture_dropped_key(name))
    capture = Capture(writer=False)
    for i in range(12):  # 2 over the budget
        offer(capture, i=i, endpoint=name)
    table_dir.mkdir(parents=True)
    inference_tables.table_dir(name).write_text("a file where the table's directory should be")
    capture.flush()  # 10 rows fail to write
    capture.close()  # and one offered afterwards is lost at shutdown
    offer(capture, endpoint=name)
    capture.close()

    assert inference_tables.dropped_counts([name]) == {
        name: {"queue_full": 2, "write_failed": 10, "shutdown": 1}
    }
    assert inference_tables.dropped(name) == 13
    samples = {
        tuple(sorted(s.labels.items())): s.value
        for family in prometheus_families()
        if family.name == "serving_ui_inference_rows_dropped"
        for s in family.samples
    }
    for reason, count in (("queue_full", 2), ("write_failed", 10), ("shutdown", 1)):
        assert samples[(("endpoint", name), ("reason", reason))] == count


def prometheus_families():
    from prometheus_client.parser import text_string_to_metric_families

    return text_string_to_metric_families(prometheus.render().decode())


# --- /metrics access, /healthz, /readyz ------------------------------------------------------


def ask(path: str, authorization: str | None = None, method: str = "GET"):
    return asyncio.run(answer(Gateway(), path, method, authorization))


@override_settings(METRICS={"TOKEN": "scrape-secret", "LISTEN": ""})
def test_metrics_token_admins_and_nobody_else(transactional_db, admin_user, owner, make_token):
    # (transactional: the token is looked up from another thread, as the front door does)
    assert ask("/metrics", "Bearer scrape-secret").status == 200
    assert ask("/metrics", f"Bearer {make_token(admin_user)}").status == 200
    assert ask("/metrics", f"Bearer {make_token(owner)}").status == 403
    assert ask("/metrics", "Bearer scrape-secrets").status == 401
    assert ask("/metrics").status == 401


@override_settings(METRICS={"TOKEN": "", "LISTEN": ""})
def test_an_empty_metrics_token_matches_nothing():
    assert ask("/metrics", "Bearer ").status == 401


def test_healthz_answers_without_io():
    assert ask("/healthz").status == 200
    assert ask("/healthz", method="POST").status == 405


def test_worker_heartbeat_counts_only_fresh_beats():
    kv.redis_client().delete(kv.WORKER_HEARTBEATS_KEY)
    assert not readiness.check_worker()["ok"]
    readiness.beat("old@host", at=1000.0)
    assert not readiness.check_worker(now=1000.0 + readiness.HEARTBEAT_TTL_SECONDS + 1)["ok"]
    readiness.beat("new@host")
    check = readiness.check_worker()
    assert check == {"ok": True, "workers": 1}
    readiness.forget("new@host")
    assert not readiness.check_worker()["ok"]
