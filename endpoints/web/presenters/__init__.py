"""What each page shows: plain functions that turn domain objects into template context.
Views parse the request and pass what they read from it as keyword arguments; nothing
here looks at the request. Reads go through selectors, the registry, logs and metrics.

- ``model``: every model page's header and badge, the Details tab;
- ``serving``: the Serving tab and its panels; ``traffic``: its Traffic and Inference
  table panels; ``compute``: the Compute Settings panel's limits, autoscaling and
  workload types;
- ``access``: permissions, tokens and service principals.
"""

from .access import permissions, principals, tokens
from .model import badge, model_detail, model_header, serving_url
from .serving import input_example, invoke_result, serving, serving_off

__all__ = [
    "badge",
    "input_example",
    "invoke_result",
    "model_detail",
    "model_header",
    "permissions",
    "principals",
    "serving",
    "serving_off",
    "serving_url",
    "tokens",
]
