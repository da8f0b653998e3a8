"""Quotes equal what an immediate IOC order of the same size fills through the DB matcher;
the suggested listing price explains itself and respects the floor."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from marketplace.models import Order, Trade
from pricing.quote import instrument_quote, instrument_suggested_price
from pricing.services import auction_open, instrument_match
from tests import factories
from tests.conftest import api_client_for
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db
D = Decimal
HW = ["h100", "b200", "mi300x"]
_days = itertools.count(1)


def _fresh_instrument():
    # A new order book per example: hypothesis examples share one test transaction.
    return factories.open_instrument(day=timezone.now().date() + dt.timedelta(days=next(_days)))


def _account(buyer=True, provider=False):
    acct = factories.AccountFactory(is_buyer=buyer, is_provider=provider)
    if buyer:
        factories.fund(acct, D("100000.00"))
    return acct


resting = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell"]),
        st.integers(0, 3),  # which account (3 = the quoting trader itself)
        st.integers(95, 110),  # price in cents
        st.integers(1, 3),  # lots
        st.sampled_from(HW),
        st.lists(st.sampled_from(HW), max_size=2, unique=True),
    ),
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    book=resting,
    side=st.sampled_from(["buy", "sell"]),
    lots=st.integers(1, 8),
    allowed=st.lists(st.sampled_from(HW), max_size=2, unique=True),
    hardware=st.sampled_from(HW),
)
def test_property_quote_equals_what_an_ioc_order_fills(catalog, book, side, lots, allowed, hardware):
    inst = _fresh_instrument()
    trader = _account(buyer=True, provider=True)
    accounts = [_account(True, True), _account(True, True), _account(True, True), trader]
    for s, who, cents, n, hw, allow in book:
        price = f"{D(cents) / 100:.2f}"
        if s == "sell":
            factories.place(accounts[who], inst, "sell", n, price, hardware=hw)
        else:
            factories.place(accounts[who], inst, "buy", n, price, allowed_hardware=allow)
    instrument_match(instrument_id=inst.pk)

    kw = {"allowed_hardware": allowed} if side == "buy" else {"hardware": hardware}
    quote = instrument_quote(instrument=inst, side=side, quantity=lots * 1_000_000, account_id=trader.pk, **kw)

    limit = "99.00" if side == "buy" else "0.01"
    order = factories.place(trader, inst, side, lots, limit, time_in_force="ioc", **kw)
    instrument_match(instrument_id=inst.pk)
    order.refresh_from_db()
    fills = Trade.objects.filter(**{f"{side}_order": order}).order_by("match_sequence")
    assert order.filled_quantity == quote.fillable_quantity
    assert _merged(fills) == [(lv.price, lv.quantity, lv.hardware) for lv in quote.levels]
    if fills:
        value = sum(t.price * t.quantity for t in fills)
        avg = (value / order.filled_quantity).quantize(D("0.0001"), rounding=ROUND_HALF_EVEN)
        assert quote.average_price == avg
        worst = max(t.price for t in fills) if side == "buy" else min(t.price for t in fills)
        assert quote.worst_price == worst
    else:
        assert quote.average_price is None and quote.worst_price is None
    assert quote.complete == (order.filled_quantity == order.quantity)
    assert_invariants()


def _merged(fills):
    out = []
    for t in fills:
        if out and out[-1][0] == t.price and out[-1][2] == t.hardware.code:
            out[-1] = (t.price, out[-1][1] + t.quantity, t.hardware.code)
        else:
            out.append((t.price, t.quantity, t.hardware.code))
    return out


def test_quote_walks_levels_and_reports_average_and_worst(instrument, provider):
    factories.place(provider, instrument, "sell", 2, "1.00", hardware="h100")
    factories.place(provider, instrument, "sell", 3, "1.10", hardware="b200")
    factories.place(provider, instrument, "sell", 5, "1.20", hardware="h100")
    instrument_match(instrument_id=instrument.pk)
    q = instrument_quote(instrument=instrument, side="buy", quantity=6_000_000)
    # 2 @ 1.00 + 3 @ 1.10 + 1 @ 1.20 = 6.50 for 6M -> 1.0833
    assert (q.fillable_quantity, q.average_price, q.best_price, q.worst_price) == (
        6_000_000,
        D("1.0833"),
        D("1.00"),
        D("1.20"),
    )
    assert q.notional == D("6.50") and q.complete
    only_h100 = instrument_quote(instrument=instrument, side="buy", quantity=10_000_000, allowed_hardware=["h100"])
    assert (only_h100.fillable_quantity, only_h100.stopped_by) == (7_000_000, "book_exhausted")
    limited = instrument_quote(instrument=instrument, side="buy", quantity=6_000_000, limit=D("1.10"))
    assert (limited.fillable_quantity, limited.stopped_by) == (5_000_000, "limit")


def test_quote_api(instrument, provider, buyer):
    factories.place(provider, instrument, "sell", 2, "1.00", hardware="h100")
    instrument_match(instrument_id=instrument.pk)
    api = APIClient()
    url = f"/api/v1/instruments/{instrument.symbol}/quote"
    r = api.get(url, {"side": "buy", "quantity": 3_000_000, "allowed_hardware": "h100,b200"})
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["fillable_quantity"] == 2_000_000 and body["complete"] is False
    assert body["average_price"] == "1.00" and body["levels"] == [
        {"price": "1.00", "quantity": 2_000_000, "hardware": "h100"}
    ]
    # The provider's own key: its sell is its own, so self-trade prevention stops the walk.
    factories.fund(provider, D("1000.00"))
    provider.is_buyer = True
    provider.save()
    r = api_client_for(provider).get(url, {"side": "buy", "quantity": 1_000_000})
    assert r.json()["fillable_quantity"] == 0 and r.json()["stopped_by"] == "self_trade_prevented"
    assert Order.objects.count() == 1  # a quote places nothing


@pytest.mark.parametrize(
    "params, code",
    [
        ({"side": "buy"}, "invalid_parameter"),
        ({"side": "buy", "quantity": "many"}, "invalid_parameter"),
        ({"side": "buy", "quantity": 1_500_000}, "invalid_lot"),
        ({"side": "hold", "quantity": 1_000_000}, "invalid_side"),
        ({"side": "sell", "quantity": 1_000_000}, "hardware_required"),
        ({"side": "buy", "quantity": 1_000_000, "allowed_hardware": "h999"}, "unknown_hardware"),
        ({"side": "buy", "quantity": 1_000_000, "price": "NaN"}, "invalid_parameter"),
    ],
)
def test_quote_refuses_bad_parameters(instrument, params, code):
    r = APIClient().get(f"/api/v1/instruments/{instrument.symbol}/quote", params)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_quote_during_the_call_auction_is_409(instrument):
    auction_open(instrument=instrument)
    r = APIClient().get(f"/api/v1/instruments/{instrument.symbol}/quote", {"side": "buy", "quantity": 1_000_000})
    assert r.status_code == 409 and r.json()["error"]["code"] == "instrument_in_call_auction"


def test_suggested_price_moves_toward_demand_and_explains_itself(catalog, buyer, provider):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    other = _account(buyer=False, provider=True)
    # A trade at 2.00 (buy-initiated, 1 lot), then resting bids of 3 lots near 2.00 and no asks.
    factories.place(other, inst, "sell", 1, "2.00", hardware="h100")
    factories.place(buyer, inst, "buy", 1, "2.00")
    factories.place(buyer, inst, "buy", 3, "1.95")
    instrument_match(instrument_id=inst.pk)
    s = instrument_suggested_price(instrument=inst, hardware="h100")
    # Reference: 24h VWAP 2.00. Demand 3 + 1 = 4 lots, supply 0: imbalance +1 -> +5% -> 2.10.
    assert (s.reference_source, s.reference_price, s.imbalance, s.suggested_price) == (
        "vwap_24h",
        D("2.0000"),
        D("1.0000"),
        D("2.10"),
    )
    assert s.floor is not None and s.suggested_price >= s.floor
    assert len(s.reasoning) >= 2 and "VWAP" in s.reasoning[0]


def test_suggested_price_never_goes_below_the_floor(catalog, provider):
    inst = factories.open_instrument(tier="frontier", region="eu-central-1")
    other = _account(buyer=False, provider=True)
    factories.place(other, inst, "sell", 5, "0.50", hardware="h100")  # far below the h100 floor here
    instrument_match(instrument_id=inst.pk)
    s = instrument_suggested_price(instrument=inst, hardware="h100")
    assert s.reference_source == "floor"  # no trade, no bid: no market price to start from
    assert s.suggested_price == s.floor and any("floor" in line for line in s.reasoning)
    r = APIClient().get(f"/api/v1/instruments/{inst.symbol}/suggested-price", {"hardware": "h100"})
    assert r.status_code == 200 and D(r.json()["suggested_price"]) == s.floor
    r = APIClient().get(f"/api/v1/instruments/{inst.symbol}/suggested-price")
    assert r.status_code == 400 and r.json()["error"]["code"] == "hardware_required"
