"""The day-ahead call auction: worked examples, a brute-force property test, and the DB clearing."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricing.auction import BUY, SELL, AuctionOrder, clear, clearing_price

D = Decimal


def buy(oid, price, qty, acct=None, allowed=(), seq=None):
    return AuctionOrder(oid, seq or oid, acct or 1000 + oid, BUY, D(price), qty, None, frozenset(allowed))


def sell(oid, price, qty, acct=None, hw="h100", seq=None):
    return AuctionOrder(oid, seq or oid, acct or 1000 + oid, SELL, D(price), qty, hw)


# --- worked examples ---------------------------------------------------------------------------


def test_textbook_cross_clears_at_the_max_volume_price():
    # Demand at p: buys with limit >= p; supply: sells with limit <= p.
    #   p     demand supply volume
    #   1.90    30     5     5
    #   2.00    30    15    15
    #   2.10    20    15    15   <- same volume, imbalance 5 beats 15 at 2.00
    #   2.20    10    30    10
    orders = [
        buy(1, "2.20", 10), buy(2, "2.10", 10), buy(3, "2.00", 10),
        sell(4, "1.90", 5), sell(5, "2.00", 10), sell(6, "2.20", 15),
    ]
    result = clear(orders)
    assert (result.price, result.volume, result.demand, result.supply) == (D("2.10"), 15, 20, 15)
    assert result.imbalance == 5
    # Buy 1 (best limit) fills in full, buy 2 gets the last 5: rationing by priority.
    assert result.filled == {1: 10, 2: 5, 4: 5, 5: 10}
    assert sum(f.quantity for f in result.fills) == 15


def test_ties_in_volume_and_imbalance_go_to_the_price_closest_to_the_reference():
    # Buy 10 @ 2.50 and sell 10 @ 1.50: every price in [1.50, 2.50] trades 10, imbalance 0.
    orders = [buy(1, "2.50", 10), sell(2, "1.50", 10)]
    assert clear(orders, reference_price=D("2.00")).price == D("2.00")  # inside: the reference itself
    assert clear(orders, reference_price=D("3.10")).price == D("2.50")  # above: the nearest end
    assert clear(orders, reference_price=D("1.00")).price == D("1.50")
    assert clear(orders).price == D("1.50")  # no reference: the lower price


def test_the_reference_wins_inside_a_gap_and_otherwise_the_lower_price():
    orders = [buy(1, "2.50", 10), sell(2, "1.50", 10), buy(3, "1.90", 5), sell(4, "2.10", 5)]
    #   p           demand supply volume |imbalance|
    #   1.50          15     10     10      5
    #   1.90          15     10     10      5
    #   2.00 (ref)    10     10     10      0      <- between the limits 1.90 and 2.10
    #   2.10, 2.50    10     15     10      5
    result = clear(orders, reference_price=D("2.00"))
    assert (result.price, result.volume, result.imbalance) == (D("2.00"), 10, 0)
    # Without a reference no candidate lies in the gap; all tie at |imbalance| 5: the lowest wins.
    assert clear(orders).price == D("1.50")


def test_empty_cross_trades_nothing():
    orders = [buy(1, "1.00", 10), buy(2, "1.20", 5), sell(3, "1.30", 10)]
    result = clear(orders)
    assert result.price is None and result.volume == 0 and result.fills == []
    assert (result.demand, result.supply) == (15, 10)
    assert clear([buy(1, "2.00", 5)]).price is None


def test_hardware_restrictions_make_it_a_matching_not_a_sum():
    # Buy 1 takes anything, buy 2 only h100. Greedy by priority alone would give the h100 to
    # buy 1 and leave buy 2 unfilled; the max-flow re-routes buy 1 to the b200.
    orders = [
        buy(1, "3.00", 10), buy(2, "3.00", 10, allowed={"h100"}),
        sell(3, "1.00", 10, hw="h100"), sell(4, "1.00", 10, hw="b200"),
    ]
    result = clear(orders)
    assert result.volume == 20 and result.filled == {1: 10, 2: 10, 3: 10, 4: 10}
    pairs = {(f.buy_id, f.sell_id, f.hardware) for f in result.fills}
    assert pairs == {(1, 4, "b200"), (2, 3, "h100")}


def test_no_self_trade_in_the_auction():
    # Account 7 buys and sells; its own sell cannot fill its buy, so only 5 trade (to account 8).
    orders = [buy(1, "2.00", 10, acct=7), sell(2, "1.00", 10, acct=7), buy(3, "2.00", 5, acct=8)]
    result = clear(orders)
    assert result.volume == 5
    assert [(f.buy_id, f.sell_id, f.quantity) for f in result.fills] == [(3, 2, 5)]


# --- property: nothing worse than a limit, and the volume is the maximum at any single price ----


def _brute_volume(orders, p):
    """Unit-level maximum bipartite matching (Kuhn) between the orders eligible at p."""
    left = [o for o in orders if o.side == BUY and o.price >= p for _ in range(o.quantity)]
    right = [o for o in orders if o.side == SELL and o.price <= p for _ in range(o.quantity)]
    adj = [
        [j for j, s in enumerate(right) if (not b.allowed or s.hardware in b.allowed) and s.account_id != b.account_id]
        for b in left
    ]
    match_r = [-1] * len(right)

    def try_assign(i, seen):
        for j in adj[i]:
            if j not in seen:
                seen.add(j)
                if match_r[j] == -1 or try_assign(match_r[j], seen):
                    match_r[j] = i
                    return True
        return False

    return sum(try_assign(i, set()) for i in range(len(left)))


HW = ["h100", "b200", "mi300x"]


@st.composite
def auction_books(draw):
    n = draw(st.integers(1, 7))
    orders = []
    for i in range(1, n + 1):
        side = draw(st.sampled_from([BUY, SELL]))
        price = D(draw(st.integers(90, 110))) / 100
        qty = draw(st.integers(1, 4))
        acct = draw(st.integers(1, 4))
        if side == BUY:
            allowed = frozenset(draw(st.lists(st.sampled_from(HW), max_size=2)))
            orders.append(AuctionOrder(i, i, acct, BUY, price, qty, None, allowed))
        else:
            orders.append(AuctionOrder(i, i, acct, SELL, price, qty, draw(st.sampled_from(HW))))
    ref = draw(st.none() | st.integers(85, 115).map(lambda c: D(c) / 100))
    return orders, ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(auction_books())
def test_property_limits_respected_and_volume_is_the_maximum_at_any_single_price(book):
    orders, ref = book
    result = clear(orders, reference_price=ref)
    prices = sorted({o.price for o in orders} | ({ref} if ref is not None else set()))
    best = max(_brute_volume(orders, p) for p in prices)
    # Every tick between limits too (the brute force does not trust the candidate argument).
    lo, hi = prices[0], prices[-1]
    ticks = [lo + D("0.01") * k for k in range(int((hi - lo) / D("0.01")) + 1)]
    assert result.volume == max([best] + [_brute_volume(orders, p) for p in ticks])
    if result.volume == 0:
        assert result.price is None and not result.fills
        return
    p = result.price
    assert _brute_volume(orders, p) == result.volume
    by_id = {o.id: o for o in orders}
    traded = defaultdict(int)
    for f in result.fills:
        b, s = by_id[f.buy_id], by_id[f.sell_id]
        assert b.side == BUY and s.side == SELL
        assert s.price <= p <= b.price, "an order traded worse than its limit"
        assert not b.allowed or s.hardware in b.allowed
        assert b.account_id != s.account_id and f.hardware == s.hardware and f.quantity > 0
        traded[b.id] += f.quantity
        traded[s.id] += f.quantity
    assert dict(traded) == result.filled
    assert all(traded[o.id] <= o.quantity for o in orders)
    assert sum(q for oid, q in traded.items() if by_id[oid].side == BUY) == result.volume
    # Rationing by priority: among interchangeable orders (same side, same hardware terms, accounts
    # on one side only), a later order fills only once every earlier one is full.
    dual = {o.account_id for o in orders if o.side == BUY} & {o.account_id for o in orders if o.side == SELL}
    for side in (BUY, SELL):
        ranked = sorted(
            (o for o in orders if o.side == side and (o.price >= p if side == BUY else o.price <= p)),
            key=lambda o: ((-o.price if side == BUY else o.price), o.seq),
        )
        seen_short: set = set()
        for o in ranked:
            key = (o.allowed, o.hardware, o.account_id if o.account_id in dual else None)
            if key in seen_short:
                assert traded[o.id] == 0
            if traded[o.id] < o.quantity:
                seen_short.add(key)


def test_indicative_price_equals_the_clearing_price():
    orders = [buy(1, "2.20", 10), buy(2, "2.10", 10), sell(3, "1.90", 5), sell(4, "2.00", 10)]
    indicative = clearing_price(orders)
    final = clear(orders)
    assert (indicative.price, indicative.volume) == (final.price, final.volume)
