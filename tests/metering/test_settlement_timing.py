"""Settlement waits for the delivery period's end plus the grace period, through every door.

Each door (the service, the due sweep, the periodic Celery task, `manage.py settle`) is driven
with a fixed clock at, just before and just after `delivery_end + SETTLEMENT_GRACE_HOURS`:
one microsecond early nothing settles and nothing is written; at the boundary and after it,
the contract settles once. `settle --period DATE` re-runs a past period and settles nothing
twice (counted in Settlement rows and ledger entries).
"""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from config.celery import app as celery_app
from marketplace.models import Instrument
from marketplace.services import ServiceError
from metering import tasks
from metering.models import LedgerEntry, LedgerTransaction, Settlement
from metering.settlement import instrument_settle, settlements_run_due
from metering.usage import usage_ingest

from .builders import contract, event, spot_instrument

pytestmark = pytest.mark.django_db

JUST = dt.timedelta(microseconds=1)
OFFSETS = {"just before": -JUST, "at": dt.timedelta(0), "just after": dt.timedelta(seconds=1)}


@pytest.fixture(autouse=True)
def grace(settings):
    # A grace period long enough that "period end" and "period end + grace" are far apart.
    settings.SETTLEMENT_GRACE_HOURS = 6
    settings.MAKER_FEE_BPS = 5
    settings.TAKER_FEE_BPS = 10


@pytest.fixture
def clock(monkeypatch):
    """A fixed clock for every `timezone.now()` (services, tasks, commands, auto_now fields)."""

    def set_to(when: dt.datetime) -> None:
        monkeypatch.setattr("django.utils.timezone.now", lambda: when)

    return set_to


@pytest.fixture
def delivered(catalog, buyer, provider):
    """One contract of 10 Mtok with 4 Mtok delivered; the period ends in two hours."""
    inst = spot_instrument(tier="standard", hours_left=2)
    trade = contract(buyer, provider, inst, 10, "1.20")
    assert usage_ingest(provider=provider, events=[event(buyer, inst, prompt=4_000_000)]).count("accepted") == 1
    return inst, trade


def boundary(inst: Instrument) -> dt.datetime:
    # Computed here from the spec (period end + grace), not from settlement_due_at.
    return inst.delivery_end + dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS)


def money_rows() -> tuple[int, int, int]:
    return Settlement.objects.count(), LedgerTransaction.objects.count(), LedgerEntry.objects.count()


def assert_settled_once(inst: Instrument, trade, before: tuple[int, int, int]) -> None:
    assert Settlement.objects.filter(trade=trade).count() == 1
    assert LedgerTransaction.objects.filter(key=f"settle:{trade.pk}").count() == 1
    # One settlement transaction (escrow out; refund, payout and fees in).
    after = money_rows()
    assert after[:2] == (before[0] + 1, before[1] + 1) and after[2] > before[2]
    inst.refresh_from_db()
    assert inst.status == Instrument.Status.SETTLED


def assert_untouched(inst: Instrument, before: tuple[int, int, int]) -> None:
    assert money_rows() == before
    inst.refresh_from_db()
    assert inst.status == Instrument.Status.OPEN


def test_the_grace_period_is_six_hours_by_default_and_the_boundary_is_after_the_period_end(delivered):
    inst, _ = delivered
    assert boundary(inst) - inst.delivery_end == dt.timedelta(hours=6)
    assert boundary(inst) > inst.delivery_end > inst.delivery_start


@pytest.mark.parametrize("where", OFFSETS)
def test_the_settle_service_refuses_before_period_end_plus_grace(delivered, clock, where):
    inst, trade = delivered
    before = money_rows()
    now = boundary(inst) + OFFSETS[where]
    clock(now)
    if where == "just before":
        with pytest.raises(ServiceError) as exc:
            instrument_settle(instrument_id=inst.pk)
        assert exc.value.code == "not_due" and exc.value.status == 409
        assert_untouched(inst, before)
        # Also with the time passed explicitly, as the other callers do.
        with pytest.raises(ServiceError):
            instrument_settle(instrument_id=inst.pk, now=now)
        assert_untouched(inst, before)
    else:
        report = instrument_settle(instrument_id=inst.pk)
        assert (report.contracts, report.delivered_tokens) == (1, 4_000_000)
        assert_settled_once(inst, trade, before)


def test_the_settle_service_refuses_at_every_earlier_moment_of_the_period(delivered, clock):
    inst, _ = delivered
    before = money_rows()
    for when in (
        inst.delivery_start,
        inst.delivery_end - JUST,
        inst.delivery_end,
        inst.delivery_end + dt.timedelta(hours=5, minutes=59),
    ):
        clock(when)
        with pytest.raises(ServiceError):
            instrument_settle(instrument_id=inst.pk)
        assert settlements_run_due().contracts == 0
    assert_untouched(inst, before)


@pytest.mark.parametrize("where", OFFSETS)
def test_the_due_sweep_settles_only_from_period_end_plus_grace(delivered, clock, where):
    inst, trade = delivered
    before = money_rows()
    clock(boundary(inst) + OFFSETS[where])
    report = settlements_run_due()
    if where == "just before":
        assert report.contracts == 0
        assert_untouched(inst, before)
    else:
        assert report.contracts == 1
        assert_settled_once(inst, trade, before)


def test_the_periodic_task_is_scheduled():
    assert any(e["task"] == "metering.tasks.settle_due" for e in settings.CELERY_BEAT_SCHEDULE.values())


