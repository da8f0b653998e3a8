"""The Token Price Index equals a hand computation, is published by its task, and has history."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.models import Trade
from pricing.index import index_publish
from pricing.models import IndexValue
from pricing.services import instrument_match
from pricing.tasks import index_publish as index_publish_task
from tests import factories

pytestmark = pytest.mark.django_db
D = Decimal
UTC = dt.UTC
DAY1 = dt.date(2026, 3, 1)
DAY2 = dt.date(2026, 3, 2)


def t(day, hh=12):
    return dt.datetime.combine(day, dt.time(hh), tzinfo=UTC)


@pytest.fixture
def trades(catalog, buyer, provider):
    """Real fills on several books (a resting sell taken by a buy, matched), dated `when` afterwards."""

    def trade(tier, region, when, price, mtok, hardware="h100", delivery_offset=1):
        # The books deliver in the future (they take orders); the trades are dated in the past.
        inst = factories.open_instrument(
            tier=tier, region=region, day=timezone.now().date() + dt.timedelta(days=delivery_offset)
        )
        factories.place(provider, inst, "sell", mtok, price, hardware=hardware)
        factories.place(buyer, inst, "buy", mtok, price)
        instrument_match(instrument_id=inst.pk)
        fill = Trade.objects.filter(instrument=inst).latest("match_sequence")
        Trade.objects.filter(pk=fill.pk).update(executed_at=when)
        return fill

    return trade


def test_index_is_the_volume_weighted_price_over_regions_and_hardware(trades):
    # Standard tier on day 1, three regions, two delivery dates:
    #   2.00 x 10 + 2.60 x 5 + 1.80 x 5 = 20 + 13 + 9 = 42 over 20 Mtok = 2.10
    trades("standard", "cn-west-1", t(DAY1, 1), "2.00", 10)
    trades("standard", "us-east-1", t(DAY1, 9), "2.60", 5, hardware="b200")
    trades("standard", "eu-central-1", t(DAY1, 23), "1.80", 5, delivery_offset=3)
    # Frontier on day 1: a single trade is its own index.
    trades("frontier", "cn-west-1", t(DAY1), "8.25", 3)
    # Day 2 (provisional when "now" is day 2): standard 2.00 x 1 + 2.01 x 2 = 6.02 / 3 = 2.006666.. -> 2.0067
    trades("standard", "cn-west-1", t(DAY2, 0), "2.00", 1)
    trades("standard", "cn-east-1", t(DAY2, 3), "2.01", 2)

    published = index_publish(now=t(DAY2, 6))
    assert len(published) == 3
    got = {
        (v.tier.code, v.day): (v.value, v.volume, v.trades, v.instruments, v.is_final) for v in IndexValue.objects.all()
    }
    assert got == {
        ("standard", DAY1): (D("2.1000"), 20_000_000, 3, 3, True),
        ("frontier", DAY1): (D("8.2500"), 3_000_000, 1, 1, True),
        ("standard", DAY2): (D("2.0067"), 3_000_000, 2, 2, False),
    }
    # The day ends with no further trade: the next run makes day 2 final, value unchanged.
    index_publish(now=t(DAY2 + dt.timedelta(days=1), 0))
    v = IndexValue.objects.get(tier__code="standard", day=DAY2)
    assert (v.value, v.is_final) == (D("2.0067"), True)
    # Idempotent: publishing again changes nothing.
    index_publish(now=t(DAY2 + dt.timedelta(days=1), 1))
    assert IndexValue.objects.count() == 3


def test_a_day_without_trades_has_no_value(trades):
    trades("batch", "cn-west-1", t(DAY1), "0.30", 1)
    trades("batch", "cn-west-1", t(DAY1 + dt.timedelta(days=2)), "0.40", 1)
    index_publish(now=t(DAY1 + dt.timedelta(days=3)))
    assert list(IndexValue.objects.filter(tier__code="batch").order_by("day").values_list("day", "value")) == [
        (DAY1, D("0.3000")),
        (DAY1 + dt.timedelta(days=2), D("0.4000")),
    ]


def test_the_periodic_task_publishes(trades):
    trades("economy", "cn-west-1", dt.datetime.now(UTC) - dt.timedelta(minutes=1), "0.55", 2)
    assert index_publish_task() == {"published": 1}
    assert IndexValue.objects.get(tier__code="economy").value == D("0.5500")


def test_index_api_latest_and_history(trades):
    trades("standard", "cn-west-1", t(DAY1), "2.00", 1)
    trades("standard", "cn-west-1", t(DAY2), "2.20", 1)
    trades("frontier", "cn-west-1", t(DAY1), "8.00", 1)
    index_publish(now=t(DAY2 + dt.timedelta(days=1)))
    api = APIClient()
    body = api.get("/api/v1/index").json()
    assert {(r["tier"], r["day"], r["value"]) for r in body["latest"]} == {
        ("standard", "2026-03-02", "2.20"),
        ("frontier", "2026-03-01", "8.00"),
    }
    assert "history" not in body and body["methodology"]
    r = api.get("/api/v1/index", {"tier": "standard", "from": "2026-03-01", "to": "2026-03-02"})
    assert [(h["day"], h["value"], h["volume"], h["final"]) for h in r.json()["history"]] == [
        ("2026-03-01", "2.00", 1_000_000, True),
        ("2026-03-02", "2.20", 1_000_000, True),
    ]
    assert (
        api.get("/api/v1/index", {"tier": "standard", "from": "2026-03-02", "to": "2026-03-02"}).json()["history"][0][
            "day"
        ]
        == "2026-03-02"
    )
    assert api.get("/api/v1/index", {"tier": "gold"}).status_code == 404
    assert (
        api.get("/api/v1/index", {"tier": "standard", "from": "March"}).json()["error"]["code"] == "invalid_parameter"
    )
    assert api.get("/api/v1/index", {"from": "2026-03-01"}).status_code == 400
