"""The pure matching engine: property tests over random order streams, a naive reference
matcher, and worked examples. No database.

The reference matcher below is deliberately simple: the book is one plain list, scanned in full
for every step; FOK is done by trial (match a copy, keep it only if it filled completely).
The engine must agree with it exactly: the same fills in the same order, the same outcome for
every order and the same resting book after every step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricing import engine
from pricing.engine import BUY, FOK, GTC, IOC, POST_ONLY, SELL, BookOrder, OrderBook

HARDWARE = ("h100", "h200", "b200")
TIFS = (GTC, IOC, FOK, POST_ONLY)
TICK = Decimal("0.01")


# --- the naive reference ----------------------------------------------------------------


@dataclass
class RefOrder:
    id: int
    seq: int
    account: int
    side: str
    price: Decimal
    remaining: int
    tif: str
    hardware: str | None
    allowed: frozenset[str]


@dataclass
class RefResult:
    outcome: str
    fills: list[tuple] = field(
        default_factory=list
    )  # (maker id, taker id, price, qty, hardware)
    reason: str = ""


def ref_compatible(buy: RefOrder, sell: RefOrder) -> bool:
    return not buy.allowed or sell.hardware in buy.allowed


def ref_crosses(taker: RefOrder, maker: RefOrder) -> bool:
    return (
        taker.price >= maker.price if taker.side == BUY else taker.price <= maker.price
    )


def ref_eligible(taker: RefOrder, maker: RefOrder) -> bool:
    if maker.side == taker.side:
        return False
    buy, sell = (taker, maker) if taker.side == BUY else (maker, taker)
    return ref_compatible(buy, sell)


def ref_best(book: list[RefOrder], taker: RefOrder) -> RefOrder | None:
    """The resting order the taker meets first: best price for the taker, then oldest."""
    best = None
    for o in book:
        if not ref_eligible(taker, o):
            continue
        if best is None:
            best = o
            continue
        better_price = (
            o.price < best.price if taker.side == BUY else o.price > best.price
        )
        if better_price or (o.price == best.price and o.seq < best.seq):
            best = o
    return best


def ref_match(book: list[RefOrder], taker: RefOrder) -> tuple[list[tuple], bool]:
    """Take liquidity until nothing crosses. Returns (fills, self-trade stopped it)."""
    fills = []
    while taker.remaining > 0:
        maker = ref_best(book, taker)
        if maker is None or not ref_crosses(taker, maker):
            return fills, False
        if maker.account == taker.account:
            return fills, True
        qty = min(taker.remaining, maker.remaining)
        taker.remaining -= qty
        maker.remaining -= qty
        sell = taker if taker.side == SELL else maker
        fills.append((maker.id, taker.id, maker.price, qty, sell.hardware))
        if maker.remaining == 0:
            book.remove(maker)
    return fills, False


def ref_submit(book: list[RefOrder], taker: RefOrder) -> RefResult:
    if taker.tif == POST_ONLY:
        if any(ref_eligible(taker, o) and ref_crosses(taker, o) for o in book):
            return RefResult(engine.REJECTED, reason=engine.REASON_POST_ONLY)
        book.append(taker)
        return RefResult(engine.RESTED)
    if taker.tif == FOK:
        trial_book = copy.deepcopy(book)
        trial_taker = copy.deepcopy(taker)
        fills, stopped = ref_match(trial_book, trial_taker)
        if trial_taker.remaining > 0:
            return RefResult(engine.CANCELLED, reason=engine.REASON_FOK)
        book[:] = trial_book
        taker.remaining = 0
        return RefResult(engine.FILLED, fills)
    fills, stopped = ref_match(book, taker)
    if stopped:
        return RefResult(engine.CANCELLED, fills, engine.REASON_SELF_TRADE)
    if taker.remaining == 0:
        return RefResult(engine.FILLED, fills)
    if taker.tif == IOC:
        return RefResult(engine.CANCELLED, fills, engine.REASON_IOC)
    book.append(taker)
    return RefResult(engine.RESTED, fills)


# --- random order streams ---------------------------------------------------------------


@st.composite
def order_specs(draw):
    side = draw(st.sampled_from((BUY, SELL)))
    spec = {
        "kind": "order",
        "side": side,
        "tick": draw(
            st.integers(0, 6)
        ),  # prices 1.00 .. 1.06: a small grid, many equal prices
        "lots": draw(st.integers(1, 5)),
        "tif": draw(st.sampled_from(TIFS)),
        "account": draw(
            st.integers(0, 3)
        ),  # few accounts: self-trade prevention happens often
        "hardware": None,
        "allowed": frozenset(),
    }
    if side == SELL:
        spec["hardware"] = draw(st.sampled_from(HARDWARE))
    else:
        spec["allowed"] = draw(st.frozensets(st.sampled_from(HARDWARE), max_size=2))
    return spec


cancel_specs = st.fixed_dictionaries(
    {"kind": st.just("cancel"), "pick": st.integers(0, 1000)}
)
streams = st.lists(
    st.one_of(order_specs(), order_specs(), order_specs(), cancel_specs), max_size=60
)


def book_order(spec: dict, n: int) -> BookOrder:
    return BookOrder(
        id=1000 + n,
        seq=n,
        account_id=spec["account"],
        side=spec["side"],
        price=Decimal("1.00") + spec["tick"] * TICK,
        remaining=spec["lots"],
        tif=spec["tif"],
        hardware=spec["hardware"],
        allowed=spec["allowed"],
    )


def ref_order(o: BookOrder) -> RefOrder:
    return RefOrder(
        o.id,
        o.seq,
        o.account_id,
        o.side,
        o.price,
        o.remaining,
        o.tif,
        o.hardware,
        o.allowed,
    )


@dataclass
class Step:
    order: BookOrder  # a copy taken before submission
    book_before: list[BookOrder]  # copies of the resting orders before submission
    result: engine.Result
    book_after: list[BookOrder]


def run(
    stream: list[dict], book: OrderBook | None = None
) -> tuple[OrderBook, list[Step]]:
    """Submit the stream to the engine, recording the book around every submission."""
    book = book or OrderBook()
    steps = []
    for n, spec in enumerate(stream, start=1):
        if spec["kind"] == "cancel":
            resting = book.resting()
            if resting:
                book.cancel(resting[spec["pick"] % len(resting)].id)
            continue
        order = book_order(spec, n)
        before = [copy.copy(o) for o in book.resting()]
        snapshot = copy.copy(order)
        result = book.submit(order)
        steps.append(
            Step(snapshot, before, result, [copy.copy(o) for o in book.resting()])
        )
    return book, steps


def compatible(buy: BookOrder, sell: BookOrder) -> bool:
    return buy.accepts(sell.hardware)


def matchable_crosses(
    resting: list[BookOrder], *, any_account: bool
) -> list[tuple[int, int]]:
    """Resting (buy, sell) pairs that could trade now: hardware-compatible, bid >= ask, and of
    different accounts (or of any account, for the stronger form)."""
    buys = [o for o in resting if o.side == BUY]
    sells = [o for o in resting if o.side == SELL]
    return [
        (b.id, s.id)
        for b in buys
        for s in sells
        if compatible(b, s)
        and b.price >= s.price
        and (any_account or b.account_id != s.account_id)
    ]


def eligible(taker: BookOrder, maker: BookOrder) -> bool:
    if taker.side == maker.side:
        return False
    return compatible(taker, maker) if taker.side == BUY else compatible(maker, taker)


def priority(taker: BookOrder, o: BookOrder) -> tuple:
    return (o.price if taker.side == BUY else -o.price, o.seq)


# --- properties -------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(streams)
def test_no_matchable_cross_is_left_in_the_book_after_any_submission(stream):
    _, steps = run(stream)
    for step in steps:
        assert matchable_crosses(step.book_after, any_account=False) == []
        # Stronger, and what the "cancel taker" policy promises: an account's own orders never
        # rest crossed against each other either.
        assert matchable_crosses(step.book_after, any_account=True) == []


@PROPERTY
@given(streams)
def test_fills_never_exceed_quantity_and_trade_at_the_resting_price_within_both_limits(
    stream,
):
    _, steps = run(stream)
    filled: dict[int, int] = {}
    quantity: dict[int, int] = {}
    for step in steps:
        quantity[step.order.id] = step.order.remaining
        resting = {o.id: o for o in step.book_before}
        for f in step.result.fills:
            maker = resting[
                f.maker_id
            ]  # the maker was resting before the taker arrived
            assert f.taker_id == step.order.id
            assert f.price == maker.price
            assert f.quantity > 0
            buy = step.order if step.order.side == BUY else maker
            sell = maker if step.order.side == BUY else step.order
            assert (f.buy_id, f.sell_id) == (buy.id, sell.id)
            assert buy.price >= f.price >= sell.price
            filled[f.maker_id] = filled.get(f.maker_id, 0) + f.quantity
            filled[f.taker_id] = filled.get(f.taker_id, 0) + f.quantity
    for order_id, qty in filled.items():
        assert qty <= quantity[order_id]
    for step in steps:
        assert step.result.filled <= step.order.remaining
        assert all(o.remaining > 0 for o in step.book_after)


@PROPERTY
@given(streams)
def test_hardware_rule_and_no_self_trade(stream):
    _, steps = run(stream)
    for step in steps:
        for f in step.result.fills:
            assert f.buyer_account_id != f.seller_account_id
            sell_hw = step.order.hardware if step.order.side == SELL else None
            if sell_hw is None:
                sell_hw = next(
                    o.hardware for o in step.book_before if o.id == f.sell_id
                )
            assert f.hardware == sell_hw
            buy = (
                step.order
                if step.order.side == BUY
                else next(o for o in step.book_before if o.id == f.buy_id)
            )
            assert not buy.allowed or f.hardware in buy.allowed


@PROPERTY
@given(streams)
def test_price_time_priority(stream):
    """Any resting order the taker could meet, ranked ahead of a maker it traded with, was
    used up in full first; and makers are met in priority order."""
    _, steps = run(stream)
    for step in steps:
        taker = step.order
        before = {o.id: o for o in step.book_before}
        used = {}
        for f in step.result.fills:
            used[f.maker_id] = used.get(f.maker_id, 0) + f.quantity
        makers = [before[f.maker_id] for f in step.result.fills]
        assert [priority(taker, m) for m in makers] == sorted(
            priority(taker, m) for m in makers
        )
        for m in makers:
            for o in step.book_before:
                if eligible(taker, o) and priority(taker, o) < priority(taker, m):
                    assert used.get(o.id, 0) == o.remaining, (
                        f"order {o.id} was skipped for {m.id}"
                    )


@PROPERTY
@given(streams)
def test_time_in_force_semantics(stream):
    _, steps = run(stream)
    for step in steps:
        o, r = step.order, step.result
        rests = any(b.id == o.id for b in step.book_after)
        if o.tif == IOC:
            assert not rests
            assert r.outcome in (engine.FILLED, engine.CANCELLED)
        elif o.tif == FOK:
            assert not rests
            assert (r.outcome, r.filled) in (
                (engine.FILLED, o.remaining),
                (engine.CANCELLED, 0),
            )
        elif o.tif == POST_ONLY:
            assert r.fills == []
            assert r.outcome in (engine.RESTED, engine.REJECTED)
            assert rests == (r.outcome == engine.RESTED)
            if r.outcome == engine.REJECTED:  # it would have crossed something
                assert any(eligible(o, b) and priority(o, b)[0] <= (o.price if o.side == BUY else -o.price)
                           for b in step.book_before)  # fmt: skip
        else:
            assert rests == (r.outcome == engine.RESTED)
        if r.outcome == engine.RESTED:
            assert r.filled < o.remaining
        if r.outcome == engine.FILLED:
            assert r.filled == o.remaining
        if r.reason == engine.REASON_SELF_TRADE:
            assert r.outcome == engine.CANCELLED and not rests


@PROPERTY
@given(streams)
def test_engine_equals_the_naive_reference(stream):
    book = OrderBook()
    ref_book: list[RefOrder] = []
    for n, spec in enumerate(stream, start=1):
        if spec["kind"] == "cancel":
            resting = book.resting()
            assert [o.id for o in resting] == sorted(o.id for o in ref_book)
            if resting:
                victim = resting[spec["pick"] % len(resting)].id
                book.cancel(victim)
                ref_book[:] = [o for o in ref_book if o.id != victim]
            continue
        order = book_order(spec, n)
        expected = ref_submit(ref_book, ref_order(order))
        got = book.submit(order)
        assert (got.outcome, got.reason) == (expected.outcome, expected.reason)
        assert [
            (f.maker_id, f.taker_id, f.price, f.quantity, f.hardware) for f in got.fills
        ] == expected.fills
        assert sorted((o.id, o.remaining) for o in book.resting()) == sorted(
            (o.id, o.remaining) for o in ref_book
        )


@PROPERTY
@given(streams, st.integers(0, 60))
def test_a_book_rebuilt_from_resting_orders_continues_identically(stream, cut):
    """The database matcher reloads the resting book for every batch; a book rebuilt from its
    resting orders at any point must continue exactly as the original would."""
    cut = min(cut, len(stream))

    def fills_of(steps):
        return [
            [
                (f.maker_id, f.taker_id, f.price, f.quantity, f.hardware)
                for f in s.result.fills
            ]
            for s in steps
        ]

    _, whole = run(stream)
    book = OrderBook()
    first: list[Step] = []
    rest: list[Step] = []
    for n, spec in enumerate(stream, start=1):
        if n == cut + 1:
            book = OrderBook([copy.copy(o) for o in book.resting()])
        target = first if n <= cut else rest
        if spec["kind"] == "cancel":
            resting = book.resting()
            if resting:
                book.cancel(resting[spec["pick"] % len(resting)].id)
            continue
        order = book_order(spec, n)
        snapshot = copy.copy(order)
        result = book.submit(order)
        target.append(Step(snapshot, [], result, []))
    assert fills_of(first + rest) == fills_of(whole)


@PROPERTY
@given(streams)
def test_the_same_stream_gives_the_same_fills(stream):
    def fills(steps):
        return [
            (
                s.result.outcome,
                [(f.maker_id, f.quantity, f.price) for f in s.result.fills],
            )
            for s in steps
        ]

    assert fills(run(stream)[1]) == fills(run(stream)[1])


# --- worked examples --------------------------------------------------------------------


def order(id, side, price, qty, *, account=None, tif=GTC, hw="h100", allowed=()):
    return BookOrder(
        id=id,
        seq=id,
        account_id=account if account is not None else id,
        side=side,
        price=Decimal(price),
        remaining=qty,
        tif=tif,
        hardware=hw if side == SELL else None,
        allowed=frozenset(allowed),
    )


def fills(result):
    return [(f.maker_id, f.price, f.quantity) for f in result.fills]


def test_a_buy_sweeps_asks_best_price_first_then_oldest_and_rests_the_remainder():
    book = OrderBook()
    book.submit(order(1, SELL, "1.20", 5))
    book.submit(order(2, SELL, "1.10", 3))
    book.submit(order(3, SELL, "1.20", 4))
    book.submit(order(4, SELL, "1.30", 9))
    r = book.submit(order(5, BUY, "1.25", 15))
    # 3 @ 1.10 (best price), then 5 @ 1.20 from #1 (older than #3), then 4 @ 1.20 from #3.
    assert fills(r) == [
        (2, Decimal("1.10"), 3),
        (1, Decimal("1.20"), 5),
        (3, Decimal("1.20"), 4),
    ]
    assert r.outcome == engine.RESTED and r.order.remaining == 3
    assert book.best_bid() == Decimal("1.25") and book.best_ask() == Decimal("1.30")


def test_a_sell_trades_at_the_resting_bid_price_not_its_own_limit():
    book = OrderBook([order(1, BUY, "1.50", 10)])
    r = book.submit(order(2, SELL, "1.00", 4))
    assert fills(r) == [(1, Decimal("1.50"), 4)] and r.fills[0].aggressor == SELL


def test_a_buy_restricted_to_h200_skips_a_cheaper_h100_ask():
    book = OrderBook(
        [order(1, SELL, "1.00", 5, hw="h100"), order(2, SELL, "1.10", 5, hw="h200")]
    )
    r = book.submit(order(3, BUY, "1.20", 8, allowed={"h200"}))
    assert fills(r) == [(2, Decimal("1.10"), 5)] and r.fills[0].hardware == "h200"
    assert r.outcome == engine.RESTED and r.order.remaining == 3
    # The book is crossed at the top (1.20 bid vs 1.00 ask) but nothing there can trade.
    assert book.best_bid() > book.best_ask()


def test_self_trade_prevention_cancels_the_taker_and_keeps_its_earlier_fills():
    book = OrderBook(
        [order(1, SELL, "1.00", 2, account=7), order(2, SELL, "1.05", 5, account=8)]
    )
    r = book.submit(order(3, BUY, "1.10", 6, account=8))
    assert fills(r) == [(1, Decimal("1.00"), 2)]
    assert (r.outcome, r.reason) == (engine.CANCELLED, engine.REASON_SELF_TRADE)
    assert [o.id for o in book.resting()] == [2] and book.resting()[0].remaining == 5


def test_ioc_cancels_its_remainder_and_fok_is_all_or_nothing():
    book = OrderBook([order(1, SELL, "1.00", 3), order(2, SELL, "1.10", 3)])
    fok = book.submit(order(3, BUY, "1.10", 7, tif=FOK))
    assert (fok.outcome, fok.reason, fok.fills) == (
        engine.CANCELLED,
        engine.REASON_FOK,
        [],
    )
    assert [o.remaining for o in book.resting()] == [3, 3]
    ioc = book.submit(order(4, BUY, "1.00", 5, tif=IOC))
    assert fills(ioc) == [(1, Decimal("1.00"), 3)] and (ioc.outcome, ioc.reason) == (
        engine.CANCELLED,
        engine.REASON_IOC,
    )
    fok = book.submit(order(5, BUY, "1.10", 3, tif=FOK))
    assert fills(fok) == [(2, Decimal("1.10"), 3)] and fok.outcome == engine.FILLED
    assert book.resting() == []


def test_fok_is_not_fillable_when_self_trade_prevention_would_stop_it():
    book = OrderBook(
        [order(1, SELL, "1.00", 3, account=1), order(2, SELL, "1.00", 3, account=2)]
    )
    r = book.submit(order(3, BUY, "1.00", 6, account=2, tif=FOK))
    assert (r.outcome, r.fills) == (engine.CANCELLED, [])


def test_post_only_rests_or_is_rejected_if_it_would_take():
    book = OrderBook([order(1, SELL, "1.10", 3)])
    assert (
        book.submit(order(2, BUY, "1.10", 1, tif=POST_ONLY)).outcome == engine.REJECTED
    )
    assert book.submit(order(3, BUY, "1.09", 1, tif=POST_ONLY)).outcome == engine.RESTED
    # Own orders count too: a post-only never crosses anything.
    assert (
        book.submit(order(4, BUY, "1.10", 1, account=1, tif=POST_ONLY)).outcome
        == engine.REJECTED
    )


def test_cancel_removes_a_resting_order_and_submitting_a_known_id_is_refused():
    book = OrderBook([order(1, SELL, "1.00", 3)])
    assert book.cancel(1).id == 1 and book.cancel(1) is None
    assert book.submit(order(2, BUY, "1.00", 1)).outcome == engine.RESTED
    with pytest.raises(ValueError):
        book.submit(order(2, BUY, "1.00", 1))


def test_an_older_order_submitted_after_a_newer_one_rested_keeps_its_time_priority():
    book = OrderBook([BookOrder(id=2, seq=20, account_id=1, side=SELL, price=Decimal("1.00"), remaining=5, hardware="h100")])
    book.submit(BookOrder(id=1, seq=10, account_id=2, side=SELL, price=Decimal("1.00"), remaining=5, hardware="h100"))
    result = book.submit(BookOrder(id=3, seq=30, account_id=3, side=BUY, price=Decimal("1.00"), remaining=5))
    assert [f.maker_id for f in result.fills] == [1]


def test_prices_finer_than_the_price_column_are_refused():
    with pytest.raises(ValueError):
        OrderBook().submit(BookOrder(id=1, seq=1, account_id=1, side=BUY, price=Decimal("1.00001"), remaining=5))
