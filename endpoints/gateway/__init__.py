"""The data plane: scoring requests routed to replicas.

- ``app``: the front door, the WSGI application that answers ``/model-endpoint/…`` and
  ``/model/…`` (path, token, permission, the answer written back);
- ``routing``: the per-process snapshot of routes, tokens and permissions it reads;
- ``admission``: each version's queue limit, and holding requests while a version wakes;
- ``upstream``: pooled keep-alive connections to replicas, forwarding, one retry;
- ``reporting``: in-flight counters, and the thread that reports load, metrics and
  token use.
"""
