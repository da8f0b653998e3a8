"""Placing an order enqueues matching of its instrument, after commit, by itself: no test
helper re-enqueues behind it.

First with the on-commit hooks captured (the order path registers exactly one hook, which
queues the instrument; nothing is queued before the commit), then against the real broker:
a committed placement leaves a `match_instrument` message for the instrument in the queue
(Redis with REDIS_URL, else the filesystem broker), read without consuming anyone else's.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache

from marketplace import services
from marketplace.models import Order
from pricing import dispatch
from tests import factories
from tests.reliability.procs import broker_key

MATCH_TASK = "pricing.tasks.match_instrument"


@pytest.mark.django_db
def test_placing_registers_one_on_commit_hook_that_queues_the_instrument(
    buyer, provider, instrument, _matching_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as hooks:
        order = factories.place(provider, instrument, "sell", 2, "1.20")
    # Recorded, not yet queued: the matcher must not see an uncommitted order.
    assert Order.objects.filter(pk=order.pk, pending_match=True).exists()
    assert _matching_queue == []
    assert len(hooks) == 1
    hooks[0]()
    assert _matching_queue == [instrument.pk]


@pytest.mark.django_db
def test_placing_through_the_api_queues_matching(
    buyer, buyer_api, instrument, _matching_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = buyer_api.post(
            "/api/v1/orders",
            {"instrument": instrument.symbol, "side": "buy", "quantity": 1_000_000, "price": "1.00"},
            format="json",
        )
    assert r.status_code == 201, r.content
    assert _matching_queue == [instrument.pk]


@pytest.mark.django_db
def test_a_refused_placement_queues_nothing(instrument, _matching_queue, django_capture_on_commit_callbacks):
    poor = factories.AccountFactory(is_buyer=True)
    factories.fund(poor, Decimal("1.00"))
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(services.ServiceError):
        factories.place(poor, instrument, "buy", 10, "1.00")
    assert _matching_queue == []
    assert not Order.objects.filter(account=poor, status="open").exists()


# --- the real broker ------------------------------------------------------------------------


def _redis_messages() -> list[tuple[bytes, dict]]:
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [(raw, json.loads(raw)) for raw in client.lrange(broker_key("celery"), 0, -1)]


def _file_messages() -> list[tuple[Path, dict]]:
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    out = []
    for path in folder.glob("*.msg"):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):  # taken by a worker meanwhile
            continue
    return out


def _queued_matches(instrument_id: int) -> list:
    """Handles of the queued match_instrument messages for `instrument_id` (peeked, not taken)."""
    messages = _redis_messages() if settings.REDIS_URL else _file_messages()
    found = []
    for handle, msg in messages:
        if msg.get("headers", {}).get("task") != MATCH_TASK:
            continue
        args, _kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        if args == [instrument_id]:
            found.append(handle)
    return found


def _drop(handles: list) -> None:
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        for raw in handles:
            client.lrem(broker_key("celery"), 1, raw)
    else:
        for path in handles:
            path.unlink(missing_ok=True)


# `workers`: conftest leaves enqueue_match real (no worker is started here, so the message
# stays in the queue to be read). transaction=True: the placement really commits.
@pytest.mark.workers
@pytest.mark.django_db(transaction=True)
def test_a_committed_placement_leaves_a_match_message_in_the_broker(catalog, monkeypatch):
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    inst = factories.open_instrument(tier="batch", region="eu-central-1")
    # enqueue_match skips queueing while its de-duplication key ("match-queued:<id>", 10 s)
    # exists: one left by an earlier test with the same instrument id must not hide ours.
    cache.delete(f"match-queued:{inst.pk}")
    # No worker runs here: a heartbeat left by an earlier test's worker (within its TTL) would
    # route the message to that worker's own queue instead of the shared one read below.
    monkeypatch.setattr(dispatch, "live_workers", lambda: [])
    before = _queued_matches(inst.pk)
    factories.place(provider, inst, "sell", 1, "1.20")
    after = _queued_matches(inst.pk)
    try:
        assert len(after) == len(before) + 1, "placing an order queued no match_instrument message"
    finally:
        _drop([h for h in after if h not in before])