@pytest.mark.parametrize("where", OFFSETS)
def test_the_periodic_task_settles_only_from_period_end_plus_grace(delivered, clock, monkeypatch, where):
    inst, trade = delivered
    before = money_rows()
    # The beat runs settle_due, which fans out settle_instrument through the broker; here the
    # fan-out runs in process (eager), the task bodies are the real ones.
    monkeypatch.setitem(celery_app.conf, "CELERY_TASK_ALWAYS_EAGER", True)  # the namespaced key
    clock(boundary(inst) + OFFSETS[where])
    result = tasks.settle_due()
    if where == "just before":
        assert result == {"enqueued": 0}
        assert_untouched(inst, before)
        # A settle_instrument message that arrives early (a stale or hand-sent one) settles nothing.
        with pytest.raises(ServiceError):
            tasks.settle_instrument(inst.pk)
        assert_untouched(inst, before)
    else:
        assert result == {"enqueued": 1}
        assert_settled_once(inst, trade, before)


@pytest.mark.parametrize("where", OFFSETS)
def test_the_settle_command_settles_only_from_period_end_plus_grace(delivered, clock, where):
    inst, trade = delivered
    before = money_rows()
    clock(boundary(inst) + OFFSETS[where])
    out = StringIO()
    call_command("settle", stdout=out)
    if where == "just before":
        assert "settled 0 contracts on 0 instruments" in out.getvalue()
        assert_untouched(inst, before)
    else:
        assert "settled 1 contracts on 1 instruments" in out.getvalue()
        assert_settled_once(inst, trade, before)


@pytest.mark.parametrize("where", OFFSETS)
def test_settle_period_waits_for_period_end_plus_grace(delivered, clock, where):
    inst, trade = delivered
    before = money_rows()
    clock(boundary(inst) + OFFSETS[where])
    out = StringIO()
    call_command("settle", "--period", inst.delivery_date.isoformat(), stdout=out)
    if where == "just before":
        assert f"not due: {inst.symbol}" in out.getvalue()
        assert "settled 0 contracts" in out.getvalue()
        assert_untouched(inst, before)
    else:
        assert f"not due: {inst.symbol}" not in out.getvalue()
        assert_settled_once(inst, trade, before)


def test_settle_period_re_runs_a_past_period_and_settles_nothing_twice(catalog, buyer, other_buyer, provider, clock):
    # Two instruments of the same delivery day, three contracts; one instrument was already
    # settled by the periodic task, the other is left for the operator's re-run.
    first = spot_instrument(tier="standard", hours_left=2)
    second = spot_instrument(tier="economy", hours_left=2)
    assert first.delivery_date == second.delivery_date
    contract(buyer, provider, first, 5, "1.00")
    contract(other_buyer, provider, first, 3, "1.10")
    contract(buyer, provider, second, 7, "0.80")
    usage_ingest(
        provider=provider, events=[event(buyer, first, prompt=2_000_000), event(buyer, second, prompt=1_000_000)]
    )

    clock(boundary(first) + dt.timedelta(days=3))
    instrument_settle(instrument_id=first.pk)
    assert Settlement.objects.count() == 2
    first_rows = sorted(LedgerEntry.objects.filter(transaction__key__startswith="settle:").values_list("id", "amount"))
    assert len(first_rows) >= 2 * 3

    day = first.delivery_date.isoformat()
    out = StringIO()
    call_command("settle", "--period", day, stdout=out)
    assert "settled 1 contracts on " in out.getvalue()  # every instrument of the day is visited
    assert Settlement.objects.count() == 3
    settle_entries = LedgerEntry.objects.filter(transaction__key__startswith="settle:")
    assert settle_entries.count() > len(first_rows)
    # The first instrument's settlement entries are the same rows, untouched.
    assert (
        sorted(settle_entries.filter(transaction__settlement__trade__instrument=first).values_list("id", "amount"))
        == first_rows
    )
    after = money_rows()

    for _ in range(2):
        out = StringIO()
        call_command("settle", "--period", day, stdout=out)
        assert "settled 0 contracts" in out.getvalue()
        assert money_rows() == after
    for inst in (first, second):
        inst.refresh_from_db()
        assert inst.status == Instrument.Status.SETTLED
    # Every contract has exactly one settlement transaction.
    assert sorted(Settlement.objects.values_list("trade_id", flat=True)) == sorted(
        set(Settlement.objects.values_list("trade_id", flat=True))
    )


def test_settle_period_of_a_day_with_nothing_settles_nothing(catalog, delivered, clock):
    inst, _ = delivered
    before = money_rows()
    clock(boundary(inst) + dt.timedelta(days=1))
    out = StringIO()
    call_command("settle", "--period", (inst.delivery_date - dt.timedelta(days=30)).isoformat(), stdout=out)
    assert "settled 0 contracts on 0 instruments" in out.getvalue()
    assert_untouched(inst, before)


@pytest.mark.parametrize("args", [["--period", "yesterday"], ["--period", "2026-13-01"], ["--chunk", "0"]])
def test_settle_with_bad_arguments_is_a_clear_error_and_settles_nothing(delivered, clock, args):
    inst, _ = delivered
    before = money_rows()
    clock(boundary(inst) + dt.timedelta(days=1))
    with pytest.raises(CommandError) as exc:
        call_command("settle", *args, stdout=StringIO())
    assert ("--period" in str(exc.value)) or ("--chunk" in str(exc.value))
    assert_untouched(inst, before)


def test_a_provider_cannot_settle_by_reporting_late(delivered, clock, provider, buyer):
    # Usage reported during the grace period does not make the contract settle earlier.
    inst, _ = delivered
    clock(inst.delivery_end + dt.timedelta(hours=1))
    assert (
        usage_ingest(
            provider=provider, events=[event(buyer, inst, prompt=1_000_000, at=inst.delivery_end - JUST)]
        ).count("accepted")
        == 1
    )
    assert settlements_run_due().contracts == 0
    assert Settlement.objects.count() == 0
