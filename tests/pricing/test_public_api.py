"""What the public read API says, value by value: the catalog, instrument filters, public trades,
stats, 1h and 1d candles, and the caller's own order filters and paging.

Three trades are matched for real and then placed at fixed times before the current hour (so
the expected candles do not depend on when the test runs, midnight included); the expected
figures are worked out here by hand or from the trade list, not by the selectors.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace import services
from marketplace.catalog_defaults import HARDWARE, REGIONS, TIERS
from marketplace.models import Instrument, Trade
from pricing.services import instrument_match
from tests import factories
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db
D = Decimal
UTC = dt.UTC


@pytest.fixture
def market(catalog, buyer, provider):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    hour = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    # A: 2 Mtok @ 1.00 (the buy takes a resting sell); B: 1 Mtok @ 1.20 (the sell takes a
    # resting buy); C: 1 Mtok @ 0.90. Then a book: bid 2 Mtok @ 0.80, asks 1 @ 1.50, 3 @ 1.60.
    plan = [("sell", "buy", 2, "1.00"), ("buy", "sell", 1, "1.20"), ("sell", "buy", 1, "0.90")]
    for first, second, mtok, price in plan:
        for side in (first, second):
            factories.place(provider if side == "sell" else buyer, inst, side, mtok, price)
        instrument_match(instrument_id=inst.pk)
    factories.place(buyer, inst, "buy", 2, "0.80")
    factories.place(provider, inst, "sell", 1, "1.50")
    factories.place(provider, inst, "sell", 3, "1.60", hardware="h200")
    instrument_match(instrument_id=inst.pk)
    trades = list(inst.trades.order_by("match_sequence"))
    assert [(t.price, t.quantity) for t in trades] == [
        (D("1.00"), 2_000_000),
        (D("1.20"), 1_000_000),
        (D("0.90"), 1_000_000),
    ]
    times = [hour - dt.timedelta(hours=3) + dt.timedelta(minutes=5), hour - dt.timedelta(hours=3) + dt.timedelta(minutes=40),
             hour - dt.timedelta(hours=1) + dt.timedelta(minutes=10)]  # fmt: skip
    for t, when in zip(trades, times, strict=True):
        Trade.objects.filter(pk=t.pk).update(executed_at=when)
    # Another instrument's trade must not show in this one's data.
    other = factories.open_instrument(tier="economy", region="cn-west-1")
    factories.place(provider, other, "sell", 5, "0.50")
    factories.place(buyer, other, "buy", 5, "0.50")
    instrument_match(instrument_id=other.pk)
    return {"inst": inst, "other": other, "hour": hour, "trades": trades, "times": times}


def get(path, **params):
    r = APIClient().get(path, params)
    assert r.status_code == 200, (path, r.status_code, r.content[:300])
    return r.json()


# --- catalog --------------------------------------------------------------------------------


def test_the_catalog_lists_the_seeded_tiers_regions_and_hardware(catalog):
    tiers = get("/api/v1/tiers")
    assert [t["code"] for t in tiers] == [row[0] for row in sorted(TIERS, key=lambda r: r[6])]
    standard = next(t for t in tiers if t["code"] == "standard")
    assert (standard["latency_slo_ms"], D(standard["output_token_weight"]), D(standard["cached_input_weight"]),
            D(standard["unused_capacity_share"])) == (1500, D("3"), D("0.25"), D("0.25"))  # fmt: skip
    regions = {r["code"]: D(r["electricity_price_per_kwh"]) for r in get("/api/v1/regions")}
    assert regions == {code: price for code, _, price in REGIONS}
    hardware = {h["code"]: h for h in get("/api/v1/hardware")}
    assert set(hardware) == {row[0] for row in HARDWARE}
    assert hardware["b200"]["watts_per_accelerator"] == 1000
    # B200 serves the standard tier at 2.5x an H100's 1,500 tokens/s.
    assert {t["tier"]: t["tokens_per_second"] for t in hardware["b200"]["throughputs"]}["standard"] == 3750


# --- instruments ----------------------------------------------------------------------------


def symbols(body) -> set[str]:
    return {row["symbol"] for row in body["results"]}


def test_instrument_filters_select_by_tier_region_date_and_status(market):
    inst = market["inst"]
    everything = symbols(get("/api/v1/instruments", limit=1000))
    assert everything == {i.symbol for i in Instrument.objects.all()} and len(everything) > 20
    by_tier = symbols(get("/api/v1/instruments", tier="standard", limit=1000))
    assert by_tier and all(s.startswith("standard:") for s in by_tier) and by_tier < everything
    one = symbols(
        get("/api/v1/instruments", tier="standard", region="cn-west-1", delivery_date=inst.delivery_date.isoformat())
    )
    assert one == {inst.symbol}
    services.instrument_set_status(instrument=inst, status=Instrument.Status.HALTED)
    assert symbols(get("/api/v1/instruments", status="halted")) == {inst.symbol}
    assert inst.symbol not in symbols(get("/api/v1/instruments", status="open", limit=1000))
    assert symbols(get("/api/v1/instruments", tier="no-such-tier")) == set()


def test_an_instrument_shows_its_top_of_book_last_price_and_24h_volume(market):
    inst = market["inst"]
    row = get(f"/api/v1/instruments/{inst.symbol}")
    assert (row["symbol"], row["tier"], row["region"], row["status"]) == (inst.symbol, "standard", "cn-west-1", "open")
    assert (row["last_price"], row["best_bid"], row["best_ask"], row["volume_24h"]) == (
        "0.90",
        "0.80",
        "1.50",
        4_000_000,
    )
    listed = next(r for r in get("/api/v1/instruments", tier="standard", region="cn-west-1", limit=1000)["results"]
                  if r["symbol"] == inst.symbol)  # fmt: skip
    assert listed == row
    book = get(f"/api/v1/instruments/{inst.symbol}/book")
    assert book["bids"] == [{"price": "0.80", "quantity": 2_000_000, "orders": 1}]
    assert [(a["price"], a["quantity"], a["hardware"]) for a in book["asks"]] == [
        ("1.50", 1_000_000, {"h100": 1_000_000}),
        ("1.60", 3_000_000, {"h200": 3_000_000}),
    ]


def test_public_trades_are_this_instruments_newest_first_without_accounts(market):
    inst, trades = market["inst"], market["trades"]
    body = get(f"/api/v1/instruments/{inst.symbol}/trades")
    assert [r["id"] for r in body["results"]] == [t.pk for t in reversed(trades)]
    assert [(r["price"], r["quantity"], r["aggressor_side"], r["hardware"]) for r in body["results"]] == [
        ("0.90", 1_000_000, "buy", "h100"),
        ("1.20", 1_000_000, "sell", "h100"),
        ("1.00", 2_000_000, "buy", "h100"),
    ]
    assert [when(r["executed_at"]) for r in body["results"]] == list(reversed(market["times"]))
    assert all(
        set(r) == {"id", "price", "quantity", "hardware", "aggressor_side", "executed_at"} for r in body["results"]
    )
    paged = get(f"/api/v1/instruments/{inst.symbol}/trades", limit=2)
    assert [r["id"] for r in paged["results"]] == [trades[2].pk, trades[1].pk] and paged["next"]
    rest = APIClient().get(paged["next"]).json()
    assert [r["id"] for r in rest["results"]] == [trades[0].pk] and rest["next"] is None


# --- stats and candles ----------------------------------------------------------------------


def test_stats_are_the_last_24_hours_worked_by_hand(market):
    s = get(f"/api/v1/instruments/{market['inst'].symbol}/stats")
    # open 1.00 (A), high 1.20, low 0.90, last 0.90; vwap (2x1.00 + 1.20 + 0.90) / 4 = 1.025
    assert {k: s[k] for k in ("last_price", "best_bid", "best_ask", "spread", "mid")} == {
        "last_price": "0.90", "best_bid": "0.80", "best_ask": "1.50", "spread": "0.70", "mid": "1.15",
    }  # fmt: skip
    assert {k: s[k] for k in ("open_24h", "high_24h", "low_24h", "change_24h", "vwap_24h")} == {
        "open_24h": "1.00", "high_24h": "1.20", "low_24h": "0.90", "change_24h": "-0.10", "vwap_24h": "1.025",
    }  # fmt: skip
    assert (s["volume_24h"], s["trades_24h"], s["in_call_auction"]) == (4_000_000, 3, False)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def when(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def money_str(x: Decimal) -> str:
    """The API's price format: two places when exact at two, else as many as needed."""
    return str(x.quantize(D("0.01"))) if x == x.quantize(D("0.01")) else format(x.normalize(), "f")


