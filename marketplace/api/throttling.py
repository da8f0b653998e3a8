import logging

from django.conf import settings
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

log = logging.getLogger(__name__)


def client_address(request) -> str | None:
    """The client's address: REMOTE_ADDR, or with settings.TRUSTED_PROXY_COUNT = n proxies in
    front, the address the outermost of them appended to X-Forwarded-For (what a client puts
    there itself is further left and ignored). The rule DRF applies with NUM_PROXIES."""
    remote = request.META.get("REMOTE_ADDR")
    count = settings.TRUSTED_PROXY_COUNT
    xff = request.META.get("HTTP_X_FORWARDED_FOR")
    if not count or not xff:
        return remote
    addrs = [a.strip() for a in xff.split(",")]
    return addrs[-min(count, len(addrs))] or remote


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
