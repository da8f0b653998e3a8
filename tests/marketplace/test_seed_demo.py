"""The demo market: regional prices follow electricity, demo keys survive a restart, a month of
history built by the simulation through the real services, and the live simulation's tick."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import F, Min

from marketplace import services
from marketplace.models import Order
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db


def test_demo_keys_are_the_same_after_a_restart_and_work(tmp_path):
    key_file = tmp_path / "keys.txt"
    call_command("seed_demo", key_file=str(key_file), days=0, stdout=StringIO())
    first = key_file.read_text()
    out = StringIO()
    call_command("seed_demo", key_file=str(key_file), days=0, stdout=out)
    assert key_file.read_text() == first
    for line in first.splitlines():
        raw = line.split(": ", 1)[1]
        assert services.api_key_authenticate(raw=raw) is not None, line
        assert raw in out.getvalue()
    # A lost key file gives new keys and revokes the old ones.
    key_file.unlink()
    call_command("seed_demo", key_file=str(key_file), days=0, stdout=StringIO())
    old = first.splitlines()[0].split(": ", 1)[1]
    assert services.api_key_authenticate(raw=old) is None
    assert_invariants()


def test_cheap_power_regions_list_cheaper_capacity(tmp_path):
    call_command("seed_demo", key_file=str(tmp_path / "k.txt"), days=0, stdout=StringIO())
    best_ask = dict(
        Order.objects.filter(side="sell", instrument__tier__code="standard")
        .values_list("instrument__region__code")
        .annotate(p=Min("price"))
    )
    assert best_ask["cn-west-1"] < best_ask["us-east-1"]
    assert best_ask["cn-west-1"] < best_ask["eu-central-1"]
    assert len(set(best_ask.values())) > 1  # no two regions share one book any more


def _history_seed(tmp_path, monkeypatch, days: int = 3) -> str:
    # One detailed (intraday) day and the rest light: both paths of the simulation, quickly.
    monkeypatch.setattr("marketplace.simulation.DETAILED_DAYS", 1)
    out = StringIO()
    call_command("seed_demo", key_file=str(tmp_path / "k.txt"), days=days, stdout=out)
    return out.getvalue()


def _history_counts() -> tuple[int, ...]:
    from marketplace.models import Trade
    from metering.models import LedgerEntry, Settlement, UsageEvent
    from pricing.models import IndexValue

    return tuple(
        m.objects.count() for m in (Order, Trade, Settlement, UsageEvent, LedgerEntry, IndexValue)
    )


def test_seed_builds_a_settled_indexed_history_that_obeys_the_invariants(tmp_path, monkeypatch):
    import datetime as dt

    from django.db.models import Sum
    from django.db.models.functions import ExtractHour
    from django.utils import timezone

    from marketplace.models import Instrument, Trade
    from metering.models import Settlement, UsageEvent
    from pricing.models import IndexValue

    out = _history_seed(tmp_path, monkeypatch)
    today = timezone.now().date()
    past = [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    assert "history " + past[0].isoformat() in out and "demo history: " in out  # progress is shown
    for day in past:
        trades = Trade.objects.filter(instrument__delivery_date=day)
        assert trades.exists(), day
        # Executed during their own delivery day, by the matcher with the simulated clock.
        assert {t.executed_at.date() for t in trades} == {day}
        assert IndexValue.objects.filter(day=day, is_final=True).count() == 4, day  # every tier
    yesterday_due = timezone.now() >= dt.datetime.combine(today, dt.time(6, 1), tzinfo=dt.UTC)
    settled_days = past if yesterday_due else past[:-1]
    for day in settled_days:
        assert not Trade.objects.filter(instrument__delivery_date=day, settlement__isnull=True).exists(), day
        assert set(Instrument.objects.filter(delivery_date=day).values_list("status", flat=True)) == {"settled"}
    assert UsageEvent.objects.filter(instrument__delivery_date__in=past).exists()
    # Some contracts were under-delivered: the buyer got part of the escrow back for them.
    assert Settlement.objects.filter(delivered_tokens__lt=F("trade__quantity")).exists()

    # The model: cn-west is cheapest, frontier draws more volume than batch, and the peak hour
    # trades more than the early morning.
    def vwap(**filters):
        rows = Trade.objects.filter(instrument__delivery_date__in=past, **filters).values_list("price", "quantity")
        return sum(p * q for p, q in rows) / sum(q for _, q in rows)

    for tier in ("frontier", "standard"):
        if Trade.objects.filter(instrument__tier__code=tier, instrument__region__code="us-east-1", instrument__delivery_date__in=past).exists():
            assert vwap(instrument__tier__code=tier, instrument__region__code="cn-west-1") < vwap(
                instrument__tier__code=tier, instrument__region__code="us-east-1"
            )
    volume = dict(
        Trade.objects.filter(instrument__delivery_date=past[-1]).values_list("instrument__tier__code").annotate(v=Sum("quantity"))
    )
    assert volume["frontier"] > volume["batch"]
    by_hour = dict(
        Trade.objects.filter(instrument__delivery_date=past[-1])
        .annotate(h=ExtractHour("executed_at")).values_list("h").annotate(v=Sum("quantity"))
    )
    assert by_hour[14] > by_hour[4]
    assert_invariants()


def test_seeding_again_adds_no_history(tmp_path, monkeypatch):
    _history_seed(tmp_path, monkeypatch, days=2)
    before = _history_counts()
    out = _history_seed(tmp_path, monkeypatch, days=2)
    assert _history_counts() == before
    assert "demo history: " not in out
    assert_invariants()


def test_a_live_tick_places_and_cancels_real_orders_and_reports_usage(tmp_path, monkeypatch):
    import datetime as dt
    import random

    from django.utils import timezone

    from marketplace.models import Instrument, Trade
    from marketplace.simulation import LIVE_PREFIX, demo_simulation_tick
    from metering.models import UsageEvent
    from pricing.services import instrument_match

    call_command("seed_demo", key_file=str(tmp_path / "k.txt"), days=0, stdout=StringIO())
    monkeypatch.setattr("marketplace.simulation.LIVE_BOOKS_PER_TICK", 20)
    monkeypatch.setattr("marketplace.simulation.LIVE_ORDERS_PER_BOOK", 2)
    now = timezone.now()
    start = dt.datetime.combine(now.date(), dt.time.min, tzinfo=dt.UTC)
    first_at = max(start + dt.timedelta(seconds=30), now - dt.timedelta(minutes=10))
    books = list(Instrument.objects.filter(delivery_date=now.date()).values_list("id", flat=True))

    first = demo_simulation_tick(now=first_at, rng=random.Random(7))
    assert first.placed >= 20 and not first.refused, first
    live = Order.objects.filter(client_order_id__startswith=LIVE_PREFIX)
    assert live.count() == first.placed
    for inst_id in books:
        instrument_match(instrument_id=inst_id, now=first_at)
    assert Trade.objects.filter(buy_order__client_order_id__startswith=LIVE_PREFIX).exists()  # some crossed

    second = demo_simulation_tick(now=now, rng=random.Random(8))
    assert second.cancelled > 0 and second.placed > 0
    for inst_id in books:
        instrument_match(instrument_id=inst_id, now=now)
    assert live.filter(status="cancelled", status_reason="cancelled_by_user").exists()
    if now - start > dt.timedelta(minutes=15):  # some of the day has gone: usage is due
        assert second.usage_events > 0
        assert UsageEvent.objects.filter(event_id__startswith=LIVE_PREFIX).count() == second.usage_events
    assert_invariants()


def test_the_task_does_nothing_unless_the_simulation_is_on(tmp_path, settings):
    from marketplace.tasks import simulate_demo_market

    call_command("seed_demo", key_file=str(tmp_path / "k.txt"), days=0, stdout=StringIO())
    orders = Order.objects.count()
    settings.DEMO_SIMULATION = False
    assert simulate_demo_market() == {"skipped": "DEMO_SIMULATION is off"}
    assert Order.objects.count() == orders
    settings.DEMO_SIMULATION = True
    result = simulate_demo_market()
    assert result["placed"] > 0 and Order.objects.count() == orders + result["placed"]
