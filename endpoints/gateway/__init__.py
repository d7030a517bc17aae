"""The data plane: scoring requests routed to replicas.

- ``server``: the web server process (single-worker uvicorn processes on one socket);
- ``connection``: each HTTP/1.1 connection (deadlines for every head and body, JSON
  answers to heads uvicorn refuses, a lingering close after early answers);
- ``bodies``: each route's body limit, judged from the head, and the process's budget
  of body bytes;
- ``front``: the front door, the ASGI application on the public port: scoring URLs are
  answered on the event loop, everything else goes to Django;
- ``scoring``: the scoring path the front door and the web UI's request sender share
  (path, token, permission, answers), and ``invoke`` for that sender without JavaScript;
- ``browser``: the UI's Send Request on the scoring URLs: a session and its CSRF token
  instead of a token;
- ``routing``: the per-process snapshot of routes, tokens and permissions it reads;
  ``routing_table``: which replicas answer each URL, read from the database;
  ``split``: weighted versions in it; ``watcher``: Redis pushes that it changed;
- ``admission``: each endpoint's and version's limits, and holding requests while a
  version wakes;
- ``upstream``: what forwarding to a replica means (one request, one answer, when a
  second replica may be tried); ``upstream_async`` does it from the event loop,
  ``upstream_blocking`` from threads, both over pooled keep-alive connections;
- ``capture``: sampled requests queued for the inference tables, written by a thread;
- ``transport``: what the production settings ask of scoring answers (hosts, HTTPS);
- ``reporting``: in-flight counters, and the thread that reports load, metrics and
  token use;
- ``ops``: ``/healthz``, ``/readyz`` and ``/metrics``, answered on the event loop.
"""
