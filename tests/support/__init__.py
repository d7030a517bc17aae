"""What the tests share, as plain modules (conftest files only define fixtures):

- ``stack``: waiting, and starting the product's processes (worker, web server) for a test;
- ``rows``: endpoint versions and replicas written as the reconcile loop leaves them;
- ``api``: what the API's error answers look like;
- ``models``: tiny registered models (a constant answer, one that cannot load, a gated one);
- ``deployment``: the reliability suite's shared deployment and one deployment per test;
- ``plan``: observed state as plain values for the reconcile plan's tests;
- ``hostile``, ``sockets``, ``ui_sender``: a hostile model, a process's TCP sockets, the
  Serving tab's Send Request without a browser.
"""
