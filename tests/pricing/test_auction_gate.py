"""Issue 12 item 5: after the day-ahead auction's gate closes and until the clear has run, an
instrument refuses new orders and cancels (409 auction_gate_closed) through every door."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from marketplace import services as market
from marketplace.models import Order, OrderStatus
from marketplace.services import ServiceError
from metering.selectors import balances_get
from pricing.models import CallAuction
from pricing.services import auction_clear, auction_open
from tests import factories
from tests.invariants import assert_invariants
from tests.web.conftest import logged_in, member

pytestmark = pytest.mark.django_db

GATE = "auction_gate_closed"


@pytest.fixture
def gated(instrument):
    """An instrument in its call auction, past gate closure, not yet cleared."""
    auction = auction_open(instrument=instrument)
    CallAuction.objects.filter(pk=auction.pk).update(gate_closure_at=timezone.now() - dt.timedelta(minutes=1))
    return instrument


@pytest.fixture
def resting(buyer, instrument):
    """A buy entered while the auction collected, its gate an hour ahead (`gated` then moves it)."""
    auction = auction_open(instrument=instrument)
    CallAuction.objects.filter(pk=auction.pk).update(gate_closure_at=timezone.now() + dt.timedelta(hours=1))
    return factories.place(buyer, instrument, "buy", 2, "1.50")


def _body(inst):
    return {"instrument": inst.symbol, "side": "buy", "quantity": 1_000_000, "price": "1.50"}


def test_the_api_refuses_orders_after_the_gate(buyer, buyer_api, gated):
    before = balances_get(account=buyer)
    r = buyer_api.post("/api/v1/orders", _body(gated), format="json")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == GATE
    assert not Order.objects.exists()
    assert balances_get(account=buyer) == before


def test_the_api_refuses_cancels_after_the_gate(buyer, buyer_api, resting, gated):
    r = buyer_api.post(f"/api/v1/orders/{resting.pk}/cancel")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == GATE
    resting.refresh_from_db()
    assert resting.status == OrderStatus.OPEN
    assert_invariants()


def test_the_web_form_refuses_orders_after_the_gate(buyer, gated):
    client = logged_in(member(buyer))
    url = reverse("web:order_place", kwargs={"symbol": gated.symbol})
    r = client.post(url, {"side": "buy", "quantity_mtok": "1", "price": "1.50", "time_in_force": "gtc"})
    assert r.status_code == 409
    assert "gate closed" in r.content.decode()
    assert not Order.objects.exists()


def test_the_web_cancel_is_refused_after_the_gate(buyer, resting, gated):
    client = logged_in(member(buyer))
    r = client.post(reverse("web:order_cancel", kwargs={"order_id": resting.pk}))
    assert r.status_code == 302
    assert any("gate closed" in str(m) for m in get_messages(r.wsgi_request))
    resting.refresh_from_db()
    assert resting.status == OrderStatus.OPEN


def test_the_admin_cancel_action_is_refused_after_the_gate(admin_client, buyer, resting, gated):
    r = admin_client.post(
        reverse("admin:marketplace_order_changelist"), {"action": "cancel", "_selected_action": [str(resting.pk)]}
    )
    assert r.status_code == 302
    assert any("gate closed" in str(m) for m in get_messages(r.wsgi_request))
    resting.refresh_from_db()
    assert resting.status == OrderStatus.OPEN


def test_the_service_refuses_both_with_409_and_lets_them_through_once_cleared(buyer, resting, gated):
    for call in (
        lambda: factories.place(buyer, gated, "buy", 1, "1.40"),
        lambda: market.order_cancel(account=buyer, order_id=resting.pk),
    ):
        with pytest.raises(ServiceError) as err:
            call()
        assert (err.value.code, err.value.status) == (GATE, 409)

    auction_clear(instrument_id=gated.pk)

    later = factories.place(buyer, gated, "buy", 1, "1.40")
    market.order_cancel(account=buyer, order_id=resting.pk)
    resting.refresh_from_db()
    assert later.pk and resting.status == OrderStatus.CANCELLED
    assert balances_get(account=buyer)["escrow"] == later.reserved == Decimal("1.41")
    assert_invariants()


def test_before_the_gate_orders_and_cancels_go_through(buyer, resting):
    assert CallAuction.objects.get(instrument=resting.instrument).gate_closure_at > timezone.now()
    market.order_cancel(account=buyer, order_id=resting.pk)
    resting.refresh_from_db()
    assert resting.status == OrderStatus.CANCELLED
