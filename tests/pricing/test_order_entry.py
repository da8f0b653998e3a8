"""Order entry takes no instrument-wide lock, and a worker's resident book reloads only when
the book changed outside the matcher.

The lock test runs real threads on their own PostgreSQL connections (SQLite ignores row locks,
so it would prove nothing): with one placement's transaction held open, a second placement on
the same instrument commits. The second runs with a lock_timeout, so if it ever waited for the
first it fails with a lock error instead of hanging.
"""

from __future__ import annotations

import threading
from decimal import Decimal as D

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from marketplace import services as market
from marketplace.models import Instrument, InstrumentBook, Order, OrderStatus
from pricing import matcher
from pricing.matcher import instrument_match
from pricing.replay import instrument_replay, instrument_trades
from tests import factories
from tests.invariants import assert_invariants
from tests.web.conftest import otp_verified

FUNDS = D("100000.00")


def _funded_buyer():
    acct = factories.AccountFactory(is_buyer=True)
    factories.fund(acct, FUNDS)
    return acct


@pytest.mark.postgres
@pytest.mark.parametrize("second_side", ["buy", "sell"])
def test_a_placement_commits_while_another_on_the_same_instrument_holds_its_transaction_open(
    transactional_db, second_side
):
    factories.seed_catalog()
    inst = factories.open_instrument()
    first_buyer = _funded_buyer()
    second = _funded_buyer() if second_side == "buy" else factories.AccountFactory(is_buyer=False, is_provider=True)
    placed, release, done = threading.Event(), threading.Event(), threading.Event()
    first: dict = {}

    def hold_open() -> None:
        try:
            with transaction.atomic():
                first["order"] = factories.place(first_buyer, inst, "buy", 5, "1.00")
                placed.set()
                release.wait(timeout=120)  # holds the order row and the buyer's ledger rows
        except Exception as exc:  # reported by the test
            first["error"] = exc
            placed.set()
        finally:
            connections.close_all()
            done.set()

    holder = threading.Thread(target=hold_open, daemon=True)
    holder.start()
    try:
        assert placed.wait(timeout=120) and "error" not in first, first
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '10s'")
        # A placement on the same instrument, committed while the first is still open.
        other = factories.place(second, inst, second_side, 3, "1.10")
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = 0")
        assert Order.objects.filter(pk=other.pk).exists()
        assert not Order.objects.filter(pk=first["order"].pk).exists()  # not committed yet
    finally:
        release.set()
        done.wait(timeout=120)
    assert Order.objects.filter(instrument=inst, pending_match=True).count() == 2
    instrument_match(instrument_id=inst.pk)
    assert not Order.objects.filter(instrument=inst, sequence__isnull=True).exists()
    assert instrument_replay(instrument_id=inst.pk) == instrument_trades(instrument_id=inst.pk)
    assert_invariants()


def _batch(inst) -> tuple[int, dict]:
    """Match once; (queries run, resident-book counters moved)."""
    before = dict(matcher.resident_stats)
    with CaptureQueriesContext(connection) as ctx:
        assert instrument_match(instrument_id=inst.pk).processed > 0
    moved = {k: matcher.resident_stats[k] - before.get(k, 0) for k in ("loaded", "reused")}
    return len(ctx.captured_queries), moved


def test_the_resident_book_is_reused_between_batches_and_reloaded_after_an_outside_change(
    transactional_db, client, django_user_model
):
    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer, provider = _funded_buyer(), factories.AccountFactory(is_buyer=False, is_provider=True)
    resting = factories.place(buyer, inst, "buy", 5, "1.00")
    assert _batch(inst)[1] == {"loaded": 1, "reused": 0}  # a cold process loads the book once

    # Batches of the same shape (one sell that crosses nothing): warm, then warm again.
    factories.place(provider, inst, "sell", 1, "2.00")
    warm, moved = _batch(inst)
    assert moved == {"loaded": 0, "reused": 1}
    factories.place(provider, inst, "sell", 1, "2.01")
    assert _batch(inst) == (warm, {"loaded": 0, "reused": 1})

    # An operator cancels an order in admin: applied outside the matcher, the version moves,
    # and the next batch reads the book again (one query more: the resting orders).
    ops = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-1234")
    client.force_login(ops)
    otp_verified(client, ops)  # admin asks staff for a second factor
    victim = factories.place(buyer, inst, "buy", 1, "0.90")
    assert _batch(inst)[1] == {"loaded": 0, "reused": 1}
    version = InstrumentBook.objects.get(pk=inst.pk).version
    r = client.post("/admin/marketplace/order/", {"action": "cancel", "_selected_action": [victim.pk]})
    assert r.status_code == 302
    victim.refresh_from_db()
    assert victim.status == OrderStatus.CANCELLED
    assert InstrumentBook.objects.get(pk=inst.pk).version == version + 1
    factories.place(provider, inst, "sell", 1, "2.02")
    assert _batch(inst) == (warm + 1, {"loaded": 1, "reused": 0})
    factories.place(provider, inst, "sell", 1, "2.03")
    assert _batch(inst) == (warm, {"loaded": 0, "reused": 1})

    # A halt and a resume move the version too.
    market.instrument_set_status(instrument=inst, status=Instrument.Status.HALTED)
    market.instrument_set_status(instrument=inst, status=Instrument.Status.OPEN)
    factories.place(provider, inst, "sell", 1, "2.04")
    assert _batch(inst) == (warm + 1, {"loaded": 1, "reused": 0})

    # Another worker matching the instrument moves its sequence: this one's book is stale.
    factories.place(provider, inst, "sell", 1, "2.05")
    saved = dict(matcher.resident_books)
    matcher.resident_books_clear()
    _batch(inst)  # "the other worker"
    matcher.resident_books.update(saved)
    factories.place(provider, inst, "sell", 1, "2.06")
    assert _batch(inst)[1] == {"loaded": 1, "reused": 0}

    # The warm book matched exactly what a fresh read would: replay agrees, and a buy that
    # crosses the asks fills against them at their prices.
    taker = factories.place(buyer, inst, "buy", 3, "2.02")
    _batch(inst)
    taker.refresh_from_db()
    assert taker.status == OrderStatus.FILLED
    resting.refresh_from_db()
    assert resting.status == OrderStatus.OPEN
    assert instrument_replay(instrument_id=inst.pk) == instrument_trades(instrument_id=inst.pk)
    assert_invariants()


def test_a_failed_batch_leaves_no_resident_book_behind(transactional_db, monkeypatch):
    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer, provider = _funded_buyer(), factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.place(buyer, inst, "buy", 5, "1.00")
    instrument_match(instrument_id=inst.pk)
    assert inst.pk in matcher.resident_books
    factories.place(provider, inst, "sell", 2, "1.00")

    def boom(**kwargs):
        raise RuntimeError("the database went away mid-batch")

    monkeypatch.setattr(matcher.book_rows, "trades_insert", boom)
    with pytest.raises(RuntimeError):
        instrument_match(instrument_id=inst.pk)
    # The engine already filled the order in memory; that book must not survive the rollback.
    assert inst.pk not in matcher.resident_books
    monkeypatch.undo()
    assert _batch(inst)[1] == {"loaded": 1, "reused": 0}
    assert instrument_replay(instrument_id=inst.pk) == instrument_trades(instrument_id=inst.pk) != []
    assert_invariants()
