"""Replay: rebuild an instrument's trades from its match sequence with the pure engine.

Matching is deterministic (PRODUCT.md §3): the trades of an instrument are a function of its
match sequence, the numbers the matcher (pricing.matcher) hands out under the instrument lock
as it applies each command: an order's `sequence` (it was submitted to the engine there) and a
cancel's `cancel_sequence` (it was removed from the book there). Replaying that stream through
pricing.engine in one process must give exactly the trades the database holds, however many
workers, batches, cancels applied by requests, or halts produced them. Tests use it after
concurrent runs; operators can use it to audit a book:

    from pricing.replay import instrument_replay, instrument_trades
    assert instrument_replay(instrument_id=7) == instrument_trades(instrument_id=7)

Only sequenced orders take part: an order still pending, or expired while its instrument was
halted, never reached the engine. An order whose cancel_sequence equals its sequence was
cancelled before the matcher reached it and never reached the engine either.
"""

from __future__ import annotations

from decimal import Decimal

from marketplace.models import Hardware, Order, Trade

from . import book_rows, engine

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
    hw = dict(Hardware.objects.values_list("id", "code"))
    rows = list(
        Order.objects.filter(instrument_id=instrument_id, sequence__isnull=False).values(
            "id",
            "sequence",
            "account_id",
            "side",
            "price",
            "quantity",
            "time_in_force",
            "hardware_id",
            "allowed_hardware_ids",
            "cancel_sequence",
        )
    )
    # (number, 0 = submit | 1 = cancel, row): each number is used once, by one command.
    events: list[tuple[int, int, dict]] = []
    for r in rows:
        if r["cancel_sequence"] == r["sequence"]:
            continue
        events.append((r["sequence"], 0, r))
        if r["cancel_sequence"] is not None:
            events.append((r["cancel_sequence"], 1, r))
    events.sort(key=lambda e: (e[0], e[1]))

    book = engine.OrderBook()
    trades: list[TradeTuple] = []
    for _, kind, r in events:
        if kind == 1:
            book.cancel(r["id"])  # None if it never rested (already gone): nothing to do
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
                allowed=book_rows.allowed_codes(r, hw),
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
