"""The matching engine's public behaviour at its edges, pinned by small worked examples.

Written against the public interface only (OrderBook, BookOrder, Result, Fill and the outcome
and reason constants), so they hold whatever the internals are. They cover what the random
streams of test_engine.py rarely or never reach: an empty book, the best price across several
hardware queues, every field of a fill, FOK and post-only at the exact limit, refused
submissions, cancels of the middle of a queue, and the book's state after each of them.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from pricing import engine
from pricing.engine import BUY, FOK, GTC, IOC, POST_ONLY, SELL, BookOrder, Fill, OrderBook

D = Decimal


def order(id, side, price, qty, *, account=None, tif=GTC, hw="h100", allowed=(), seq=None):
    return BookOrder(
        id=id,
        seq=seq if seq is not None else id,
        account_id=account if account is not None else 100 + id,
        side=side,
        price=D(price),
        remaining=qty,
        tif=tif,
        hardware=hw if side == SELL else None,
        allowed=frozenset(allowed),
    )


def resting(book):
    return [(o.id, o.remaining) for o in book.resting()]


def test_an_empty_book_has_no_best_prices_and_nothing_to_cancel():
    book = OrderBook()
    assert (book.best_bid(), book.best_ask(), book.resting()) == (None, None, [])
    assert book.cancel(1) is None


def test_best_prices_look_across_every_hardware_queue():
    book = OrderBook()
    for o in (
        order(1, SELL, "1.30", 1, hw="h100"),
        order(2, SELL, "1.20", 1, hw="b200"),
        order(3, SELL, "1.25", 1, hw="h200"),
        order(4, BUY, "1.00", 1, allowed={"h100"}),
        order(5, BUY, "1.10", 1, allowed={"b200", "h200"}),
        order(6, BUY, "1.05", 1),
    ):
        assert book.submit(o).outcome == engine.RESTED
    assert (book.best_bid(), book.best_ask()) == (D("1.10"), D("1.20"))
    book.cancel(5)
    book.cancel(2)
    assert (book.best_bid(), book.best_ask()) == (D("1.05"), D("1.25"))
    # Once a side's last order trades away, its best price is None again.
    book = OrderBook([order(1, SELL, "1.00", 2)])
    assert book.submit(order(2, BUY, "1.00", 2)).outcome == engine.FILLED
    assert (book.best_bid(), book.best_ask(), book.resting()) == (None, None, [])


def test_every_field_of_a_fill_for_a_buy_taker_and_a_sell_taker():
    book = OrderBook([order(1, SELL, "1.10", 5, account=7, hw="b200")])
    r = book.submit(order(2, BUY, "1.50", 3, account=8))
    assert r.fills == [
        Fill(maker_id=1, taker_id=2, buy_id=2, sell_id=1, buyer_account_id=8, seller_account_id=7,
             price=D("1.10"), quantity=3, hardware="b200", aggressor=BUY)  # fmt: skip
    ]
    assert (r.outcome, r.reason, r.filled, r.order.remaining) == (engine.FILLED, "", 3, 0)
    assert resting(book) == [(1, 2)]

    book = OrderBook([order(1, BUY, "1.40", 5, account=7)])
    r = book.submit(order(2, SELL, "1.00", 8, account=8, hw="h200"))
    assert r.fills == [
        Fill(maker_id=1, taker_id=2, buy_id=1, sell_id=2, buyer_account_id=7, seller_account_id=8,
             price=D("1.40"), quantity=5, hardware="h200", aggressor=SELL)  # fmt: skip
    ]
    assert (r.outcome, r.filled, r.order.remaining) == (engine.RESTED, 5, 3)
    assert resting(book) == [(2, 3)] and (book.best_bid(), book.best_ask()) == (None, D("1.00"))


def test_an_order_meets_a_limit_equal_to_its_own_but_not_one_tick_worse():
    book = OrderBook([order(1, SELL, "1.20", 5)])
    assert book.submit(order(2, BUY, "1.19", 5)).fills == []
    r = book.submit(order(3, BUY, "1.20", 2))
    assert [(f.maker_id, f.price, f.quantity) for f in r.fills] == [(1, D("1.20"), 2)]
    book = OrderBook([order(1, BUY, "1.20", 5)])
    assert book.submit(order(2, SELL, "1.21", 5)).fills == []
    assert [(f.maker_id, f.quantity) for f in book.submit(order(3, SELL, "1.20", 5)).fills] == [(1, 5)]
    assert resting(book) == [(2, 5)]


def test_ioc_cancels_only_a_remainder_and_fills_in_full_when_it_can():
    book = OrderBook([order(1, SELL, "1.00", 3), order(2, SELL, "1.10", 3)])
    r = book.submit(order(3, BUY, "1.05", 5, tif=IOC))
    assert (r.outcome, r.reason, r.filled) == (engine.CANCELLED, engine.REASON_IOC, 3)
    r = book.submit(order(4, BUY, "1.10", 3, tif=IOC))
    assert (r.outcome, r.reason, r.filled) == (engine.FILLED, "", 3)
    assert resting(book) == []
    r = book.submit(order(5, BUY, "1.10", 3, tif=IOC))  # nothing to meet: cancelled, nothing rests
    assert (r.outcome, r.filled, resting(book)) == (engine.CANCELLED, 0, [])


def test_fok_fills_exactly_the_available_quantity_and_refuses_one_lot_more():
    def asks():  # fresh orders each time: the book updates their `remaining`
        return [order(1, SELL, "1.00", 2), order(2, SELL, "1.05", 3, hw="b200"), order(3, SELL, "1.20", 9)]

    book = OrderBook(asks())
    r = book.submit(order(4, BUY, "1.05", 6, tif=FOK))
    assert (r.order.id, r.order.remaining, r.outcome, r.reason, r.fills) == (4, 6, engine.CANCELLED, engine.REASON_FOK, [])
    assert resting(book) == [(1, 2), (2, 3), (3, 9)]
    r = book.submit(order(5, BUY, "1.05", 5, tif=FOK))
    assert (r.outcome, r.filled) == (engine.FILLED, 5) and resting(book) == [(3, 9)]
    # Only hardware it accepts counts towards a FOK.
    book = OrderBook(asks())
    assert book.submit(order(6, BUY, "1.05", 3, tif=FOK, allowed={"b200"})).outcome == engine.FILLED
    assert book.submit(order(7, BUY, "1.05", 3, tif=FOK, allowed={"b200"})).reason == engine.REASON_FOK
    # A FOK sell, and one blocked by its own account's resting order at the best price.
    book = OrderBook([order(1, BUY, "1.10", 2, account=9), order(2, BUY, "1.00", 5, account=10)])
    assert book.submit(order(3, SELL, "1.00", 7, tif=FOK, account=11)).outcome == engine.FILLED
    book = OrderBook([order(1, BUY, "1.10", 2, account=9), order(2, BUY, "1.00", 5, account=10)])
    r = book.submit(order(3, SELL, "1.00", 3, tif=FOK, account=9))
    assert (r.outcome, r.reason) == (engine.CANCELLED, engine.REASON_FOK) and len(book.resting()) == 2


def test_post_only_rests_unless_it_would_cross_even_at_an_equal_price():
    book = OrderBook([order(1, SELL, "1.20", 5)])
    r = book.submit(order(2, BUY, "1.20", 1, tif=POST_ONLY))
    assert (r.order.id, r.outcome, r.reason, r.fills) == (2, engine.REJECTED, engine.REASON_POST_ONLY, [])
    r = book.submit(order(3, BUY, "1.19", 1, tif=POST_ONLY))
    assert (r.order.id, r.outcome, r.reason) == (3, engine.RESTED, "") and book.best_bid() == D("1.19")
    r = book.submit(order(4, SELL, "1.19", 1, tif=POST_ONLY))
    assert r.outcome == engine.REJECTED
    assert book.submit(order(5, SELL, "1.21", 1, tif=POST_ONLY)).outcome == engine.RESTED
    # Against an ask on hardware it does not accept, a post-only buy rests even above it.
    book = OrderBook([order(1, SELL, "1.00", 5, hw="h100")])
    assert book.submit(order(2, BUY, "1.50", 1, tif=POST_ONLY, allowed={"b200"})).outcome == engine.RESTED
    assert book.submit(order(3, BUY, "1.50", 1, tif=POST_ONLY)).outcome == engine.REJECTED


def test_self_trade_prevention_leaves_the_resting_order_and_the_earlier_fills():
    book = OrderBook([order(1, SELL, "1.00", 2, account=5), order(2, SELL, "1.10", 4, account=6)])
    r = book.submit(order(3, BUY, "1.20", 5, account=6))
    assert [(f.maker_id, f.quantity) for f in r.fills] == [(1, 2)]
    assert (r.outcome, r.reason, r.order.remaining) == (engine.CANCELLED, engine.REASON_SELF_TRADE, 3)
    assert resting(book) == [(2, 4)]


def test_refused_submissions_change_nothing():
    book = OrderBook([order(1, SELL, "1.00", 2)])
    with pytest.raises(ValueError, match=r"^order 1 is already in the book$"):
        book.submit(order(1, BUY, "1.00", 1))
    with pytest.raises(ValueError, match=r"^an order needs a positive quantity$"):
        book.submit(order(2, BUY, "1.00", 0))
    with pytest.raises(ValueError):
        book.submit(order(3, BUY, "1.00", -1))
    no_hardware = order(4, SELL, "1.00", 1)
    no_hardware.hardware = None
    with pytest.raises(ValueError, match=r"^sell order 4 names no hardware$"):
        book.submit(no_hardware)
    assert resting(book) == [(1, 2)]


def test_cancel_removes_exactly_that_order_from_the_middle_of_a_queue():
    book = OrderBook([order(i, BUY, "1.00", i) for i in (1, 2, 3)] + [order(4, BUY, "1.01", 1)])
    assert book.cancel(2).id == 2 and book.cancel(2) is None
    assert resting(book) == [(1, 1), (3, 3), (4, 1)]
    r = book.submit(order(5, SELL, "1.00", 5))
    assert [(f.maker_id, f.quantity) for f in r.fills] == [(4, 1), (1, 1), (3, 3)]
    assert resting(book) == []


def test_a_book_rebuilt_in_any_order_keeps_time_priority_by_sequence():
    orders = [order(1, BUY, "1.00", 1, seq=30), order(2, BUY, "1.00", 1, seq=10), order(3, BUY, "1.00", 1, seq=20)]
    book = OrderBook(orders)
    assert [o.id for o in book.resting()] == [2, 3, 1]
    r = book.submit(order(4, SELL, "1.00", 3, seq=40))
    assert [f.maker_id for f in r.fills] == [2, 3, 1]


def test_accepts():
    assert order(1, BUY, "1", 1).accepts("h100")
    assert order(1, BUY, "1", 1, allowed={"b200"}).accepts("b200")
    assert not order(1, BUY, "1", 1, allowed={"b200"}).accepts("h100")


def test_fok_walks_the_queues_of_all_hardware_in_price_then_time_priority():
    # The buyer's own ask is the oldest and the dearest: a FOK for 5 is fillable from the two
    # better asks of others (1.00 then 1.05) and must never reach its own.
    asks = [order(1, SELL, "1.10", 2, account=9, hw="b200"), order(2, SELL, "1.00", 2, hw="h100"),
            order(3, SELL, "1.05", 3, hw="h200")]  # fmt: skip
    book = OrderBook(asks)
    r = book.submit(order(4, BUY, "1.10", 5, tif=FOK, account=9))
    assert (r.outcome, [(f.maker_id, f.quantity) for f in r.fills]) == (engine.FILLED, [(2, 2), (3, 3)])
    # At one price the older order comes first across queues: the other's older h100 ask fills
    # the FOK; the buyer's own, newer b200 ask at the same price is not reached.
    book = OrderBook([order(1, SELL, "1.00", 3, hw="h100"), order(2, SELL, "1.00", 3, account=9, hw="b200")])
    assert book.submit(order(3, BUY, "1.00", 3, tif=FOK, account=9)).outcome == engine.FILLED
    book = OrderBook([order(1, SELL, "1.00", 3, account=9, hw="b200"), order(2, SELL, "1.00", 3, hw="h100")])
    assert book.submit(order(3, BUY, "1.00", 3, tif=FOK, account=9)).reason == engine.REASON_FOK
    # The same for a FOK sell across bid queues of different accepted-hardware sets.
    bids = [order(1, BUY, "0.90", 2, account=9), order(2, BUY, "1.00", 2, allowed={"h100"}),
            order(3, BUY, "0.95", 3, allowed={"h100", "b200"})]  # fmt: skip
    book = OrderBook(bids)
    r = book.submit(order(4, SELL, "0.90", 5, tif=FOK, account=9))
    assert (r.outcome, [(f.maker_id, f.quantity) for f in r.fills]) == (engine.FILLED, [(2, 2), (3, 3)])
    book = OrderBook([order(1, BUY, "1.00", 3), order(2, BUY, "1.00", 3, account=9, allowed={"h100"})])
    assert book.submit(order(3, SELL, "1.00", 3, tif=FOK, account=9)).outcome == engine.FILLED
