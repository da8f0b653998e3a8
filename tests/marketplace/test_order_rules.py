"""Order rules without a test before: the status-transition guard, `not_a_buyer`, and placing
after the delivery period on an instrument the sweep has not closed yet."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace import services
from marketplace.models import (
    ORDER_TRANSITIONS,
    Instrument,
    InvalidTransition,
    Order,
    OrderStatus,
    check_transition,
)
from metering.models import LedgerEntry
from metering.selectors import balances_get
from pricing.services import instrument_match
from tests import factories
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

S = OrderStatus
# The life of an order (PRODUCT.md §3), written out here rather than read from the code:
# live orders fill, part-fill, cancel or expire; only a new order is rejected; the four
# terminal states never move again.
ALLOWED = {
    (S.OPEN, S.PARTIALLY_FILLED), (S.OPEN, S.FILLED), (S.OPEN, S.CANCELLED), (S.OPEN, S.EXPIRED), (S.OPEN, S.REJECTED),
    (S.PARTIALLY_FILLED, S.PARTIALLY_FILLED), (S.PARTIALLY_FILLED, S.FILLED), (S.PARTIALLY_FILLED, S.CANCELLED),
    (S.PARTIALLY_FILLED, S.EXPIRED),
}  # fmt: skip


def state() -> tuple:
    return sorted(Order.objects.values_list("id", "status", "filled_quantity")), LedgerEntry.objects.count()


@pytest.mark.parametrize("current", S.values)
@pytest.mark.parametrize("new", S.values)
def test_the_status_guard_allows_exactly_the_documented_moves(current, new):
    if (current, new) in ALLOWED or current == new:
        check_transition(current, new)  # staying put is not a move
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, new)


def test_the_transition_table_has_no_move_out_of_a_terminal_state():
    for terminal in (S.FILLED, S.CANCELLED, S.EXPIRED, S.REJECTED):
        assert ORDER_TRANSITIONS[terminal] == frozenset()


def test_a_filled_order_cannot_be_cancelled_and_keeps_its_status_and_escrow(buyer, provider, instrument):
    factories.place(provider, instrument, "sell", 2, "1.00")
    buy = factories.place(buyer, instrument, "buy", 2, "1.00")
    instrument_match(instrument_id=instrument.pk)
    buy.refresh_from_db()
    assert buy.status == S.FILLED
    before, balances = state(), balances_get(account=buyer)
    with pytest.raises(services.ServiceError) as exc:
        services.order_cancel(account=buyer, order_id=buy.pk)
    assert exc.value.code == "order_not_cancellable"
    assert state() == before and balances_get(account=buyer) == balances
    # Through the API too: a clear 409, nothing changed.
    r = api_client_for(buyer).post(f"/api/v1/orders/{buy.pk}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "order_not_cancellable"
    assert state() == before


def test_a_cancelled_order_cannot_be_cancelled_twice(buyer, instrument):
    buy = factories.place(buyer, instrument, "buy", 2, "1.00")
    services.order_cancel(account=buyer, order_id=buy.pk)
    before, balances = state(), balances_get(account=buyer)
    assert balances["escrow"] == Decimal("0.00")
    with pytest.raises(services.ServiceError) as exc:
        services.order_cancel(account=buyer, order_id=buy.pk)
    assert exc.value.code == "order_not_cancellable"
    assert state() == before and balances_get(account=buyer) == balances


def test_an_account_that_is_not_a_buyer_cannot_place_a_buy(provider, instrument):
    factories.fund(provider, Decimal("1000.00"))
    before, balances = state(), balances_get(account=provider)
    with pytest.raises(services.ServiceError) as exc:
        factories.place(provider, instrument, "buy", 1, "1.00")
    assert (exc.value.code, exc.value.status) == ("not_a_buyer", 403)
    r = api_client_for(provider).post(
        "/api/v1/orders",
        {"instrument": instrument.symbol, "side": "buy", "quantity": 1_000_000, "price": "1.00"},
        format="json",
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_buyer"
    assert state() == before and balances_get(account=provider) == balances
    # The same account may still sell: the refusal is about the role, not the account.
    factories.place(provider, instrument, "sell", 1, "1.00")


@pytest.fixture
def ended(catalog):
    """An instrument still marked open whose delivery period ended a minute ago (the sweep that
    closes it has not run yet)."""
    now = timezone.now()
    inst = factories.open_instrument(
        tier="standard", region="cn-east-1", day=now.date(),
        delivery_start=now - dt.timedelta(hours=3), delivery_end=now - dt.timedelta(minutes=1),
    )  # fmt: skip
    assert inst.status == Instrument.Status.OPEN
    return inst


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_placing_after_delivery_end_on_a_still_open_instrument_is_refused(ended, side, monkeypatch):
    acct = factories.AccountFactory(is_buyer=True, is_provider=True)
    factories.fund(acct, Decimal("1000.00"))
    before, balances = state(), balances_get(account=acct)
    with pytest.raises(services.ServiceError) as exc:
        factories.place(acct, ended, side, 1, "1.00")
    assert (exc.value.code, exc.value.status) == ("instrument_not_open", 409)
    body = {"instrument": ended.symbol, "side": side, "quantity": 1_000_000, "price": "1.00"}
    if side == "sell":
        body["hardware"] = "h100"
    r = api_client_for(acct).post("/api/v1/orders", body, format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "instrument_not_open"
    assert state() == before and balances_get(account=acct) == balances
    ended.refresh_from_db()
    assert ended.status == Instrument.Status.OPEN


def test_the_delivery_end_is_the_last_moment_excluded(ended):
    acct = factories.AccountFactory(is_buyer=True)
    factories.fund(acct, Decimal("1000.00"))
    with pytest.raises(services.ServiceError):
        factories.place(acct, ended, "buy", 1, "1.00", now=ended.delivery_end)
    order = factories.place(acct, ended, "buy", 1, "1.00", now=ended.delivery_end - dt.timedelta(microseconds=1))
    assert order.status == S.OPEN