def with_times(candles: list[dict]) -> list[dict]:
    return [{**c, "start": when(c["start"])} for c in candles]


def test_hourly_candles_worked_by_hand_with_a_carried_forward_hour(market):
    hour = market["hour"]
    body = get(f"/api/v1/instruments/{market['inst'].symbol}/candles", interval="1h",
               **{"from": iso(hour - dt.timedelta(hours=5)), "to": iso(hour)})  # fmt: skip
    assert body["interval"] == "1h"
    # Hours before the first trade are omitted; the hour without trades carries the close.
    assert with_times(body["candles"]) == [
        {"start": hour - dt.timedelta(hours=3), "open": "1.00", "high": "1.20", "low": "1.00", "close": "1.20",
         "volume": 3_000_000, "trades": 2, "vwap": "1.0667"},
        {"start": hour - dt.timedelta(hours=2), "open": "1.20", "high": "1.20", "low": "1.20", "close": "1.20",
         "volume": 0, "trades": 0, "vwap": None},
        {"start": hour - dt.timedelta(hours=1), "open": "0.90", "high": "0.90", "low": "0.90", "close": "0.90",
         "volume": 1_000_000, "trades": 1, "vwap": "0.90"},
    ]  # fmt: skip


def test_daily_candles_group_the_trades_by_utc_day(market):
    hour, times, trades = market["hour"], market["times"], market["trades"]
    start = (hour - dt.timedelta(days=2)).replace(hour=0)
    body = get(f"/api/v1/instruments/{market['inst'].symbol}/candles", interval="1d",
               **{"from": iso(start), "to": iso(hour)})  # fmt: skip
    # The reference: the three trades grouped by their UTC day (two days if the test runs
    # just after midnight), each day carried forward to the current one.
    days: dict[dt.datetime, list[Trade]] = {}
    for t, at in zip(trades, times, strict=True):
        days.setdefault(at.replace(hour=0, minute=0), []).append(t)
    expected, close = [], None
    day = min(days)
    while day <= hour.replace(hour=0):
        group = days.get(day, [])
        if group:
            volume = sum(t.quantity for t in group)
            vwap = (sum(t.price * t.quantity for t in group) / volume).quantize(D("0.0001"))
            close = group[-1].price
            prices = [t.price for t in group]
            expected.append((day, *map(money_str, (group[0].price, max(prices), min(prices), close)), volume, len(group),
                             money_str(vwap)))  # fmt: skip
        else:
            expected.append((day, *[money_str(close)] * 4, 0, 0, None))
        day += dt.timedelta(days=1)
    got = [
        (when(c["start"]), c["open"], c["high"], c["low"], c["close"], c["volume"], c["trades"], c["vwap"])
        for c in body["candles"]
    ]
    assert got == expected
    assert sum(c["volume"] for c in body["candles"]) == 4_000_000


