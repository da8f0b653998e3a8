"""Queueing matching, and routing each instrument's matching to one worker.

Services call `enqueue_match_on_commit(instrument_id)`: after the transaction commits, the
match task is sent by name (services never import pricing.tasks; tasks sit on top and call
services). `enqueue_match` never raises: it runs after the order is committed, so a Redis
outage (cache or broker) must not turn into a 500 for an accepted order; the periodic sweep
matches whatever was not queued.

Routing (with Redis): every worker publishes a heartbeat in one Redis hash
(`MATCH_WORKERS_KEY`: hostname -> time). An instrument's matching goes to the live worker that
rendezvous hashing picks for it (highest hash of instrument id and hostname), on that worker's
own direct queue (Celery's worker_direct queue `<hostname>.dq2`), so the same worker keeps the
instrument's book resident. When a worker stops heartbeating for MATCH_WORKER_TTL_SECONDS it
drops out of the hash and its instruments move to the others; while none is known (no Redis,
no heartbeat yet) tasks go to the shared queue, which every worker consumes. Correctness never
depends on routing: the instrument lock serializes workers and a resident book reloads when
another worker matched.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

log = logging.getLogger(__name__)

MATCH_TASK = "pricing.tasks.match_instrument"
MATCH_WORKERS_KEY = "ciyuan:match-workers"


def _workers_key() -> str:
    # Behind the same prefix as the broker's keys, so exchanges sharing one Redis (parallel
    # test runs) never route an instrument to another one's worker.
    prefix = getattr(settings, "REDIS_KEY_PREFIX", "")
    return f"{prefix}:{MATCH_WORKERS_KEY}" if prefix else MATCH_WORKERS_KEY

# While this key exists a match task for the instrument is queued and not yet started, so
# more placements need not queue another one. It only saves work: the task deletes it before
# reading, and the sweep catches anything a lost key or lost task leaves behind.
QUEUED_KEY = "match-queued:{}"

_redis_client = None
_live_cache: tuple[float, list[str]] = (0.0, [])


def _redis():
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _redis_client


def worker_heartbeat(*, hostname: str) -> None:
    """Called by each worker every few seconds (pricing.tasks starts the thread)."""
    if settings.REDIS_URL:
        _redis().hset(_workers_key(), hostname, f"{time.time():.3f}")


def worker_gone(*, hostname: str) -> None:
    if settings.REDIS_URL:
        _redis().hdel(_workers_key(), hostname)


def live_workers() -> list[str]:
    """Hostnames of the workers that heartbeated recently (read at most once a second)."""
    global _live_cache
    if not settings.REDIS_URL:
        return []
    now = time.monotonic()
    if now - _live_cache[0] < 1.0:
        return _live_cache[1]
    try:
        beats = _redis().hgetall(_workers_key())
    except Exception:  # Redis down: the shared queue still works once it is back
        return []
    cutoff = time.time() - settings.MATCH_WORKER_TTL_SECONDS
    live = sorted(h.decode() for h, t in beats.items() if float(t) >= cutoff)
    _live_cache = (now, live)
    return live


def match_owner(*, instrument_id: int, workers: list[str]) -> str | None:
    """The worker that matches this instrument: rendezvous hashing, so a worker joining or
    leaving moves only its own share of instruments."""
    if not workers:
        return None
    return max(workers, key=lambda w: hashlib.blake2b(f"{instrument_id}:{w}".encode(), digest_size=8).digest())


def send_match(instrument_id: int, *, routed: bool = True) -> None:
    """Send the match task by name: to the instrument's owner, or to the shared queue."""
    from celery import current_app
    from celery.utils import worker_direct

    owner = match_owner(instrument_id=instrument_id, workers=live_workers()) if routed else None
    if owner is None:
        current_app.send_task(MATCH_TASK, args=[instrument_id])
    else:
        current_app.send_task(MATCH_TASK, args=[instrument_id], queue=worker_direct(owner))


_suspended = threading.local()


@contextmanager
def match_queueing_suspended() -> Iterator[None]:
    """Send no match task in this thread meanwhile: for a caller that runs the matcher itself
    right after placing (seed_demo's simulated history, hundreds of books matched in-process),
    so the broker is not left a backlog of tasks with nothing to do. Nothing is lost: the
    periodic sweep re-enqueues whatever is still pending."""
    previous = getattr(_suspended, "on", False)
    _suspended.on = True
    try:
        yield
    finally:
        _suspended.on = previous


def enqueue_match(instrument_id: int) -> None:
    """Queue matching (at most one queued task per instrument). Never raises."""
    if getattr(_suspended, "on", False):
        return
    key = QUEUED_KEY.format(instrument_id)
    try:
        if not cache.add(key, 1, timeout=10):
            return
    except Exception:  # cache (Redis) down: queue anyway; a duplicate task is harmless
        log.warning("cache unavailable; queueing match of instrument %s without de-duplication", instrument_id)
    try:
        send_match(instrument_id)
    except Exception:  # broker down: the order is recorded; the sweep will match it
        try:
            cache.delete(key)
        except Exception:
            pass
        log.warning("broker unavailable; instrument %s left for the sweep", instrument_id, exc_info=True)


def enqueue_match_on_commit(instrument_id: int) -> None:
    # Looked up at call time, so tests can record the queueing instead (tests/conftest.py).
    transaction.on_commit(lambda: enqueue_match(instrument_id))
