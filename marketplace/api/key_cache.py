"""API keys from a per-process cache: authentication without a query per request.

An entry is the active ApiKey (with its account) for the SHA-256 of a raw bearer string. The
entries are dropped whenever the "api_keys" generation moves (marketplace.cache_generation),
which this process checks at most once every REVALIDATE_SECONDS: a key revoked anywhere is
refused by every process within that time, and by the revoking process at once. An entry also
lives at most ENTRY_TTL_SECONDS, which bounds how stale its account's flags (buyer, provider)
can be. Unknown and revoked keys are not cached: they cost the lookup every time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from django.utils import timezone

from marketplace.cache_generation import API_KEYS, caching_allowed, generation_current, generation_listen
from marketplace.models import ApiKey
from marketplace.services import api_key_authenticate

REVALIDATE_SECONDS = 1.0
ENTRY_TTL_SECONDS = 60.0
TOUCH_EVERY = dt.timedelta(minutes=1)  # as api_key_authenticate: last_used_at at most once a minute

_entries: dict[str, tuple[ApiKey, float]] = {}
_state = {"generation": None, "checked_at": float("-inf")}


def key_cache_clear() -> None:
    _entries.clear()
    _state["generation"], _state["checked_at"] = None, float("-inf")


generation_listen(name=API_KEYS, clear=key_cache_clear)


def api_key_cached(*, raw: str) -> ApiKey | None:
    """The active key for a raw bearer string, or None; like api_key_authenticate, cached."""
    if not caching_allowed():
        return api_key_authenticate(raw=raw)
    now = time.monotonic()
    if now - _state["checked_at"] >= REVALIDATE_SECONDS:
        # Read the generation before any row: a revocation committed after the row is read
        # moves the generation past the one this entry is kept under.
        generation = generation_current(name=API_KEYS)
        if generation != _state["generation"]:
            _entries.clear()
            _state["generation"] = generation
        _state["checked_at"] = now
    digest = hashlib.sha256(raw.encode()).hexdigest()
    hit = _entries.get(digest)
    if hit is not None and now - hit[1] < ENTRY_TTL_SECONDS:
        key = hit[0]
        wall = timezone.now()
        if key.last_used_at is None or wall - key.last_used_at > TOUCH_EVERY:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=wall)
            key.last_used_at = wall
        return key
    key = api_key_authenticate(raw=raw)
    if key is not None:
        wall = timezone.now()
        if key.last_used_at is None or wall - key.last_used_at > TOUCH_EVERY:
            key.last_used_at = wall  # api_key_authenticate has just written it
        _entries[digest] = (key, now)
    else:
        _entries.pop(digest, None)
    return key
