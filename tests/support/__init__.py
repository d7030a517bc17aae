"""What the tests share, as plain modules (conftest files only define fixtures):

- ``stack``: waiting, and the product's processes for a test (worker, web server), held
  still or stopped; ``serving``: an endpoint's observed state, a scoring request;
- ``rows``: endpoint versions and replicas written as the reconcile loop leaves them;
  ``plan``: the reconcile plan's input as plain values; ``api``: the API's error answers;
- ``models``: tiny registered models (a constant, one that cannot load, a gated one) and
  copies of the demo iris model; ``iris``: its columns and one-row body;
- ``load``: paced load on a scoring URL; ``deployment``: the reliability suite's shared
  deployment and one per test; ``canary``: a server that must see no request;
- ``capture``: requests offered to the gateway's capture; ``front_door``: one request
  through the front door's app in process; ``upstream``: closing a client's kept
  connections to replicas;
- ``browser``, ``ray_cluster``, ``hostile``, ``sockets``, ``ui_sender``: driving chromium,
  the Ray cluster's stack, a hostile model, a process's TCP sockets, the Serving tab's Send
  Request without a browser.
"""
