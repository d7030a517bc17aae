"""Provisioning: the reconcile loop that makes running replicas match the desired state.

``reconcile`` holds the entry points (one endpoint, all endpoints, shutdown) under a
``lease`` (the Redis lock) and ``converge`` one pass (its state in ``passes``), which reads
state (``observe``, into the plain values of ``snapshot``), decides with pure functions
(``health`` for each replica, ``plan`` for versions, ``plan_serving`` for pointers, splits,
retiring and the endpoint, ``sizing`` and ``autoscale`` for replica counts) and executes
the resulting ``actions`` (``apply``, with ``replicas`` for rows and processes).
``housekeeping`` stops orphan processes, rotates logs and applies retention;
``environments`` downloads models and builds their environments.
"""
