"""Ordinary bad input is a 4xx and changes nothing (issue 12 item 7): dates out of the calendar
or its range, offsets beyond ±14:00, NUL bytes, integers beyond 64 bits, quantities and
prices in exponent form, through every door that takes them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace import order_terms, services, timeparse
from marketplace.models import Order
from metering.models import LedgerEntry, UsageEvent
from tests import factories
from tests.conftest import api_client_for
from tests.metering.builders import contract, event, spot_instrument
from tests.web.conftest import logged_in, member

pytestmark = pytest.mark.django_db

BAD_DATES = ["2026-02-30", "9999-12-31", "0001-01-01", "2026-13-01", "2026-1-1", "２０２６-01-01", "2026-01-01\x00"]
BAD_TIMES = [
    "2026-11-26T00:00:00+25:00",
    "2026-11-26T00:00:00+14:01",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59Z",
    "2026-02-30T00:00:00Z",
    "2026-11-26T24:00:00Z",
    "2026-11-26T00:00:00+08:60",
    "x" * 1000,
]


# --- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", BAD_DATES)
def test_parse_date_refuses_what_is_not_a_day_in_range(raw):
    with pytest.raises(timeparse.TimeParseError):
        timeparse.parse_date(raw)


@pytest.mark.parametrize("raw", BAD_TIMES + BAD_DATES)
def test_parse_datetime_refuses_what_is_not_a_time_in_range(raw):
    with pytest.raises(timeparse.TimeParseError):
        timeparse.parse_datetime(raw, naive="utc", dates="end")


def test_parse_datetime_converts_offsets_and_dates_to_utc():
    p = timeparse.parse_datetime
    assert p("2026-11-26T08:00:00+08:00") == dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    assert p("2026-11-26T00:00:00.5-14:00") == dt.datetime(2026, 11, 26, 14, 0, 0, 500000, tzinfo=dt.UTC)
    assert p("2026-11-26", dates="end") == dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    assert p("2999-12-31", dates="end") == timeparse.MAX_TIME
    assert p("2026-11-26 10:00", naive="utc") == dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
    with pytest.raises(timeparse.TimeParseError, match="needs a UTC offset"):
        p("2026-11-26T10:00:00")
    with pytest.raises(timeparse.TimeParseError, match="date alone"):
        p("2026-11-26")


@pytest.mark.parametrize("seconds", [-62135596800, 253402300799, 10**30, float("inf"), float("nan"), 1e308])
def test_parse_epoch_refuses_times_out_of_range(seconds):
    with pytest.raises(timeparse.TimeParseError):
        timeparse.parse_epoch(seconds)


# --- query parameters of the API and the web pages ---------------------------------------------


@pytest.fixture
def trader(catalog):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    account = factories.AccountFactory(is_buyer=True, is_provider=True)
    factories.fund(account, Decimal("1000.00"))
    return account, inst


@pytest.mark.parametrize("raw", BAD_TIMES + BAD_DATES)
def test_api_date_parameters_answer_400_in_the_error_shape(trader, raw):
    account, inst = trader
    client = api_client_for(account)
    urls = [
        ("/api/v1/ledger", {"since": raw}),
        ("/api/v1/ledger", {"until": raw}),
        (f"/api/v1/instruments/{inst.symbol}/candles", {"interval": "1h", "from": raw}),
        (f"/api/v1/instruments/{inst.symbol}/candles", {"interval": "1h", "to": raw}),
        ("/api/v1/index", {"tier": "standard", "from": raw}),
        ("/api/v1/index", {"tier": "standard", "to": raw}),
    ]
    for url, params in urls:
        response = client.get(url, params)
        assert response.status_code == 400, (url, params, response.content)
        error = response.json()["error"]
        if "\x00" in raw:  # refused by the middleware before any view (and any query)
            assert error["code"] == "bad_request", error
        else:
            assert error["code"] == "invalid_parameter" and list(error["fields"]) == list(params)[-1:], error


@pytest.mark.parametrize("raw", ["2026-02-30", "9999-12-31", "0001-01-01", "2026-01-01\x00x"])
def test_statement_page_and_csv_refuse_bad_dates_without_a_500(trader, raw):
    account, _ = trader
    client = logged_in(member(account))
    for name in ("web:balances", "web:statement_csv"):
        for field in ("date_from", "date_to"):
            response = client.get(reverse(name), {field: raw})
            assert response.status_code < 500, (name, field, raw)
    page = client.get(reverse("web:balances"), {"date_to": "9999-12-31"})
    assert page.status_code == 200 and "between 2000-01-01 and 2999-12-31" in page.content.decode()
    assert client.get(reverse("web:markets"), {"day": "9999-12-31"}).status_code == 200


def test_statement_edges_of_the_range_still_work(trader):
    account, _ = trader
    client = logged_in(member(account))
    response = client.get(reverse("web:statement_csv"), {"date_from": "2000-01-01", "date_to": "2999-12-31"})
    assert response.status_code == 200
    api = api_client_for(account).get("/api/v1/ledger", {"since": "2000-01-01", "until": "2999-12-31"})
    assert api.status_code == 200 and len(api.json()["results"]) == LedgerEntry.objects.filter(
        account__owner=account
    ).count()


def test_malformed_instrument_filter_is_400_not_404(trader):
    account, _ = trader
    response = api_client_for(account).get("/api/v1/orders", {"instrument": "nonsense"})
    assert response.status_code == 400 and response.json()["error"]["fields"] == {
        "instrument": ["'nonsense' is not an instrument symbol (tier:region:YYYY-MM-DD)."]
    }
    assert api_client_for(account).get("/api/v1/orders", {"instrument": "standard:cn-west-1:9999-12-31"}).status_code == 200


# --- usage events: each gets its own verdict -----------------------------------------------------


def test_each_out_of_range_usage_event_gets_its_own_verdict(catalog, buyer, provider):
    inst = spot_instrument(tier="standard")
    trade = contract(buyer, provider, inst, 10, "1.50")
    client = api_client_for(provider, ("read", "trade", "meter"))
    good = event(buyer, inst, prompt=10, event_id="good")
    bad = [
        dict(event(buyer, inst, prompt=1), timestamp="0001-01-01T00:00:00+01:00"),
        dict(event(buyer, inst, prompt=1), timestamp="9999-12-31T23:00:00-05:00"),
        dict(event(buyer, inst, prompt=1), timestamp="9999-12-31T23:59:59Z"),
        dict(event(buyer, inst, prompt=1), timestamp=-62135596800),
        dict(event(buyer, inst, prompt=1), timestamp=2**70),
        dict(event(buyer, inst, prompt=1), timestamp="2026-11-26T00:00:00+25:00"),
        dict(event(buyer, inst, prompt=1), event_id="nul\x00id"),
        dict(event(buyer, inst, prompt=1), buyer=buyer.slug + "\x00"),
        dict(event(buyer, inst, prompt=1), instrument=inst.symbol + "\x00"),
        dict(event(buyer, None, prompt=1, contract_id=2**64)),
        dict(event(buyer, None, prompt=1, contract_id=2**63)),
        dict(event(buyer, inst, prompt=1), usage={"prompt_tokens": 2**64, "completion_tokens": 0}),
        dict(event(buyer, inst, prompt=1), usage={"prompt_tokens": 1, "completion_tokens": -(2**70)}),
        dict(event(buyer, inst, prompt=1), usage={"prompt_tokens": 1, "completion_tokens": 0,
                                                   "prompt_tokens_details": {"cached_tokens": 2**80}}),
    ]
    ok_by_contract = event(buyer, None, prompt=5, contract_id=trade.pk, event_id="by-contract")
    response = client.post("/api/v1/usage", {"events": [good, *bad, ok_by_contract]}, format="json")
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] + ["rejected"] * len(bad) + ["accepted"]
    assert all(r["reason"] in ("malformed", "invalid_counts", "no_contract") for r in results[1:-1])
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"good", "by-contract"}


# --- orders: one validation for every door -----------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "price", "code"),
    [
        (10**16, Decimal("1.00"), "quantity_too_large"),
        (5 * 10**18, Decimal("1.00"), "quantity_too_large"),
        (10**40, Decimal("1.00"), "quantity_too_large"),
        (1_000_000, Decimal("1e999999999"), "invalid_price"),
        (1_000_000, Decimal("1e-999999999"), "invalid_tick"),
        (1_000_000, Decimal("1.005"), "invalid_tick"),
        (1_000_000, Decimal("Infinity"), "invalid_price"),
        (1_000_000, Decimal("NaN"), "invalid_price"),
        (1_500_000, Decimal("1.00"), "invalid_lot"),
    ],
)
def test_order_place_refuses_terms_beyond_the_caps_and_the_tick(trader, quantity, price, code):
    account, inst = trader
    before = (Order.objects.count(), LedgerEntry.objects.count())
    with pytest.raises(services.ServiceError) as exc:
        services.order_place(account=account, instrument=inst, side="buy", quantity=quantity, price=price)
    assert exc.value.code == code and exc.value.field in ("quantity", "price")
    assert (Order.objects.count(), LedgerEntry.objects.count()) == before


def test_price_check_is_exact_at_coarse_and_fine_ticks():
    check = order_terms.price_check
    assert check(price=Decimal("0.30"), tick_size=Decimal("0.05")) == Decimal("0.30")
    assert check(price=Decimal("999999.95"), tick_size=Decimal("0.05")) == Decimal("999999.95")
    for price, tick in [("0.03", "0.05"), ("0.31", "0.05"), ("1", "0.3"), ("1.000000001", "0.01")]:
        with pytest.raises(order_terms.OrderTermsError):
            check(price=Decimal(price), tick_size=Decimal(tick))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quantity_mtok": "1e13"}, "quantity_mtok"),
        ({"quantity_mtok": "1e30"}, "quantity_mtok"),
        ({"quantity_mtok": "99999999999999999999"}, "quantity_mtok"),
        ({"quantity_mtok": "1e999999999"}, "quantity_mtok"),
        ({"quantity_mtok": "1e-999999999"}, "quantity_mtok"),
        ({"price": "1e999999999"}, "price"),
        ({"price": "1e-999999999"}, "price"),
        ({"price": "-1e999999999"}, "price"),
    ],
)
def test_web_order_form_and_preview_give_field_errors_not_500s(trader, fields, field):
    account, inst = trader
    client = logged_in(member(account))
    data = {"side": "buy", "quantity_mtok": "1", "price": "1.00", "time_in_force": "gtc", **fields}
    before = (Order.objects.count(), LedgerEntry.objects.count())
    response = client.post(reverse("web:order_place", args=[inst.symbol]), data)
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    preview = client.get(reverse("web:order_preview", args=[inst.symbol]), data)
    assert preview.status_code == 200
    assert (Order.objects.count(), LedgerEntry.objects.count()) == before


def test_two_largest_sells_keep_the_public_book_up(trader):
    """Sells at the cap cannot overflow the book's SUM (SQLite raises on 64-bit overflow)."""
    account, inst = trader
    for _ in range(2):
        services.order_place(
            account=account, instrument=inst, side="sell", quantity=order_terms.MAX_ORDER_QUANTITY,
            price=Decimal("5.00"), hardware="h100",
        )
    from pricing.services import instrument_match

    instrument_match(instrument_id=inst.pk)
    response = api_client_for(account).get(f"/api/v1/instruments/{inst.symbol}/book")
    assert response.status_code == 200
    assert response.json()["asks"][0]["quantity"] == 2 * order_terms.MAX_ORDER_QUANTITY
