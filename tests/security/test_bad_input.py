"""Bad input of every kind gets a clear 4xx in the one error shape and changes nothing.

The generic checks run against every write endpoint found by the URL resolver (endpoints added
later are covered); the value checks use the order and usage endpoints, where a valid body is
known and one field at a time is made bad.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from marketplace import services
from marketplace.models import ApiKey, Order
from metering.funding import funding_withdrawal_request
from metering.models import FundingRequest, LedgerEntry, UsageEvent
from pricing.services import instrument_match
from tests import factories
from tests.security.routes import api_operations

pytestmark = pytest.mark.django_db

WRITE_OPERATIONS = [(r, m) for r, m in api_operations() if m in ("post", "put", "patch")]


@pytest.fixture
def trader(catalog):
    """A buyer-and-provider account with every scope, funds, an instrument and a contract."""
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    account = factories.AccountFactory(is_buyer=True, is_provider=True)
    counterparty = factories.AccountFactory(is_buyer=True, is_provider=True)
    for acct in (account, counterparty):
        factories.fund(acct, Decimal("100000.00"))
    factories.place(account, inst, "sell", 2, "1.00")
    factories.place(counterparty, inst, "buy", 2, "1.00")
    instrument_match(instrument_id=inst.pk)
    order = factories.place(account, inst, "buy", 1, "0.50")
    withdrawal = funding_withdrawal_request(account=account, amount=Decimal("1.00"))
    _, raw = services.api_key_create(account=account, scopes=list(ApiKey.Scope.values))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return {
        "client": client, "instrument": inst, "account": account, "counterparty": counterparty, "order": order,
        "funding_request": withdrawal,
    }


def path_for(route, trader) -> str:
    import re

    values = {
        "symbol": trader["instrument"].symbol,
        "order_id": trader["order"].pk,
        "request_id": trader["funding_request"].pk,
    }
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values.get(m.group(1), 1)), route.route)


def state() -> tuple:
    return (
        sorted(Order.objects.values_list("id", "status", "filled_quantity")),
        LedgerEntry.objects.count(),
        UsageEvent.objects.count(),
        FundingRequest.objects.count(),
    )


def assert_refused(response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["message"], error
    return error


# --- every write endpoint -------------------------------------------------------------------


@pytest.mark.parametrize("route, method", WRITE_OPERATIONS, ids=str)
@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/plain", "instrument=x"),
        ("application/x-www-form-urlencoded", "instrument=x&side=buy"),
        ("application/xml", "<order><side>buy</side></order>"),
        ("multipart/form-data; boundary=xyz", "--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--xyz--"),
    ],
)
def test_a_wrong_content_type_is_refused_with_415(trader, route, method, content_type, body):
    before = state()
    r = trader["client"].generic(method.upper(), path_for(route, trader), body, content_type=content_type)
    # An endpoint that takes no body (cancel) may ignore it; it must still never fail.
    if r.status_code < 400:
        assert route.name.endswith("cancel"), (route, r.status_code)
        return
    assert_refused(r, 415)
    assert state() == before


@pytest.mark.parametrize("route, method", WRITE_OPERATIONS, ids=str)
@pytest.mark.parametrize(
    "raw",
    [
        b"{bad json",
        b'{"instrument": "\xff\xfe"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested past Python's recursion limit
        b'{"quantity": NaN}',
        b'{"price": Infinity}',
        b'{"a": ' + b'"x", "a": ' * 1000 + b'"y"}',  # duplicate keys
    ],
    ids=["malformed", "not-utf8", "deeply-nested", "nan-literal", "infinity-literal", "duplicate-keys"],
)
def test_a_malformed_json_body_is_refused_with_400(trader, route, method, raw):
    before = state()
    r = trader["client"].generic(method.upper(), path_for(route, trader), raw, content_type="application/json")
    if r.status_code < 400:
        assert route.name.endswith("cancel"), (route, r.status_code)
        return
    assert_refused(r, 400)
    assert state() == before


@pytest.mark.parametrize("route, method", WRITE_OPERATIONS, ids=str)
def test_an_oversized_body_is_refused_with_413_before_it_is_read(trader, route, method):
    before = state()
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=50_000):
        body = json.dumps({"events": [{"event_id": "x" * 100}] * 1000})
        r = trader["client"].generic(method.upper(), path_for(route, trader), body, content_type="application/json")
    error = assert_refused(r, 413)
    assert error["code"] == "request_too_large"
    assert state() == before


@pytest.mark.parametrize("route, method", WRITE_OPERATIONS, ids=str)
@pytest.mark.parametrize("body", [[], "a string", 12, None, [1, 2, 3]], ids=repr)
def test_a_body_of_the_wrong_json_type_never_fails(trader, route, method, body):
    before = state()
    r = trader["client"].generic(
        method.upper(), path_for(route, trader), json.dumps(body), content_type="application/json"
    )
    assert r.status_code < 500
    if r.status_code >= 400:
        assert_refused(r, r.status_code)
    if not route.name.endswith("cancel"):
        assert state() == before


def test_a_negative_content_length_is_refused(trader):
    r = trader["client"].generic("POST", "/api/v1/orders", "{}", content_type="application/json", CONTENT_LENGTH="-5")
    assert_refused(r, 400)


# --- one bad field at a time on a known-good order -------------------------------------------


def good_order(trader, **over) -> dict:
    body = {"instrument": trader["instrument"].symbol, "side": "buy", "quantity": 1_000_000, "price": "1.00"}
    body.update(over)
    return body


def test_the_good_order_body_is_accepted(trader):
    assert trader["client"].post("/api/v1/orders", good_order(trader), format="json").status_code == 201


@pytest.mark.parametrize(
    "field, value",
    [
        ("quantity", 10**40),
        ("quantity", -1_000_000),
        ("quantity", 1.5e6),
        ("quantity", "1e6"),
        ("quantity", 1e308),
        ("quantity", True),
        ("price", "1e400"),
        ("price", "-1.00"),
        ("price", "-0.00"),
        ("price", "NaN"),
        ("price", "sNaN"),
        ("price", "Infinity"),
        ("price", "-Infinity"),
        ("price", "99999999999999999999"),
        ("price", 10**30),
        ("price", "1" * 5000),
        ("price", "0x10"),
        ("price", "1,00"),
        ("price", ""),
        ("price", None),
        ("side", "BUY; DROP TABLE marketplace_order"),
        ("instrument", "x" * 10_000),
        ("client_order_id", "a\x00b"),
        ("client_order_id", "x" * 65),
        ("allowed_hardware", ["h100"] * 33),
        ("allowed_hardware", "h100"),
        ("allowed_hardware", [{"nested": "object"}]),
        ("time_in_force", ["gtc"]),
        ("hardware", {"code": "h100"}),
    ],
)
def test_a_bad_order_field_is_refused_and_named(trader, field, value):
    before = state()
    r = trader["client"].post("/api/v1/orders", good_order(trader, **{field: value}), format="json")
    error = assert_refused(r, 400, 404)
    named = any(name == field or name.startswith(f"{field}.") for name in error["fields"])
    assert named or r.status_code == 404, error
    assert state() == before


@pytest.mark.parametrize(
    "extra", [{"account": 1}, {"filled_quantity": 1_000_000}, {"status": "filled"}, {"sequence": 1}]
)
def test_unknown_or_read_only_order_fields_are_refused_by_name(trader, extra):
    before = state()
    r = trader["client"].post("/api/v1/orders", good_order(trader, **extra), format="json")
    error = assert_refused(r, 400)
    assert set(extra) <= set(error["fields"]), error
    assert state() == before


@pytest.mark.parametrize("key", ["", " ", "k" * 129, "bad\nkey", "\x00"])
def test_a_bad_idempotency_key_is_refused(trader, key):
    before = state()
    r = trader["client"].post("/api/v1/orders", good_order(trader), format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert_refused(r, 400)
    assert state() == before


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer a b",
        "Basic dXNlcjpwYXNz",
        "Bearer cy_",
        "Bearer cy_x_y",
        "Bearer " + "A" * 10_000,
        "Token abc",
    ],
)
def test_a_malformed_authorization_header_is_refused_with_401(catalog, header):
    r = APIClient().get("/api/v1/orders", HTTP_AUTHORIZATION=header)
    assert_refused(r, 401)


@pytest.mark.parametrize(
    "query",
    ["depth=0", "depth=-1", "depth=" + "9" * 40, "depth=1.5", "depth=abc"],
)
def test_bad_query_parameters_are_refused(trader, query):
    r = trader["client"].get(f"/api/v1/instruments/{trader['instrument'].symbol}/book?{query}")
    assert_refused(r, 400)


@pytest.mark.parametrize("query", ["limit=0", "limit=-5", "limit=abc", "limit=1e3", "cursor=not-a-cursor"])
def test_bad_pagination_is_refused(trader, query):
    r = trader["client"].get(f"/api/v1/orders?{query}")
    assert_refused(r, 400, 404)


@pytest.mark.parametrize("order_id", ["9" * 30, "0"])
def test_out_of_range_ids_are_not_found(trader, order_id):
    assert_refused(trader["client"].get(f"/api/v1/orders/{order_id}"), 404)
    before = state()
    assert_refused(trader["client"].post(f"/api/v1/orders/{order_id}/cancel"), 404)
    assert state() == before


# --- usage batches -------------------------------------------------------------------------


def usage_event(trader, **over) -> dict:
    from marketplace.models import Trade

    contract = Trade.objects.filter(seller=trader["account"]).first()
    event = {
        "event_id": over.pop("event_id", "evt-1"),
        "buyer": contract.buyer.slug,
        "contract": contract.pk,
        "timestamp": contract.instrument.delivery_start.isoformat().replace("+00:00", "Z"),
        "usage": {"prompt_tokens": 100, "completion_tokens": 50},
    }
    event.update(over)
    return event


def test_an_oversized_usage_batch_is_refused_whole(trader, settings):
    settings.USAGE_BATCH_MAX = 5
    events = [usage_event(trader, event_id=f"evt-{i}") for i in range(6)]
    before = state()
    r = trader["client"].post("/api/v1/usage", {"events": events}, format="json")
    assert_refused(r, 400, 413)
    assert state() == before


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 5},
        {"prompt_tokens": 10**40, "completion_tokens": 5},
        {"prompt_tokens": "NaN", "completion_tokens": 5},
        {"prompt_tokens": 1.5, "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 11}},
        "not an object",
        None,
    ],
    ids=repr,
)
def test_a_bad_usage_event_is_refused_and_records_nothing(trader, usage):
    before = state()
    r = trader["client"].post("/api/v1/usage", {"events": [usage_event(trader, usage=usage)]}, format="json")
    assert r.status_code in (200, 400), r.status_code
    if r.status_code == 200:
        assert [row["status"] for row in r.json()["results"]] == ["rejected"], r.json()
    else:
        assert_refused(r, 400)
    assert state() == before


@pytest.mark.parametrize(
    "url", ["/api/v1/floors?hardware=a%00b", "/api/v1/orders?%00=1", "/api/v1/instruments/a%00b/book"]
)
def test_a_nul_character_in_the_url_is_refused(trader, url):
    assert_refused(trader["client"].get(url), 400)