# --- own orders: filters and paging ---------------------------------------------------------


def test_own_order_filters_and_paging(market, buyer):
    inst, other = market["inst"], market["other"]
    api = api_client_for(buyer)
    everything = api.get("/api/v1/orders", {"limit": 1000}).json()["results"]
    ids = [o["id"] for o in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) == 5  # A, B, C buys, the resting bid, the other's buy

    def listed(**params) -> list[int]:
        r = api.get("/api/v1/orders", params)
        assert r.status_code == 200, r.content
        return [o["id"] for o in r.json()["results"]]

    by_status = {o["id"]: o["status"] for o in everything}
    assert listed(status="open") == [i for i in ids if by_status[i] == "open"] and len(listed(status="open")) == 1
    assert listed(status="filled") == [i for i in ids if by_status[i] == "filled"] and len(listed(status="filled")) == 4
    assert listed(side="sell") == []
    assert listed(side="buy") == ids
    on_other = listed(instrument=other.symbol)
    assert len(on_other) == 1 and {o["instrument"] for o in everything if o["id"] in on_other} == {other.symbol}
    assert len(listed(instrument=inst.symbol, status="filled")) == 3
    # Paging two at a time walks every order once, newest first.
    seen, url = [], "/api/v1/orders?limit=2"
    while url:
        body = api.get(url).json()
        assert len(body["results"]) <= 2
        seen += [o["id"] for o in body["results"]]
        url = body["next"]
    assert seen == ids
    resting = next(o for o in everything if o["status"] == "open")
    assert (resting["price"], resting["quantity"], resting["filled_quantity"], resting["remaining_quantity"]) == (
        "0.80", 2_000_000, 0, 2_000_000,
    )  # fmt: skip
