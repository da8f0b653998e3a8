"""The matching core: a continuous double auction in memory, with no ORM.

Rules (PRODUCT.md §3):
- Price-time priority: better price first, then lower sequence number.
- A trade executes at the resting (maker) order's price.
- Hardware: a sell names its hardware; a buy lists the hardware it accepts (empty = any) and
  only matches sells on that hardware. Asks are kept in one queue per hardware and bids in
  one queue per accepted-hardware set, so the best eligible counter-order is the best head
  among the eligible queues.
- Self-trade prevention, policy "cancel taker": when the best eligible resting order belongs
  to the incoming order's account, the incoming order's remainder is cancelled (fills already
  made stand) and the resting order is untouched. This never leaves an account's own orders
  crossed against each other in the book.
- Time in force: GTC rests its remainder; IOC cancels its remainder; FOK fills completely at
  once or does nothing; POST_ONLY is rejected if it would take liquidity at all.

The book is deterministic: the same sequence of submissions gives the same fills.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from heapq import merge
from typing import Literal

SideT = Literal["buy", "sell"]
BUY: SideT = "buy"
SELL: SideT = "sell"

GTC, IOC, FOK, POST_ONLY = "gtc", "ioc", "fok", "post_only"

# Outcomes of one submission.
RESTED = "rested"  # remainder rests in the book (GTC, POST_ONLY)
FILLED = "filled"
CANCELLED = "cancelled"  # IOC remainder, FOK not fillable, self-trade prevented
REJECTED = "rejected"  # POST_ONLY that would cross

REASON_IOC = "ioc_remainder"
REASON_FOK = "fok_not_fillable"
REASON_SELF_TRADE = "self_trade_prevented"
REASON_POST_ONLY = "post_only_would_cross"


@dataclass(slots=True, eq=False)
class BookOrder:
    id: int
    seq: int
    account_id: int
    side: SideT
    price: Decimal
    remaining: int
    tif: str = GTC
    hardware: str | None = None  # sells
    allowed: frozenset[str] = frozenset()  # buys; empty = any hardware

    def accepts(self, hardware: str) -> bool:
        return not self.allowed or hardware in self.allowed


@dataclass(slots=True, frozen=True)
class Fill:
    maker_id: int
    taker_id: int
    buy_id: int
    sell_id: int
    buyer_account_id: int
    seller_account_id: int
    price: Decimal
    quantity: int
    hardware: str
    aggressor: SideT


@dataclass(slots=True)
class Result:
    order: BookOrder
    outcome: str
    fills: list[Fill] = field(default_factory=list)
    reason: str = ""

    @property
    def filled(self) -> int:
        return sum(f.quantity for f in self.fills)


class _Queue:
    """Orders of one side and one hardware key, best last (so the best pops in O(1))."""

    __slots__ = ("keys", "orders")

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.orders: list[BookOrder] = []

    def add(self, key: tuple, order: BookOrder) -> None:
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.orders.insert(i, order)

    def best(self) -> BookOrder | None:
        return self.orders[-1] if self.orders else None

    def pop_best(self) -> None:
        self.keys.pop()
        self.orders.pop()

    def in_priority(self) -> Iterator[tuple[tuple, BookOrder]]:
        # Reverse of the stored order; keys are negated so merge() can take ascending streams.
        for i in range(len(self.orders) - 1, -1, -1):
            yield _neg(self.keys[i]), self.orders[i]

    def __len__(self) -> int:
        return len(self.orders)


def _neg(key: tuple) -> tuple:
    return (-key[0], -key[1])


def _store_key(order: BookOrder) -> tuple:
    # Stored ascending with the best order last: bids by (price, -seq), asks by (-price, -seq).
    if order.side == BUY:
        return (order.price, -order.seq)
    return (-order.price, -order.seq)


class OrderBook:
    def __init__(self, resting: Iterable[BookOrder] = ()) -> None:
        self.asks: dict[str, _Queue] = {}  # by hardware
        self.bids: dict[frozenset[str], _Queue] = {}  # by accepted-hardware set
        self.by_id: dict[int, BookOrder] = {}
        for order in sorted(resting, key=lambda o: o.seq):
            self._rest(order)

    # --- book state -------------------------------------------------------------------
    def _rest(self, order: BookOrder) -> None:
        if order.side == BUY:
            q = self.bids.setdefault(order.allowed, _Queue())
        else:
            if order.hardware is None:
                raise ValueError(f"sell order {order.id} names no hardware")
            q = self.asks.setdefault(order.hardware, _Queue())
        q.add(_store_key(order), order)
        self.by_id[order.id] = order

    def resting(self) -> list[BookOrder]:
        return sorted(self.by_id.values(), key=lambda o: o.seq)

    def best_bid(self) -> Decimal | None:
        heads = [q.best().price for q in self.bids.values() if len(q)]
        return max(heads) if heads else None

    def best_ask(self) -> Decimal | None:
        heads = [q.best().price for q in self.asks.values() if len(q)]
        return min(heads) if heads else None

    def _eligible_queues(self, taker: BookOrder) -> list[_Queue]:
        if taker.side == BUY:
            if taker.allowed:
                return [q for hw, q in self.asks.items() if hw in taker.allowed and len(q)]
            return [q for q in self.asks.values() if len(q)]
        return [q for allowed, q in self.bids.items() if len(q) and (not allowed or taker.hardware in allowed)]

    def _crosses(self, taker: BookOrder, maker: BookOrder) -> bool:
        return maker.price <= taker.price if taker.side == BUY else maker.price >= taker.price

    def _best_maker(self, taker: BookOrder) -> tuple[_Queue, BookOrder] | None:
        best: tuple[_Queue, BookOrder] | None = None
        best_key = None
        for q in self._eligible_queues(taker):
            head = q.best()
            key = q.keys[-1]
            if best_key is None or key > best_key:
                best, best_key = (q, head), key
        return best

    def _eligible_in_priority(self, taker: BookOrder) -> Iterator[BookOrder]:
        streams = [q.in_priority() for q in self._eligible_queues(taker)]
        for _, order in merge(*streams, key=lambda kv: kv[0]):
            yield order

    # --- submission -------------------------------------------------------------------
    def submit(self, taker: BookOrder) -> Result:
        """Match one incoming order against the book, then rest or drop its remainder."""
        if taker.id in self.by_id:
            raise ValueError(f"order {taker.id} is already in the book")
        if taker.remaining <= 0:
            raise ValueError("an order needs a positive quantity")

        if taker.tif == POST_ONLY:
            found = self._best_maker(taker)
            if found and self._crosses(taker, found[1]):
                return Result(taker, REJECTED, reason=REASON_POST_ONLY)
            self._rest(taker)
            return Result(taker, RESTED)

        if taker.tif == FOK and not self._fok_fillable(taker):
            return Result(taker, CANCELLED, reason=REASON_FOK)

        result = Result(taker, FILLED)
        while taker.remaining > 0:
            found = self._best_maker(taker)
            if not found or not self._crosses(taker, found[1]):
                break
            queue, maker = found
            if maker.account_id == taker.account_id:
                result.outcome, result.reason = CANCELLED, REASON_SELF_TRADE
                return result
            qty = min(taker.remaining, maker.remaining)
            taker.remaining -= qty
            maker.remaining -= qty
            buy, sell = (taker, maker) if taker.side == BUY else (maker, taker)
            result.fills.append(
                Fill(
                    maker_id=maker.id,
                    taker_id=taker.id,
                    buy_id=buy.id,
                    sell_id=sell.id,
                    buyer_account_id=buy.account_id,
                    seller_account_id=sell.account_id,
                    price=maker.price,
                    quantity=qty,
                    hardware=sell.hardware,  # type: ignore[arg-type]
                    aggressor=taker.side,
                )
            )
            if maker.remaining == 0:
                queue.pop_best()
                del self.by_id[maker.id]

        if taker.remaining == 0:
            result.outcome = FILLED
        elif taker.tif == IOC:
            result.outcome, result.reason = CANCELLED, REASON_IOC
        else:
            self._rest(taker)
            result.outcome = RESTED
        return result

    def _fok_fillable(self, taker: BookOrder) -> bool:
        need = taker.remaining
        for maker in self._eligible_in_priority(taker):
            if not self._crosses(taker, maker) or maker.account_id == taker.account_id:
                return False
            need -= maker.remaining
            if need <= 0:
                return True
        return False

    def cancel(self, order_id: int) -> BookOrder | None:
        order = self.by_id.pop(order_id, None)
        if order is None:
            return None
        queues = self.bids[order.allowed] if order.side == BUY else self.asks[order.hardware]  # type: ignore[index]
        key = _store_key(order)
        i = bisect.bisect_left(queues.keys, key)
        if queues.orders[i] is not order:
            raise RuntimeError(f"order {order_id} is not where its priority key says")
        del queues.keys[i]
        del queues.orders[i]
        return order
