"""Replay: rebuild an instrument's trades from its order sequence with the pure engine.

Matching is deterministic (PRODUCT.md §3): the trades of an instrument are a function of its
orders in sequence order plus the cancellations, each recorded at the position where it
happened (`Order.cancelled_after_sequence`: the cancel took the matching lock after the
matcher had processed every order up to that sequence number). Replaying that stream through
pricing.engine in one process must give exactly the trades the database holds, however many
workers, batches or halts produced them. Tests use it after concurrent runs; operators can use
it to audit a book:

    from pricing.replay import instrument_replay, instrument_trades
    assert instrument_replay(instrument_id=7) == instrument_trades(instrument_id=7)

Only orders the matcher has processed take part (sequence <= the book's
last_matched_sequence): an order still pending, or expired while its instrument was halted,
never reached the engine. An order cancelled before the matcher reached it
(cancelled_after_sequence < its own sequence) never reached the engine either.
"""

from __future__ import annotations

from decimal import Decimal

from marketplace.models import Hardware, InstrumentBook, Order, Trade
from marketplace.terms import allowed_hardware_codes

from . import engine

# (buy order id, sell order id, price, quantity, hardware code), in execution order.
TradeTuple = tuple[int, int, Decimal, int, str]


class ReplayUnsupported(Exception):
    pass


def instrument_replay(*, instrument_id: int) -> list[TradeTuple]:
    """The trades the pure engine makes from this instrument's recorded order stream.

    Raises ReplayUnsupported for an instrument whose day-ahead call auction made trades: the
    auction clears at one price outside the continuous engine, and the stream does not record
    where it cleared.
    """
    from .models import CallAuction

    if CallAuction.objects.filter(instrument_id=instrument_id, trades_count__gt=0).exists():
        raise ReplayUnsupported(
            f"instrument {instrument_id} traded in a call auction; replay covers continuous matching"
        )
    last_matched = (
        InstrumentBook.objects.filter(pk=instrument_id).values_list("last_matched_sequence", flat=True).first() or 0
    )
    hw = dict(Hardware.objects.values_list("id", "code"))
    rows = list(
        Order.objects.filter(instrument_id=instrument_id, sequence__lte=last_matched)
        .order_by("sequence")
        .values(
            "id",
            "sequence",
            "account_id",
            "side",
            "price",
            "quantity",
            "time_in_force",
            "hardware_id",
            "allowed_hardware_ids",
            "cancelled_after_sequence",
        )
    )
    # Cancellations by position: a cancel recorded "after c" applies before the order c + 1.
    cancels = sorted(
        (r["cancelled_after_sequence"], r["sequence"], r["id"])
        for r in rows
        if r["cancelled_after_sequence"] is not None
    )
    never_submitted = {order_id for after, seq, order_id in cancels if after < seq}

    book = engine.OrderBook()
    trades: list[TradeTuple] = []
    ci = 0
    for r in rows:
        while ci < len(cancels) and cancels[ci][0] < r["sequence"]:
            book.cancel(cancels[ci][2])  # None if it never rested (already gone): nothing to do
            ci += 1
        if r["id"] in never_submitted:
            continue
        result = book.submit(
            engine.BookOrder(
                id=r["id"],
                seq=r["sequence"],
                account_id=r["account_id"],
                side=r["side"],
                price=r["price"],
                remaining=r["quantity"],
                tif=r["time_in_force"],
                hardware=hw[r["hardware_id"]] if r["hardware_id"] else None,
                allowed=allowed_hardware_codes(r["allowed_hardware_ids"] or (), hw),
            )
        )
        trades.extend((f.buy_id, f.sell_id, f.price, f.quantity, f.hardware) for f in result.fills)
    return trades


def instrument_trades(*, instrument_id: int) -> list[TradeTuple]:
    """The trades the database holds for this instrument, in execution order, as replay tuples."""
    return [
        (buy_id, sell_id, price, quantity, code)
        for buy_id, sell_id, price, quantity, code in Trade.objects.filter(instrument_id=instrument_id)
        .order_by("match_sequence")
        .values_list("buy_order_id", "sell_order_id", "price", "quantity", "hardware__code")
    ]
