"""What the installation reports about itself, read by the autoscaler, the API, the UI and
Prometheus:

- ``load_reports``: requests in flight per version (the gateway writes, the autoscaler
  reads) and wake-ups of versions scaled to zero;
- ``metrics``: per-version request metrics in 10-second buckets and running totals;
- ``prometheus``: ``/metrics``, a collector over those totals, replica rows and the
  reconcile loop's passes;
- ``readiness``: ``/readyz``'s checks and the heartbeat each Celery worker keeps;
- ``logs``: service and build logs, read through the runtime;
- ``inference_tables``: captured requests on disk (Parquet by endpoint and day);
- ``gpus``: GPU memory and utilisation through NVML, where it is present.
"""
