"""Market snapshots: after matching, cancels and expiry the published snapshot equals a fresh
aggregation of the orders and trades, and reads are served from it without a query.

These tests commit (transactional_db) so that publishing, which runs on commit, happens.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from marketplace import services as market
from marketplace.market_snapshot import snapshot_build, snapshot_get
from pricing.services import instrument_match
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def _figures(snap) -> dict:
    figures = dataclasses.asdict(snap)
    figures.pop("built_at")
    return figures


def _assert_published_equals_fresh(instrument_id: int, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):  # published, so no rebuild and no query
        published = snapshot_get(instrument_id=instrument_id)
    assert _figures(published) == _figures(snapshot_build(instrument_id=instrument_id))


def test_the_snapshot_follows_matching_cancels_and_expiry(django_assert_num_queries):
    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer = factories.AccountFactory(is_buyer=True, is_provider=False)
    factories.fund(buyer, Decimal("100000.00"))
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)

    # A book on both sides, some of it crossing: trades, partial fills and resting levels.
    sells = [factories.place(provider, inst, "sell", lots, price) for lots, price in ((3, "1.20"), (2, "1.10"), (4, "1.30"))]
    factories.place(provider, inst, "sell", 1, "1.10", hardware="h200")
    buys = [factories.place(buyer, inst, "buy", lots, price) for lots, price in ((2, "1.00"), (1, "0.95"), (3, "1.15"))]
    instrument_match(instrument_id=inst.pk)
    snap = snapshot_get(instrument_id=inst.pk)
    assert snap.trades and snap.last_price == Decimal("1.10") and snap.volume_24h > 0
    assert snap.best_bid == Decimal("1.00") and snap.best_ask == Decimal("1.20")
    _assert_published_equals_fresh(inst.pk, django_assert_num_queries)

    market.order_cancel(account=buyer, order_id=buys[0].pk)
    assert snapshot_get(instrument_id=inst.pk).best_bid == Decimal("0.95")
    _assert_published_equals_fresh(inst.pk, django_assert_num_queries)

    market.order_cancel(account=provider, order_id=sells[0].pk)
    assert snapshot_get(instrument_id=inst.pk).best_ask == Decimal("1.30")
    _assert_published_equals_fresh(inst.pk, django_assert_num_queries)

    market.instrument_close(instrument_id=inst.pk)
    snap = snapshot_get(instrument_id=inst.pk)
    assert snap.bids == [] and snap.asks == [] and snap.trades
    _assert_published_equals_fresh(inst.pk, django_assert_num_queries)


def test_the_book_endpoint_and_the_instruments_list_read_the_snapshot(django_assert_num_queries):
    factories.seed_catalog()
    inst = factories.open_instrument()
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.place(provider, inst, "sell", 2, "1.25")
    instrument_match(instrument_id=inst.pk)
    api = APIClient()
    api.get(f"/api/v1/instruments/{inst.symbol}/book")  # fills the catalog cache
    with django_assert_num_queries(0):
        book = api.get(f"/api/v1/instruments/{inst.symbol}/book").json()
    assert book["asks"] == [{"price": "1.25", "quantity": 2 * inst.lot_size, "orders": 1, "hardware": {"h100": 2 * inst.lot_size}}]
    assert book["best_ask"] == "1.25" and book["bids"] == []

    listed = api.get("/api/v1/instruments", {"tier": "standard", "region": "cn-west-1", "delivery_date": inst.delivery_date})
    rows = {r["symbol"]: r for r in listed.json()["results"]}
    assert rows[inst.symbol]["best_ask"] == "1.25"


def test_a_missing_snapshot_is_rebuilt_by_the_reader():
    from django.core.cache import cache

    factories.seed_catalog()
    inst = factories.open_instrument()
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.place(provider, inst, "sell", 1, "1.40")
    instrument_match(instrument_id=inst.pk)
    cache.clear()  # Redis restarted, or a publish was lost
    assert snapshot_get(instrument_id=inst.pk).best_ask == Decimal("1.40")


def test_the_matcher_publishes_from_its_resident_book_without_aggregating(django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer = factories.AccountFactory(is_buyer=True, is_provider=False)
    factories.fund(buyer, Decimal("100000.00"))
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.place(provider, inst, "sell", 3, "1.20")
    factories.place(provider, inst, "sell", 2, "1.25", hardware="h200")
    factories.place(buyer, inst, "buy", 1, "1.00")
    instrument_match(instrument_id=inst.pk)  # loads the resident book and its trade tape

    # Later batches reuse both: the snapshot is built in memory, and still equals a fresh
    # aggregation, trades and 24-hour volume included.
    for lots, price in ((1, "1.20"), (3, "1.25"), (1, "0.90")):
        factories.place(buyer, inst, "buy", lots, price)
        with CaptureQueriesContext(connection) as ctx:
            instrument_match(instrument_id=inst.pk)
        assert not [q["sql"] for q in ctx.captured_queries if "GROUP BY" in q["sql"]]
        assert not [q["sql"] for q in ctx.captured_queries if 'FROM "marketplace_trade"' in q["sql"]]
        _assert_published_equals_fresh(inst.pk, django_assert_num_queries)
    snap = snapshot_get(instrument_id=inst.pk)
    assert snap.volume_24h == 4 * inst.lot_size and len(snap.trades) == 3
    assert snap.best_bid == Decimal("1.00") and snap.best_ask == Decimal("1.25")


def test_the_tape_volume_rolls_off_after_24_hours():
    import datetime as dt

    from django.utils import timezone

    from marketplace.market_snapshot import MarketTape, SnapshotTrade

    factories.seed_catalog()
    inst = factories.open_instrument()
    tape = MarketTape(instrument_id=inst.pk)
    now = timezone.now()

    def batch(at, *quantities):
        tape.add([SnapshotTrade(Decimal("1.00"), q, "h100", "buy", i, at) for i, q in enumerate(quantities)])

    batch(now - dt.timedelta(hours=25), 7)
    batch(now - dt.timedelta(hours=2), 3, 4)
    batch(now - dt.timedelta(hours=2) + dt.timedelta(microseconds=1), 5)  # same bucket
    batch(now, 1)
    assert tape.volume_24h(now) == 13
    assert tape.volume_24h(now + dt.timedelta(hours=23)) == 1
    assert [t.quantity for t in tape.trades] == [7, 3, 4, 5, 1]
