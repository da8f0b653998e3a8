"""Issue 12 item 5: after a day-ahead auction's gate closure, and until its clear has run, the
instrument refuses new orders and cancels (409 auction_gate_closed) through every door: the
REST API, the web order form and cancel button, and the admin cancel action (management
commands place and cancel through the same services). After the clear both work again."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from marketplace import services
from marketplace.cache_generation import CATALOG, generation_bump
from marketplace.models import Order
from metering.selectors import balances_get
from pricing.models import CallAuction
from pricing.services import auction_clear, auction_open, instrument_match
from tests import factories
from tests.conftest import api_client_for
from tests.web.conftest import logged_in, member, otp_verified

pytestmark = pytest.mark.django_db


@pytest.fixture
def gated(catalog, buyer, provider):
    """A day-ahead instrument with a resting buy and sell collected for its auction, whose gate
    closed a minute ago (the clear has not run yet)."""
    inst = factories.open_instrument(day=timezone.now().date() + dt.timedelta(days=2))
    auction_open(instrument=inst)
    sell = factories.place(provider, inst, "sell", 5, "1.00")
    buy = factories.place(buyer, inst, "buy", 3, "1.20")
    instrument_match(instrument_id=inst.pk)  # collecting: left pending for the clear
    # The gate is at 12:00 UTC the day before delivery; move it into the past, as time would.
    CallAuction.objects.filter(instrument=inst).update(gate_closure_at=timezone.now() - dt.timedelta(minutes=1))
    generation_bump(name=CATALOG)
    return inst, buy, sell


def _error_code(response) -> str:
    return response.json()["error"]["code"]


def test_the_api_refuses_orders_and_cancels_after_the_gate_until_the_clear(gated, buyer):
    inst, buy, _ = gated
    api = api_client_for(buyer)
    orders_before = Order.objects.count()
    escrow_before = balances_get(account=buyer)["escrow"]

    r = api.post("/api/v1/orders", {"instrument": inst.symbol, "side": "buy", "quantity": 1_000_000, "price": "1.10"},
                 format="json")  # fmt: skip
    assert (r.status_code, _error_code(r)) == (409, "auction_gate_closed")
    r = api.post(f"/api/v1/orders/{buy.pk}/cancel")
    assert (r.status_code, _error_code(r)) == (409, "auction_gate_closed")
    buy.refresh_from_db()
    assert buy.is_live and buy.cancel_requested_at is None
    assert Order.objects.count() == orders_before
    assert balances_get(account=buyer)["escrow"] == escrow_before

    auction_clear(instrument_id=inst.pk)
    r = api.post("/api/v1/orders", {"instrument": inst.symbol, "side": "buy", "quantity": 1_000_000, "price": "0.90"},
                 format="json")  # fmt: skip
    assert r.status_code == 201, r.content
    r = api.post(f"/api/v1/orders/{r.json()['id']}/cancel")
    assert r.status_code == 200, r.content


def test_the_web_form_and_cancel_button_refuse_after_the_gate(gated, buyer):
    inst, buy, _ = gated
    web = logged_in(member(buyer))
    orders_before = Order.objects.count()
    r = web.post(
        reverse("web:order_place", args=[inst.symbol]),
        {"side": "buy", "quantity_mtok": "2", "price": "1.10", "time_in_force": "gtc"},
    )
    assert "auction" in r.content.decode() and "gate closed" in r.content.decode()
    assert Order.objects.count() == orders_before
    r = web.post(reverse("web:order_cancel", args=[buy.pk]))
    assert any("gate closed" in str(m) for m in get_messages(r.wsgi_request))
    buy.refresh_from_db()
    assert buy.is_live and buy.cancel_requested_at is None


def test_the_admin_cancel_action_refuses_after_the_gate(gated, client, django_user_model):
    inst, buy, _ = gated
    staff = django_user_model.objects.create_superuser("gate-operator", "op@example.com", "pw-long-enough-1")
    client.force_login(staff)
    admin = otp_verified(client, staff)
    r = admin.post(
        reverse("admin:marketplace_order_changelist"), {"action": "cancel", "_selected_action": [str(buy.pk)]}
    )
    assert any("gate closed" in str(m) for m in get_messages(r.wsgi_request))
    buy.refresh_from_db()
    assert buy.is_live and buy.cancel_requested_at is None


def test_the_services_refuse_before_the_clear_and_accept_after_it(gated, buyer):
    """What management commands and every other caller get: the same refusal."""
    inst, buy, _ = gated
    with pytest.raises(services.ServiceError) as exc:
        factories.place(buyer, inst, "buy", 1, "1.10")
    assert (exc.value.code, exc.value.status) == ("auction_gate_closed", 409)
    with pytest.raises(services.ServiceError) as exc:
        services.order_cancel(account=buyer, order_id=buy.pk)
    assert exc.value.code == "auction_gate_closed"

    auction = auction_clear(instrument_id=inst.pk)
    assert auction.volume == 3_000_000  # the book that stood at the gate: 3 Mtok at one price
    instrument_match(instrument_id=inst.pk)
    later = factories.place(buyer, inst, "buy", 1, "0.50")
    instrument_match(instrument_id=inst.pk)
    assert services.order_cancel(account=buyer, order_id=later.pk).status == "cancelled"


def test_before_the_gate_orders_and_cancels_are_accepted(catalog, buyer):
    inst = factories.open_instrument(day=timezone.now().date() + dt.timedelta(days=2))
    auction_open(instrument=inst)
    order = factories.place(buyer, inst, "buy", 1, "1.00")
    assert services.order_cancel(account=buyer, order_id=order.pk).status == "cancelled"
    assert balances_get(account=buyer)["escrow"] == Decimal("0.00")
