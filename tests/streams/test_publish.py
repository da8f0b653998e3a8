"""The publisher in process: initial state plus every message equals a fresh read of the book
(Zulip's event test), message numbering, account messages, and nothing from a rollback."""

from __future__ import annotations

import pytest
from django.db import transaction

from marketplace.market_snapshot import snapshot_build
from marketplace.models import InstrumentBook, Order
from pricing.book_rows import book_top_refresh
from pricing.matcher import instrument_match
from streams.models import StreamChannel, StreamEvent
from streams.publish import account_channel, levels_state, market_channel
from streams.selectors import stream_account_snapshot, stream_market_snapshot
from tests import factories


def apply(book: dict, events: list[StreamEvent]) -> dict:
    for e in events:
        if e.type == "depth":
            for side in ("bids", "asks"):
                for level in e.data[side]:
                    if level[1]:
                        book[side][level[0]] = level
                    else:
                        book[side].pop(level[0], None)
    return book


def as_book(state: dict) -> dict:
    return {side: {lv[0]: lv for lv in state[side]} for side in ("bids", "asks")}


def fresh(instrument) -> dict:
    snap = snapshot_build(instrument_id=instrument.pk)
    return as_book({"bids": levels_state(snap.bids), "asks": levels_state(snap.asks)})


def match(instrument) -> None:
    with django_on_commit():
        instrument_match(instrument_id=instrument.pk)


class django_on_commit:  # noqa: N801 (reads as a block)
    """Run on-commit callbacks of the block at its end, as a real commit would (db fixture)."""

    def __enter__(self):
        from django.test import TestCase

        self._ctx = TestCase.captureOnCommitCallbacks(execute=True)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_plus_the_messages_after_it_is_the_book(instrument, buyer, other_buyer, provider):
    seq0, snap = stream_market_snapshot(instrument=instrument)
    book = as_book(snap)
    steps = [
        (provider, "sell", 10, "1.20"), (provider, "sell", 10, "1.25"), (buyer, "buy", 4, "1.30"),
        (other_buyer, "buy", 2, "1.10"), (buyer, "buy", 3, "1.21"), (other_buyer, "buy", 3, "1.22"),
        (provider, "sell", 1, "1.05"),
    ]  # fmt: skip
    for account, side, lots, price in steps:
        factories.place(account, instrument, side, lots, price)
        match(instrument)
        events = list(StreamEvent.objects.filter(channel=market_channel(instrument.pk)).order_by("seq"))
        assert [e.seq for e in events] == list(range(seq0 + 1, seq0 + 1 + len(events)))
        assert apply(as_book(snap), events) == fresh(instrument)
    assert book != fresh(instrument)
    seq, again = stream_market_snapshot(instrument=instrument)
    assert seq == StreamChannel.objects.get(name=market_channel(instrument.pk)).seq
    assert as_book(again) == fresh(instrument)
    trades = [t for e in StreamEvent.objects.filter(type="trades") for t in e.data["trades"]]
    assert sum(t["quantity"] for t in trades) == (4 + 3 + 3 + 1) * instrument.lot_size


@pytest.mark.django_db(transaction=True)
def test_an_account_hears_its_fills_orders_and_balance_and_nobody_else_does(instrument, buyer, other_buyer, provider):
    stream_account_snapshot(account=other_buyer)
    factories.place(provider, instrument, "sell", 10, "1.20")
    match(instrument)
    buy = factories.place(buyer, instrument, "buy", 3, "1.30")
    match(instrument)

    mine = list(StreamEvent.objects.filter(channel=account_channel(buyer.pk)).order_by("seq"))
    kinds = [e.type for e in mine]
    assert "fill" in kinds and "order" in kinds and kinds[-1] == "balance"
    fill = next(e for e in mine if e.type == "fill")
    assert (fill.data["order_id"], fill.data["quantity"], fill.data["price"]) == (
        buy.pk,
        3 * instrument.lot_size,
        "1.20",
    )
    order = [e for e in mine if e.type == "order"][-1]
    assert (order.data["id"], order.data["status"]) == (buy.pk, "filled")
    assert not StreamEvent.objects.filter(channel=account_channel(other_buyer.pk)).exists()
    seq, snap = stream_account_snapshot(account=buyer)
    assert seq == mine[-1].seq
    assert snap["balances"]  # escrow and available as the ledger holds them


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_book_change_publishes_nothing(instrument, provider):
    seq0, _ = stream_market_snapshot(instrument=instrument)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        order = factories.place(provider, instrument, "sell", 7, "1.50")
        Order.objects.filter(pk=order.pk).update(pending_match=False, sequence=10**9)
        book_top_refresh(book_row=InstrumentBook.objects.select_for_update().get(pk=instrument.pk))
        raise Rollback
    assert not StreamEvent.objects.exists()
    assert StreamChannel.objects.get(name=market_channel(instrument.pk)).seq == seq0
