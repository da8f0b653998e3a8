"""Price protection: an order far from its book's last trade is refused unless confirmed.

The reference price is the one the market snapshot publishes after every change of the book
(marketplace.market_snapshot.reference_price_get); the band is the tier's `price_band`.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace import order_terms, services
from marketplace.errors import ServiceError
from marketplace.market_snapshot import reference_price_get, snapshot_publish
from marketplace.models import Order, Tier
from metering.models import LedgerEntry
from pricing.services import instrument_match
from tests import factories

pytestmark = pytest.mark.django_db


def _trade_at(instrument, buyer, provider, price: str) -> None:
    """One trade at `price`, then the snapshot publication the matcher does after commit."""
    factories.place(provider, instrument, "sell", 1, price)
    factories.place(buyer, instrument, "buy", 1, price)
    instrument_match(instrument_id=instrument.pk)
    snapshot_publish(instrument_id=instrument.pk)


def test_band_limits_are_on_the_tick_and_inside_the_band():
    low, high = order_terms.price_band_limits(reference=Decimal("2.00"), band=Decimal("0.25"), tick_size=Decimal("0.01"))
    assert (low, high) == (Decimal("1.50"), Decimal("2.50"))
    low, high = order_terms.price_band_limits(reference=Decimal("1.33"), band=Decimal("0.25"), tick_size=Decimal("0.01"))
    assert (low, high) == (Decimal("1.00"), Decimal("1.66"))  # 0.9975 up, 1.6625 down
    # A band of 100% or more leaves only the tick as the low end.
    low, _ = order_terms.price_band_limits(reference=Decimal("1.00"), band=Decimal("2"), tick_size=Decimal("0.01"))
    assert low == Decimal("0.01")


def test_a_book_that_never_traded_has_no_band(buyer, instrument):
    assert reference_price_get(instrument_id=instrument.pk) is None
    order = factories.place(buyer, instrument, "buy", 1, "90.00")
    assert order.pk


def test_the_last_trade_becomes_the_reference(buyer, provider, instrument):
    _trade_at(instrument, buyer, provider, "2.00")
    assert reference_price_get(instrument_id=instrument.pk) == Decimal("2.00")


def test_an_order_outside_the_band_is_refused_and_writes_nothing(buyer, provider, instrument):
    _trade_at(instrument, buyer, provider, "2.00")
    orders, entries = Order.objects.count(), LedgerEntry.objects.count()
    for side, account, price in (("buy", buyer, "2.51"), ("buy", buyer, "1.49"), ("sell", provider, "20.00")):
        with pytest.raises(ServiceError) as err:
            factories.place(account, instrument, side, 1, price)
        assert err.value.code == "price_out_of_band" and err.value.status == 422 and err.value.field == "price"
        assert "1.50 to 2.50" in err.value.message
    assert (Order.objects.count(), LedgerEntry.objects.count()) == (orders, entries)
    # The edges are inside.
    factories.place(buyer, instrument, "buy", 1, "2.50")
    factories.place(buyer, instrument, "buy", 1, "1.50")


def test_an_override_places_it_anyway(buyer, provider, instrument):
    _trade_at(instrument, buyer, provider, "2.00")
    order = factories.place(buyer, instrument, "buy", 1, "9.00", price_band_override=True)
    assert Order.objects.filter(pk=order.pk, price=Decimal("9.00")).exists()


def test_the_band_is_the_tiers_and_zero_turns_it_off(buyer, provider, instrument):
    _trade_at(instrument, buyer, provider, "2.00")
    Tier.objects.filter(pk=instrument.tier_id).update(price_band=Decimal("0.50"))
    instrument.tier.refresh_from_db()
    factories.place(buyer, instrument, "buy", 1, "2.99")
    with pytest.raises(ServiceError):
        factories.place(buyer, instrument, "buy", 1, "3.01")
    Tier.objects.filter(pk=instrument.tier_id).update(price_band=Decimal("0"))
    instrument.tier.refresh_from_db()
    factories.place(buyer, instrument, "buy", 1, "30.00")


def test_the_api_refuses_with_price_out_of_band_and_takes_the_override(buyer, provider, instrument, buyer_api):
    _trade_at(instrument, buyer, provider, "2.00")
    body = {"instrument": instrument.symbol, "side": "buy", "quantity": 1_000_000, "price": "7.50"}
    before = Order.objects.count()
    r = buyer_api.post("/api/v1/orders", body, format="json")
    assert r.status_code == 422, r.content
    err = r.json()["error"]
    assert err["code"] == "price_out_of_band" and "price" in err["fields"]
    assert Order.objects.count() == before
    r = buyer_api.post("/api/v1/orders", {**body, "price_band_override": True}, format="json")
    assert r.status_code == 201, r.content
    assert Order.objects.get(pk=r.json()["id"]).price == Decimal("7.50")
    r = buyer_api.post("/api/v1/orders", {**body, "price_band_override": "maybe"}, format="json")
    assert r.status_code == 400


def test_every_door_shares_the_check(buyer, provider, instrument):
    """Management commands and admin place through order_place; the check is in it."""
    _trade_at(instrument, buyer, provider, "2.00")
    with pytest.raises(ServiceError, match="price band"):
        services.order_place(
            account=buyer, instrument=instrument, side="buy", quantity=instrument.lot_size, price=Decimal("0.50")
        )
