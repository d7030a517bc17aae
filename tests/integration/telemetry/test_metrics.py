"""Unit tests of what /metrics, /readyz and the charts are built from: the histogram's
quantile estimate, a gateway process's counters reaching the Redis totals and the
collector, the worker heartbeat, /metrics access rules, and the charts' downsampling.
Real Redis and database; no web server."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from endpoints import kv
from endpoints.gateway.ops import answer
from endpoints.gateway.reporting import LoadTracker, send_reports
from endpoints.gateway.scoring import Gateway
from endpoints.models import ReplicaState, ServingEndpoint
from endpoints.telemetry import metrics, prometheus, readiness
from endpoints.web import charts
from tests.support.rows import add_replica, add_version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]


def forget(version_pk: int) -> None:
    """Another test's version may have had the same primary key."""
    client = kv.redis_client()
    client.delete(kv.metrics_totals_key(version_pk), kv.load_key(version_pk))
    for key in client.scan_iter(kv.metrics_pattern(version_pk)):
        client.delete(key)


# --- the histogram ----------------------------------------------------------------------------


def test_latency_buckets_include_their_upper_bound():
    assert metrics.latency_bucket(0.0) == 0
    assert metrics.latency_bucket(1.0) == 0  # le="0.001"
    assert metrics.latency_bucket(1.01) == 1
    assert metrics.latency_bucket(60_000.0) == len(metrics.LATENCY_BOUNDS) - 1
    assert metrics.latency_bucket(60_001.0) == len(metrics.LATENCY_BOUNDS)  # +Inf


def test_quantile_interpolates_like_histogram_quantile():
    bounds = (1.0, 2.0, 4.0)
    # 10 in (0, 1], 30 in (1, 2], 0 in (2, 4], 0 above.
    counts = [10, 30, 0, 0]
    assert metrics.quantile(0.25, counts, bounds) == 1.0
    assert metrics.quantile(0.5, counts, bounds) == pytest.approx(1 + 10 / 30)
    assert metrics.quantile(0.1, counts, bounds) == pytest.approx(0.4)
    # A rank in +Inf: the highest finite bound, as Prometheus answers.
    assert metrics.quantile(0.99, [0, 0, 0, 5], bounds) == 4.0
    assert math.isnan(metrics.quantile(0.5, [0, 0, 0, 0], bounds))
    assert metrics.percentiles_ms([0] * 16) == {
        "latency_ms_p50": None,
        "latency_ms_p95": None,
        "latency_ms_p99": None,
    }


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


@pytest.mark.parametrize("token", ["scrape-secret", "scrape-sécret"])
def test_a_metrics_token_compares_any_text_without_failing(settings, token):
    settings.METRICS = {"TOKEN": token, "LISTEN": ""}
    assert prometheus.scrape_allowed(token, is_admin=False)
    assert not prometheus.scrape_allowed("tökén", is_admin=False)
    assert not prometheus.scrape_allowed("scrape-secret-2", is_admin=False)


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


# --- charts --------------------------------------------------------------------------------------


def test_steps_add_buckets_up_and_carry_the_replica_count():
    raw = [
        (100, {"requests": 3, "errors": 1, "latency_ms_max": 5.0, "h:2": 3, "replicas": 2}),
        (110, {"requests": 1, "latency_ms_max": 9.0, "h:4": 1}),
        (150, {"requests": 2, "h:2": 2}),
    ]
    grouped = charts.steps(raw, start=100, end=190, step=30, replicas=1)
    assert [s for s, _ in grouped] == [100, 130, 160]
    first, second, third = (d for _, d in grouped)
    assert first["requests"] == 4 and first["errors"] == 1 and first["latency_ms_max"] == 9.0
    assert first["h:2"] == 3 and first["h:4"] == 1 and first["replicas"] == 2
    assert second["requests"] == 2 and second["replicas"] == 2
    assert third == {"replicas": 2}


def test_a_chart_breaks_its_line_where_values_are_missing():
    chart = charts.chart(
        "Latency",
        "latency",
        [0, 10, 20, 30, 40],
        [charts.Series("p50", "s1", [1, 2, None, 4, None])],
    )
    line = chart["lines"][0]
    assert len(line["segments"]) == 1 and len(line["segments"][0].split()) == 2
    assert len(line["dots"]) == 1  # the lone point at 30
    assert line["last"] == 4
    assert chart["y_labels"][-1]["text"] == "5"  # a round maximum above 4
    replicas = charts.chart(
        "Replicas", "replicas", [0, 10], [charts.Series("n", "s2", [1, 1])], integer=True
    )
    assert [label["text"] for label in replicas["y_labels"]] == ["0", "1"]
