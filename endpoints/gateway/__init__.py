"""The data plane's front door: scoring requests routed to replicas.

``app`` is the WSGI application that answers ``/model-endpoint/…`` and ``/model/…``,
``routing`` the per-process snapshot of routes, tokens and permissions it reads.
"""
