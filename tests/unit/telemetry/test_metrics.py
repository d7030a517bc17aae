"""Metrics as plain values: the latency histogram's buckets and its quantile estimate, as
Prometheus's ``histogram_quantile``; who may scrape /metrics with the metrics token. No
Redis (the counters' way through it: ``tests/integration/telemetry/test_metrics.py``)."""

from __future__ import annotations

import math

import pytest

from endpoints.telemetry import metrics, prometheus


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


@pytest.mark.parametrize("token", ["scrape-secret", "scrape-sécret"])
def test_a_metrics_token_compares_any_text_without_failing(settings, token):
    settings.METRICS = {"TOKEN": token, "LISTEN": ""}
    assert prometheus.scrape_allowed(token, is_admin=False)
    assert not prometheus.scrape_allowed("tökén", is_admin=False)
    assert not prometheus.scrape_allowed("scrape-secret-2", is_admin=False)
