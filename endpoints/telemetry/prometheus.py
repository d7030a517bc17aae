"""``/metrics`` in the Prometheus text format: a collector that reads, at scrape time, the
totals every gateway process and the worker add to Redis (``metrics``, ``load_reports``,
the reconcile loop's passes, ``inference_tables``' dropped requests) and the replica rows,
so one scrape of any web server process sees the whole installation; nothing is recorded
per request. GPUs are the scraped host's own, where NVML reads them (``gpus``). Names and
labels are docs/observability.md's.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence

from django.conf import settings
from django.db.models import Count
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from endpoints.models import EndpointVersion, InferenceTable, Replica, ReplicaState

from . import gpus, inference_tables, load_reports, metrics

# The classic text format: every Prometheus version reads it (the names need nothing newer).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
VERSION_LABELS = ("endpoint", "version")


def _buckets(bounds: Sequence[float], fields: dict[str, float]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from per-bucket ``h:<index>`` fields."""
    cumulative = 0.0
    pairs = []
    for i, bound in enumerate([*bounds, float("inf")]):
        cumulative += fields.get(f"h:{i}", 0)
        pairs.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return pairs


class ServingCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        versions = list(
            EndpointVersion.objects.values_list("pk", "endpoint__registered_model_name", "version")
        )
        labels = {pk: [name, version] for pk, name, version in versions}
        pks = list(labels)
        totals = metrics.totals(pks)
        in_flight = load_reports.in_flight(pks)

        requests = CounterMetricFamily(
            "serving_ui_requests",
            "Scoring requests answered, by endpoint, version and HTTP status code.",
            labels=[*VERSION_LABELS, "code"],
        )
        duration = HistogramMetricFamily(
            "serving_ui_request_duration_seconds",
            "Time from admission to the answer of scoring requests (rate-limited and "
            "unauthenticated requests left out).",
            labels=VERSION_LABELS,
            unit="",
        )
        rejections = CounterMetricFamily(
            "serving_ui_queue_rejections",
            "Scoring requests refused with 429 because the version's queue or the "
            "endpoint's in-flight limit was full.",
            labels=VERSION_LABELS,
        )
        cold_starts = CounterMetricFamily(
            "serving_ui_cold_starts",
            "Requests that found a version scaled to zero and woke it up.",
            labels=VERSION_LABELS,
        )
        flight = GaugeMetricFamily(
            "serving_ui_requests_in_flight",
            "Scoring requests in flight, summed over gateway processes (reported each second).",
            labels=VERSION_LABELS,
        )
        for pk in pks:
            fields = totals.get(pk, {})
            for key, value in sorted(fields.items()):
                if key.startswith("code:"):
                    requests.add_metric([*labels[pk], key[5:]], value)
            if fields:
                duration.add_metric(
                    labels[pk],
                    _buckets(metrics.LATENCY_BOUNDS, fields),
                    fields.get("latency_ms_sum", 0.0) / 1000,
                )
                rejections.add_metric(labels[pk], fields.get("rejected", 0))
                cold_starts.add_metric(labels[pk], fields.get("cold_starts", 0))
            flight.add_metric(labels[pk], in_flight.get(pk, 0))
        yield from (requests, duration, rejections, cold_starts, flight)
        yield self._replicas(labels)
        yield from self._reconcile()
        yield self._capture_dropped()
        yield from self._gpus()

    def _replicas(self, labels: dict[int, list[str]]) -> Metric:
        family = GaugeMetricFamily(
            "serving_ui_replicas",
            "Replicas by state (Terminated ones are not counted).",
            labels=[*VERSION_LABELS, "state"],
        )
        counts = {
            (row["version_id"], row["state"]): row["n"]
            for row in Replica.objects.exclude(state=ReplicaState.TERMINATED)
            .values("version_id", "state")
            .annotate(n=Count("pk"))
        }
        live = {pk for pk, _ in counts}
        states = [s for s in ReplicaState.values if s != ReplicaState.TERMINATED]
        for pk in sorted(live & labels.keys()):
            for state in states:
                family.add_metric([*labels[pk], state], counts.get((pk, state), 0))
        return family

    def _reconcile(self) -> Iterator[Metric]:
        fields = metrics.reconcile_totals()
        duration = HistogramMetricFamily(
            "serving_ui_reconcile_duration_seconds",
            "Duration of reconcile passes (one endpoint, observe → plan → apply).",
        )
        duration.add_metric(
            [], _buckets(metrics.RECONCILE_BOUNDS, fields), fields.get("seconds_sum", 0.0)
        )
        failures = CounterMetricFamily(
            "serving_ui_reconcile_failures",
            "Reconcile passes that ended with an error.",
            value=fields.get("failures", 0),
        )
        yield duration
        yield failures

    def _capture_dropped(self) -> Metric:
        family = CounterMetricFamily(
            "serving_ui_inference_rows_dropped",
            "Sampled requests left out of an endpoint's inference table, by reason: "
            "queue_full (a web process's capture queue was at its byte budget), "
            "write_failed (writing their Parquet file failed), shutdown (a web process "
            "stopped before it could write them).",
            labels=["endpoint", "reason"],
        )
        names = sorted(
            InferenceTable.objects.values_list("endpoint__registered_model_name", flat=True)
        )
        for name, counts in inference_tables.dropped_counts(names).items():
            for reason, count in counts.items():
                family.add_metric([name, reason], count)
        return family

    def _gpus(self) -> Iterator[Metric]:
        """Only where NVML reads GPUs on this host (``gpus``)."""
        found = gpus.readings()
        if not found:
            return
        used = GaugeMetricFamily(
            "serving_ui_gpu_memory_used_bytes",
            "GPU memory in use, per GPU of the host answering the scrape (NVML).",
            labels=["gpu", "name"],
        )
        total = GaugeMetricFamily(
            "serving_ui_gpu_memory_total_bytes",
            "GPU memory, per GPU of the host answering the scrape (NVML).",
            labels=["gpu", "name"],
        )
        busy = GaugeMetricFamily(
            "serving_ui_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU, 0 to 1 (NVML).",
            labels=["gpu", "name"],
        )
        for reading in found:
            labels = [str(reading.index), reading.name]
            used.add_metric(labels, reading.memory_used_bytes)
            total.add_metric(labels, reading.memory_total_bytes)
            busy.add_metric(labels, reading.utilization)
        yield from (used, total, busy)


_registry = CollectorRegistry(auto_describe=False)
_registry.register(ServingCollector())


def render() -> bytes:
    """The text exposition of every metric (reads the database and Redis)."""
    return generate_latest(_registry)


def scrape_allowed(raw_token: str | None, *, is_admin: bool) -> bool:
    """An admin's access token, or the ``METRICS_TOKEN`` setting, may scrape."""
    if is_admin:
        return True
    expected = settings.METRICS["TOKEN"]
    # As bytes: compare_digest refuses text with non-ASCII characters (a TypeError).
    return bool(
        expected and raw_token and hmac.compare_digest(raw_token.encode(), expected.encode())
    )
