import logging

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

log = logging.getLogger(__name__)


class FailOpenMixin:
    """Counters live in the cache (Redis). If the cache is unreachable the request is let
    through: refusing every order because a rate counter is down would turn a Redis outage
    into an exchange outage, while the database still protects every invariant."""

    def get_rate(self):
        # Read per request (DRF binds THROTTLE_RATES at import), so overrides apply.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception:  # redis.ConnectionError, TimeoutError, ...: any cache failure
            log.warning("throttle cache unavailable; request allowed", exc_info=True)
            return True


class ApiKeyRateThrottle(FailOpenMixin, SimpleRateThrottle):
    """Per API key; the rate is settings REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']['api_key']."""

    scope = "api_key"

    def get_cache_key(self, request, view):
        if request.auth is None or not hasattr(request.auth, "prefix"):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.prefix}


class AnonymousRateThrottle(FailOpenMixin, SimpleRateThrottle):
    scope = "anonymous"

    def get_cache_key(self, request, view):
        if request.auth is not None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
