"""Orders through the REST API: every validation rule, idempotency, isolation, scopes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.models import Order, OrderStatus
from metering.models import LedgerEntry
from metering.selectors import balances_get
from pricing.services import instrument_match
from tests import factories
from tests.conftest import api_client_for
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db


def order_body(inst, **over):
    body = {
        "instrument": inst.symbol,
        "side": "buy",
        "quantity": 10_000_000,
        "price": "1.50",
        "time_in_force": "gtc",
    }
    body.update(over)
    return body


def test_it_places_a_buy_order_and_reserves_escrow(buyer_api, buyer, instrument):
    r = buyer_api.post("/api/v1/orders", order_body(instrument), format="json")
    assert r.status_code == 201, r.json()
    data = r.json()
    assert data["status"] == "open" and data["price"] == "1.50" and data["quantity"] == 10_000_000
    order = Order.objects.get(pk=data["id"])
    assert order.pending_match and order.sequence is None  # the matcher gives it one
    # 10 Mtok x 1.50 = 15.00, + the highest fee (10 bps) = 15.015, rounded up once: 15.02
    # (rounding per lot reserved 10 x 1.51 = 15.10); the fee rates are frozen on the order.
    assert (order.maker_fee_bps, order.taker_fee_bps) == (5, 10)
    b = balances_get(account=buyer)
    assert b["escrow"] == Decimal("15.02") and b["available"] == Decimal("100000.00") - Decimal("15.02")
    assert_invariants()


@pytest.mark.parametrize(
    "over, status, field, code",
    [
        ({"quantity": 1_500_000}, 400, "quantity", "invalid_lot"),
        ({"quantity": 0}, 400, "quantity", "validation_error"),
        ({"quantity": -1_000_000}, 400, "quantity", "validation_error"),
        ({"quantity": "lots"}, 400, "quantity", "validation_error"),
        ({"price": "1.505"}, 400, "price", "invalid_tick"),
        ({"price": "0"}, 400, "price", "invalid_price"),
        ({"price": "-1.00"}, 400, "price", "validation_error"),
        ({"price": "NaN"}, 400, "price", "validation_error"),
        ({"price": "Infinity"}, 400, "price", "validation_error"),
        ({"price": "1e400"}, 400, "price", "validation_error"),
        ({"side": "hold"}, 400, "side", "validation_error"),
        ({"time_in_force": "day"}, 400, "time_in_force", "validation_error"),
        ({"hardware": "h100"}, 400, "hardware", "invalid_hardware"),
        ({"allowed_hardware": ["h999"]}, 400, "allowed_hardware", "unknown_hardware"),
        ({"side": "sell", "hardware": None}, 403, None, "not_a_provider"),
        ({"instrument": "frontier:nowhere:2026-01-01"}, 400, "instrument", "unknown_instrument"),
        ({"instrument": "garbage"}, 400, "instrument", "unknown_instrument"),
        ({"colour": "blue"}, 400, "colour", "validation_error"),
    ],
)
def test_it_refuses_bad_orders_with_a_clear_error_and_changes_nothing(buyer_api, instrument, over, status, field, code):
    entries = LedgerEntry.objects.count()
    r = buyer_api.post("/api/v1/orders", order_body(instrument, **over), format="json")
    assert r.status_code == status, r.json()
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if field:
        assert field in err["fields"], err
    assert Order.objects.count() == 0
    assert LedgerEntry.objects.count() == entries


def test_sell_without_hardware_is_refused(provider, instrument):
    api = api_client_for(provider)
    r = api.post("/api/v1/orders", order_body(instrument, side="sell"), format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "hardware_required"


def test_halted_instrument_takes_no_orders(buyer_api, instrument):
    instrument.status = "halted"
    instrument.save()
    r = buyer_api.post("/api/v1/orders", order_body(instrument), format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "instrument_not_open"
    assert Order.objects.count() == 0


def test_insufficient_funds_is_refused_and_changes_nothing(instrument, db):
    poor = factories.AccountFactory()
    factories.fund(poor, Decimal("10.00"))
    api = api_client_for(poor)
    r = api.post("/api/v1/orders", order_body(instrument), format="json")
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_funds"
    assert Order.objects.count() == 0
    assert balances_get(account=poor) == {"available": Decimal("10.00"), "escrow": Decimal("0.00"), "owed": Decimal("0.00")}


def test_client_order_id_is_unique_per_account(buyer_api, other_buyer, instrument):
    assert buyer_api.post("/api/v1/orders", order_body(instrument, client_order_id="a1"), format="json").status_code == 201
    r = buyer_api.post("/api/v1/orders", order_body(instrument, client_order_id="a1"), format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_client_order_id"
    # Another account may use the same client order id.
    other = api_client_for(other_buyer)
    assert other.post("/api/v1/orders", order_body(instrument, client_order_id="a1"), format="json").status_code == 201
    assert_invariants()


def test_idempotency_key_replays_the_first_response(buyer_api, buyer, instrument):
    body = order_body(instrument)
    r1 = buyer_api.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    r2 = buyer_api.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert r1.status_code == r2.status_code == 201
    assert r1.json()["id"] == r2.json()["id"]
    assert r2["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert balances_get(account=buyer)["escrow"] == Decimal("15.02")  # 15.00 + 10 bps, rounded up once


def test_idempotency_key_with_another_body_is_a_conflict(buyer_api, instrument):
    buyer_api.post("/api/v1/orders", order_body(instrument), format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    r = buyer_api.post("/api/v1/orders", order_body(instrument, price="1.60"), format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
    assert Order.objects.count() == 1


def test_one_account_cannot_see_or_cancel_anothers_orders(buyer_api, other_buyer, instrument):
    oid = buyer_api.post("/api/v1/orders", order_body(instrument), format="json").json()["id"]
    other = api_client_for(other_buyer)
    assert other.get(f"/api/v1/orders/{oid}").status_code == 404
    assert other.post(f"/api/v1/orders/{oid}/cancel").status_code == 404
    assert other.get("/api/v1/orders").json()["results"] == []
    assert Order.objects.get(pk=oid).status == OrderStatus.OPEN


def test_a_key_without_trade_scope_cannot_place_orders(buyer, instrument):
    api = api_client_for(buyer, ("read",))
    r = api.post("/api/v1/orders", order_body(instrument), format="json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert "trade" in r.json()["error"]["message"]
    assert Order.objects.count() == 0


def test_anonymous_and_bad_keys_are_refused(client, instrument):
    assert client.get("/api/v1/orders").status_code == 401
    r = client.get("/api/v1/orders", HTTP_AUTHORIZATION="Bearer cy_nope_nope")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"


def test_cancel_releases_escrow(buyer_api, buyer, instrument):
    oid = buyer_api.post("/api/v1/orders", order_body(instrument), format="json").json()["id"]
    r = buyer_api.post(f"/api/v1/orders/{oid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert balances_get(account=buyer)["escrow"] == Decimal("0.00")
    assert buyer_api.post(f"/api/v1/orders/{oid}/cancel").status_code == 409
    assert_invariants()


def test_match_fills_at_resting_price_and_releases_price_improvement(buyer_api, buyer, provider, instrument):
    sell = factories.place(provider, instrument, "sell", 10, "1.40")
    instrument_match(instrument_id=instrument.pk)
    oid = buyer_api.post("/api/v1/orders", order_body(instrument, price="1.50"), format="json").json()["id"]
    instrument_match(instrument_id=instrument.pk)
    order = Order.objects.get(pk=oid)
    sell.refresh_from_db()
    assert order.status == sell.status == OrderStatus.FILLED
    trades = buyer_api.get("/api/v1/trades").json()["results"]
    assert len(trades) == 1 and trades[0]["price"] == "1.40" and trades[0]["liquidity"] == "taker"
    # The contract holds 14.00 + 10 bps taker fee (0.014 -> 0.02) = 14.02; the rest is back.
    assert balances_get(account=buyer)["escrow"] == Decimal("14.02")
    book = buyer_api.get(f"/api/v1/instruments/{instrument.symbol}").json()
    assert book["last_price"] == "1.40" and book["best_bid"] is None and book["volume_24h"] == 10_000_000
    assert_invariants()


def test_book_shows_levels_and_hardware_on_asks(client, provider, buyer, instrument):
    factories.place(provider, instrument, "sell", 5, "2.00", hardware="h100")
    factories.place(provider, instrument, "sell", 7, "2.00", hardware="b200")
    factories.place(buyer, instrument, "buy", 3, "1.00")
    instrument_match(instrument_id=instrument.pk)
    r = client.get(f"/api/v1/instruments/{instrument.symbol}/book")
    assert r.status_code == 200
    book = r.json()
    assert book["asks"] == [{"price": "2.00", "quantity": 12_000_000, "orders": 2, "hardware": {"h100": 5_000_000, "b200": 7_000_000}}]
    assert book["bids"] == [{"price": "1.00", "quantity": 3_000_000, "orders": 1}]
    assert book["best_bid"] == "1.00" and book["best_ask"] == "2.00"


def test_unknown_api_path_gets_the_error_shape(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_schema_and_docs_are_served_without_a_cdn(client):
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower() and "//unpkg" not in html
