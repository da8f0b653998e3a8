"""Generation counters: how a per-process cache learns that what it holds changed elsewhere.

A change that a cache must not outlive (an API key revoked, the catalog edited) bumps its
generation in the database, in the transaction of the change, so the bump commits exactly
when the change does. On commit the new value is published to the shared Django cache (Redis
when REDIS_URL is set) and this process's caches are dropped at once. A reader compares the
published value with the one its entries were built under; if the published value is missing
(Redis restarted, or a publish was lost and expired: it is kept PUBLISH_TTL seconds) it reads
the database row and publishes it again, so a lost publish delays invalidation by at most
PUBLISH_TTL seconds, never forever.

Caches built on this never fill inside an atomic block (`caching_allowed`): a row read there
may be rolled back. Inside one they may serve what was built outside, while the published
generation still matches (`generation_published`, which never publishes a value read inside
the transaction); a bump in the same transaction drops them at once, so the transaction reads
its own edit from the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import F

from .models import CacheGeneration

log = logging.getLogger(__name__)

API_KEYS = "api_keys"
CATALOG = "catalog"
PUBLISH_TTL = 10  # seconds

_listeners: dict[str, list[Callable[[], None]]] = {API_KEYS: [], CATALOG: []}


def _cache_key(name: str) -> str:
    return f"generation:{name}"


def generation_listen(*, name: str, clear: Callable[[], None]) -> None:
    """Register a process-local cache to drop when `name` is bumped from this process."""
    _listeners[name].append(clear)


def generation_bump(*, name: str) -> None:
    """Bump `name` in the current transaction (or its own, outside one)."""
    with transaction.atomic():
        if not CacheGeneration.objects.filter(name=name).update(value=F("value") + 1):
            CacheGeneration.objects.get_or_create(name=name)
            CacheGeneration.objects.filter(name=name).update(value=F("value") + 1)
        value = CacheGeneration.objects.values_list("value", flat=True).get(name=name)
    for clear in _listeners[name]:
        clear()  # now, for reads later in this transaction; and again after commit

    def publish() -> None:
        for clear in _listeners[name]:
            clear()
        try:
            cache.set(_cache_key(name), value, PUBLISH_TTL)
        except Exception:  # the value expires elsewhere within PUBLISH_TTL; see the module doc
            log.exception("could not publish generation %s=%s", name, value)

    transaction.on_commit(publish)


def generation_current(*, name: str) -> int:
    """The published generation of `name` (the database's if none is published)."""
    try:
        value = cache.get(_cache_key(name))
    except Exception:
        log.exception("could not read generation %s from the cache; reading the database", name)
        value = None
    if value is not None:
        return value
    value = CacheGeneration.objects.filter(name=name).values_list("value", flat=True).first() or 0
    try:
        cache.add(_cache_key(name), value, PUBLISH_TTL)
    except Exception:
        log.exception("could not publish generation %s", name)
    return value


def generation_published(*, name: str) -> int | None:
    """The published generation, or None if none is (or the cache cannot be read); never reads
    or publishes the database's value, so it is safe inside a transaction."""
    try:
        return cache.get(_cache_key(name))
    except Exception:
        return None


def caching_allowed() -> bool:
    return not connection.in_atomic_block
