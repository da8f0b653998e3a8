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


class SlidingWindowRateThrottle(SimpleRateThrottle):
    """DRF's rate ("6000/min") counted in O(1) per request: a counter per fixed window, and the
    estimate of the last `duration` seconds is the current window's count plus the previous
    window's, weighted by how much of it is still inside those seconds (the sliding window
    counter). DRF's own SimpleRateThrottle keeps a list of every request's time in the cache and
    reads and rewrites it per request, which at thousands of requests a minute is the costliest
    part of a cheap request and loses counts when two requests of a key race. On Redis the
    count is one round trip (INCR, EXPIRE and GET of the previous window in one pipeline);
    a refused request is not counted."""

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        now = self.timer()
        window = self.duration
        index, into = divmod(now, window)
        current_key, previous_key = f"{self.key}:{int(index)}", f"{self.key}:{int(index) - 1}"
        current, previous = self._count(current_key, previous_key, ttl=2 * window)
        weight = 1 - into / window
        if previous * weight + current <= self.num_requests:
            return True
        self.cache.decr(current_key)  # a refused request does not count
        self._wait = self._seconds_until_allowed(current - 1, previous, into, window)
        return False

    def _count(self, current_key: str, previous_key: str, *, ttl: int) -> tuple[int, int]:
        redis_client = getattr(self.cache, "redis_client", None)
        if redis_client is not None:
            make = self.cache.make_and_validate_key
            pipe = redis_client().pipeline(transaction=False)
            # A key per window, so a TTL that is reset on every INCR still ends two windows
            # after its window does.
            pipe.incr(make(current_key))
            pipe.expire(make(current_key), ttl)
            pipe.get(make(previous_key))
            current, _, previous = pipe.execute()
            return int(current), int(previous or 0)
        self.cache.add(current_key, 0, ttl)
        return self.cache.incr(current_key), int(self.cache.get(previous_key) or 0)

    def _seconds_until_allowed(self, current: int, previous: int, into: float, window: int) -> float:
        """When one more request fits: later in this window as the previous one's weight falls,
        or in the next window as this one's does."""
        limit = self.num_requests
        if current < limit and previous > 0:
            return max(0.0, (1 - (limit - current) / previous) * window - into)
        next_share = 1 - (limit - 1) / current if current > 0 else 0.0
        return (window - into) + max(0.0, next_share) * window

    def wait(self):
        # A hint, capped at the rate's period (the estimate is approximate past it).
        return min(float(self.duration), max(1.0, self._wait))


class ApiKeyRateThrottle(FailOpenMixin, SlidingWindowRateThrottle):
    """Per API key; the rate is settings REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']['api_key']."""

    scope = "api_key"

    def get_cache_key(self, request, view):
        if request.auth is None or not hasattr(request.auth, "prefix"):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.prefix}


class AnonymousRateThrottle(FailOpenMixin, SlidingWindowRateThrottle):
    scope = "anonymous"

    def get_cache_key(self, request, view):
        if request.auth is not None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
