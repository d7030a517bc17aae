"""The rate limit on management calls (scope ``manage``, rate from settings)."""

from __future__ import annotations

import logging

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

log = logging.getLogger(__name__)


class ManageRateThrottle(ScopedRateThrottle):
    def get_rate(self) -> str | None:
        # Read at request time, not import time, so a changed setting applies.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        # The counters live in Redis; Redis being away must not refuse every management
        # call, so the limit is not enforced until it is back.
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            log.warning("rate limit not checked, the cache is unavailable: %s", exc)
            return True
