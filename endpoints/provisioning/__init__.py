"""Provisioning: the reconcile loop that makes running replicas match the desired state.

``reconcile`` holds the entry points (one endpoint, all endpoints, shutdown), ``autoscale``
the pure sizing rules and ``environments`` the model download and per-model environments.
"""
