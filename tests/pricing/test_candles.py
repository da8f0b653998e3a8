"""Candles, 24h statistics and VWAP equal hand computations, including empty buckets and a single trade."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from marketplace.models import InstrumentBook, Trade
from pricing.selectors import instrument_candles, instrument_stats
from pricing.services import instrument_match
from tests import factories

pytestmark = pytest.mark.django_db
D = Decimal
UTC = dt.UTC
DAY = dt.datetime(2026, 1, 5, tzinfo=UTC)


def at(hh, mm, ss=0, day=DAY):
    return day.replace(hour=hh, minute=mm, second=ss)


@pytest.fixture
def market(instrument, buyer, provider):
    """Real fills (a resting order taken by a crossing one, matched), dated `when` afterwards."""

    def trade(when, price, mtok, aggressor="buy", hardware="h100"):
        maker, taker = ("sell", "buy") if aggressor == "buy" else ("buy", "sell")
        accounts = {"buy": buyer, "sell": provider}
        for side in (maker, taker):
            kw = {"hardware": hardware} if side == "sell" else {}
            factories.place(accounts[side], instrument, side, mtok, price, **kw)
        instrument_match(instrument_id=instrument.pk)
        fill = Trade.objects.filter(instrument=instrument).latest("match_sequence")
        Trade.objects.filter(pk=fill.pk).update(executed_at=when)
        return fill

    return trade


def rows(candles):
    return [
        (
            c.start.strftime("%H:%M"),
            str(c.open),
            str(c.high),
            str(c.low),
            str(c.close),
            c.volume // 10**6,
            c.trades,
            None if c.vwap is None else str(c.vwap),
        )
        for c in candles
    ]


def test_one_minute_candles_with_an_empty_bucket_carried_forward(instrument, market):
    market(at(10, 0, 10), "2.00", 3)
    market(at(10, 0, 50), "2.10", 1)
    # 10:01 has no trade
    market(at(10, 2, 30), "1.90", 2)
    candles = instrument_candles(instrument=instrument, interval="1m", start=at(9, 58), end=at(10, 4))
    assert rows(candles) == [
        # 09:58 and 09:59 come before the first trade: omitted.
        # VWAP 10:00 = (2.00 x 3 + 2.10 x 1) / 4 = 2.025
        ("10:00", "2.0000", "2.1000", "2.0000", "2.1000", 4, 2, "2.0250"),
        ("10:01", "2.1000", "2.1000", "2.1000", "2.1000", 0, 0, None),
        ("10:02", "1.9000", "1.9000", "1.9000", "1.9000", 2, 1, "1.9000"),
        ("10:03", "1.9000", "1.9000", "1.9000", "1.9000", 0, 0, None),
    ]


def test_a_range_after_the_last_trade_carries_the_previous_close(instrument, market):
    market(at(10, 0, 10), "2.00", 3)
    market(at(10, 0, 50), "2.10", 1)
    candles = instrument_candles(instrument=instrument, interval="1m", start=at(10, 1), end=at(10, 3))
    assert rows(candles) == [
        ("10:01", "2.1000", "2.1000", "2.1000", "2.1000", 0, 0, None),
        ("10:02", "2.1000", "2.1000", "2.1000", "2.1000", 0, 0, None),
    ]


def test_a_single_trade_is_its_own_open_high_low_close_and_vwap(instrument, market):
    market(at(13, 45, 7), "3.33", 5)
    for interval in ("1m", "1h", "1d"):
        candles = instrument_candles(instrument=instrument, interval=interval, start=at(13, 45), end=at(13, 46))
        assert [
            (str(c.open), str(c.high), str(c.low), str(c.close), c.volume, c.trades, str(c.vwap)) for c in candles
        ] == [("3.3300", "3.3300", "3.3300", "3.3300", 5_000_000, 1, "3.3300")], interval


def test_hourly_and_daily_buckets_aggregate_in_the_database(instrument, market):
    market(at(9, 59, 59), "1.00", 1)
    market(at(10, 0, 0), "2.00", 1)  # first trade of the 10:00 hour
    market(at(10, 30), "4.00", 2)
    market(at(10, 59, 59), "3.00", 1)  # last of the hour
    market(at(0, 0, 0, day=DAY + dt.timedelta(days=1)), "5.00", 4)
    hourly = instrument_candles(instrument=instrument, interval="1h", start=at(9, 0), end=at(11, 0))
    # 10:00 VWAP = (2 + 4 x 2 + 3) / 4 = 3.25
    assert rows(hourly) == [
        ("09:00", "1.0000", "1.0000", "1.0000", "1.0000", 1, 1, "1.0000"),
        ("10:00", "2.0000", "4.0000", "2.0000", "3.0000", 4, 3, "3.2500"),
    ]
    daily = instrument_candles(instrument=instrument, interval="1d", start=DAY, end=DAY + dt.timedelta(days=2))
    # Day 1 VWAP = (1 + 2 + 8 + 3) / 5 = 2.80; day 2 a single trade at 5.00.
    assert [(c.start.date().isoformat(), str(c.open), str(c.close), c.volume // 10**6, str(c.vwap)) for c in daily] == [
        ("2026-01-05", "1.0000", "3.0000", 5, "2.8000"),
        ("2026-01-06", "5.0000", "5.0000", 4, "5.0000"),
    ]


def test_open_and_close_follow_the_match_sequence_within_one_timestamp(instrument, market):
    same = at(12, 0, 0)
    market(same, "2.50", 1)
    market(same, "2.40", 1)
    market(same, "2.60", 1)
    [c] = instrument_candles(instrument=instrument, interval="1m", start=at(12, 0), end=at(12, 1))
    assert (c.open, c.close, c.high, c.low) == (D("2.50"), D("2.60"), D("2.60"), D("2.40"))


def test_24h_stats_volume_vwap_and_spread(instrument, market):
    now = at(18, 0)
    market(now - dt.timedelta(hours=25), "9.00", 10)  # outside the window
    market(now - dt.timedelta(hours=20), "2.00", 2)
    market(now - dt.timedelta(hours=1), "2.30", 1)
    market(now - dt.timedelta(minutes=5), "2.10", 1)
    InstrumentBook.objects.filter(pk=instrument.pk).update(
        last_price=D("2.10"), best_bid=D("2.05"), best_ask=D("2.20"), last_trade_at=now - dt.timedelta(minutes=5)
    )
    instrument.refresh_from_db()
    s = instrument_stats(instrument=instrument, now=now)
    # VWAP = (2.00 x 2 + 2.30 + 2.10) / 4 = 2.10
    assert (s.volume_24h, s.trades_24h, s.vwap_24h) == (4_000_000, 3, D("2.1000"))
    assert (s.open_24h, s.high_24h, s.low_24h, s.change_24h) == (D("2.00"), D("2.30"), D("2.00"), D("0.10"))
    assert (s.best_bid, s.best_ask, s.spread, s.mid) == (D("2.05"), D("2.20"), D("0.15"), D("2.125"))


def test_stats_of_a_book_without_trades(instrument):
    s = instrument_stats(instrument=instrument)
    assert (s.last_price, s.volume_24h, s.vwap_24h, s.spread, s.change_24h) == (None, 0, None, None, None)


def test_candles_api(instrument, market):
    market(at(10, 0, 10), "2.00", 3)
    api = APIClient()
    r = api.get(
        f"/api/v1/instruments/{instrument.symbol}/candles",
        {"interval": "1m", "from": "2026-01-05T10:00:00Z", "to": "2026-01-05T10:02:00Z"},
    )
    assert r.status_code == 200, r.json()
    assert r.json()["candles"] == [
        {
            "start": "2026-01-05T10:00:00.000000Z",
            "open": "2.00",
            "high": "2.00",
            "low": "2.00",
            "close": "2.00",
            "volume": 3_000_000,
            "trades": 1,
            "vwap": "2.00",
        },
        {
            "start": "2026-01-05T10:01:00.000000Z",
            "open": "2.00",
            "high": "2.00",
            "low": "2.00",
            "close": "2.00",
            "volume": 0,
            "trades": 0,
            "vwap": None,
        },
    ]
    r = api.get(f"/api/v1/instruments/{instrument.symbol}/stats")
    assert r.status_code == 200 and r.json()["instrument"] == instrument.symbol


@pytest.mark.parametrize(
    "params, code",
    [
        ({"interval": "5m"}, "invalid_interval"),
        ({"interval": "1m", "from": "yesterday"}, "invalid_parameter"),
        ({"interval": "1m", "from": "2026-01-05T10:00:00Z", "to": "2026-01-05T09:00:00Z"}, "invalid_range"),
        ({"interval": "1m", "from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "range_too_large"),
    ],
)
def test_candles_api_refuses_bad_parameters(instrument, params, code):
    r = APIClient().get(f"/api/v1/instruments/{instrument.symbol}/candles", params)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_candles_of_an_unknown_instrument_is_404(catalog):
    r = APIClient().get("/api/v1/instruments/standard:nowhere:2026-01-01/candles")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_instrument"
