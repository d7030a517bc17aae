"""The benchmarks ``make bench`` runs; ``manage.py bench``, ``bench_provisioning``,
``bench_batching``, ``bench_limits`` and ``bench_cluster`` are their entry points.

- ``common``: the isolated stack each runs in and the product's processes started there as
  ``make run`` starts them; models enabled through the product's service.
- ``load``, ``client``: request bodies, timed runs, and the clients' own interpreter
  (``python -m endpoints.bench.client``); ``report``: the tables.
- ``scoring`` (with ``traffic_paths``), ``provisioning``, ``batching``, ``noisy``,
  ``cluster``: one benchmark each.
"""
