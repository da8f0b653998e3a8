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

Inside, prices are integer ticks of 0.0001 (the resolution of the order price column) and
quantities integer tokens; Decimal appears only at the edges (BookOrder.price in, Fill.price
out, which is the maker's own Decimal). Each queue is a dict of price levels, each level a FIFO
deque, plus a min-heap of the level keys: resting an order is an append, taking the best is a
heap peek and a popleft, so nothing is ever inserted into the middle of a list.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from heapq import heappop, heappush, merge
from typing import Literal, NamedTuple

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

# Prices are stored with 4 decimal places (marketplace Order.price), so 0.0001 is the finest tick.
TICKS_PER_UNIT = 10_000


def price_ticks(price: Decimal) -> int:
    """The price as an integer number of 0.0001 ticks; refuses a price finer than that."""
    scaled = price * TICKS_PER_UNIT
    ticks = int(scaled)
    if ticks != scaled:
        raise ValueError(f"price {price} has more than 4 decimal places")
    return ticks


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
    # Priority key inside a queue, set when submitted: ticks for asks, -ticks for bids, so the
    # best level is the smallest key on both sides.
    key: int = field(default=0, repr=False)

    def accepts(self, hardware: str) -> bool:
        return not self.allowed or hardware in self.allowed


class Fill(NamedTuple):
    # A NamedTuple, not a frozen dataclass: as immutable, and about five times cheaper to build
    # (a batch makes one per trade).
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
class DepthLevel:
    price: Decimal
    quantity: int
    orders: int
    by_hardware: dict[str, int]


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
    """Orders of one side and one hardware key: price levels (key -> FIFO) and a heap of keys.

    A level emptied by matching or cancels stays in `levels` (and its key in `heap`) until it
    reaches the top of the heap, where head() drops it; so a key is in `levels` exactly when it
    is in `heap`, and no key is ever pushed twice.
    """

    __slots__ = ("heap", "levels")

    def __init__(self) -> None:
        self.levels: dict[int, deque[BookOrder]] = {}
        self.heap: list[int] = []

    def add(self, order: BookOrder) -> None:
        level = self.levels.get(order.key)
        if level is None:
            level = self.levels[order.key] = deque()
            heappush(self.heap, order.key)
        if level and level[-1].seq > order.seq:
            # Time priority is the sequence number, not arrival in this book: an older order
            # submitted after a newer one rested (a pending order behind a loaded book) goes
            # before it. Rare, so the linear scan does not matter.
            i = len(level)
            while i and level[i - 1].seq > order.seq:
                i -= 1
            level.insert(i, order)
        else:
            level.append(order)

    def head(self) -> BookOrder | None:
        heap, levels = self.heap, self.levels
        while heap:
            level = levels[heap[0]]
            if level:
                return level[0]
            del levels[heappop(heap)]
        return None

    best = head  # the earlier name, still read by pricing.quote

    def remove(self, order: BookOrder) -> None:
        self.levels[order.key].remove(order)

    def in_priority(self, limit: int) -> Iterator[tuple[tuple[int, int], BookOrder]]:
        """(priority, order) of the orders with key <= limit, best first."""
        for k in sorted(k for k in self.levels if k <= limit):
            for order in self.levels[k]:
                yield (k, order.seq), order

    def __len__(self) -> int:
        return 1 if self.head() is not None else 0


class OrderBook:
    def __init__(self, resting: Iterable[BookOrder] = ()) -> None:
        self.asks: dict[str, _Queue] = {}  # by hardware
        self.bids: dict[frozenset[str], _Queue] = {}  # by accepted-hardware set
        self.by_id: dict[int, BookOrder] = {}
        for order in sorted(resting, key=lambda o: o.seq):
            order.key = _key(order)
            self._rest(order)

    # --- book state -------------------------------------------------------------------
    def _rest(self, order: BookOrder) -> None:
        if order.side == BUY:
            q = self.bids.get(order.allowed)
            if q is None:
                q = self.bids[order.allowed] = _Queue()
        else:
            if order.hardware is None:
                raise ValueError(f"sell order {order.id} names no hardware")
            q = self.asks.get(order.hardware)  # type: ignore[arg-type]
            if q is None:
                q = self.asks[order.hardware] = _Queue()  # type: ignore[index]
        q.add(order)
        self.by_id[order.id] = order

    def resting(self) -> list[BookOrder]:
        return sorted(self.by_id.values(), key=lambda o: o.seq)

    def best_bid(self) -> Decimal | None:
        heads = [h for h in (q.head() for q in self.bids.values()) if h is not None]
        return max(h.price for h in heads) if heads else None

    def best_ask(self) -> Decimal | None:
        heads = [h for h in (q.head() for q in self.asks.values()) if h is not None]
        return min(h.price for h in heads) if heads else None

    def depth(self, levels: int) -> tuple[list[DepthLevel], list[DepthLevel]]:
        """(bids, asks) aggregated by price across queues, best first, at most `levels` each;
        asks also by hardware. One pass over the resting orders."""

        def side(queues: Iterable[tuple[str | None, _Queue]]) -> list[DepthLevel]:
            agg: dict[int, DepthLevel] = {}
            for hw, q in queues:
                for k, level in q.levels.items():
                    if not level:
                        continue
                    qty = 0
                    for o in level:
                        qty += o.remaining
                    lv = agg.get(k)
                    if lv is None:
                        lv = agg[k] = DepthLevel(level[0].price, 0, 0, {})
                    lv.quantity += qty
                    lv.orders += len(level)
                    if hw is not None:
                        lv.by_hardware[hw] = lv.by_hardware.get(hw, 0) + qty
            return [agg[k] for k in sorted(agg)[:levels]]

        return side((None, q) for q in self.bids.values()), side(self.asks.items())

    def _eligible_queues(self, taker: BookOrder) -> list[_Queue]:
        if taker.side == BUY:
            if taker.allowed:
                return [q for hw, q in self.asks.items() if hw in taker.allowed]
            return list(self.asks.values())
        return [q for allowed, q in self.bids.items() if not allowed or taker.hardware in allowed]

    def best_maker(self, taker: BookOrder) -> BookOrder | None:
        """The resting order the taker would meet first, crossing or not (None if no eligible
        order rests)."""
        best: BookOrder | None = None
        for q in self._eligible_queues(taker):
            head = q.head()
            if head is not None and (best is None or (head.key, head.seq) < (best.key, best.seq)):
                best = head
        return best

    def _best_maker(self, taker: BookOrder) -> BookOrder | None:
        # Kept for callers of the earlier name (pricing.quote).
        return self.best_maker(taker)

    # --- submission -------------------------------------------------------------------
    def submit(self, taker: BookOrder) -> Result:
        """Match one incoming order against the book, then rest or drop its remainder."""
        if taker.id in self.by_id:
            raise ValueError(f"order {taker.id} is already in the book")
        if taker.remaining <= 0:
            raise ValueError("an order needs a positive quantity")
        ticks = price_ticks(taker.price)
        buy = taker.side == BUY
        taker.key = -ticks if buy else ticks
        # A maker crosses when its key is at most `limit` (asks: price <= bid; bids: -price <= -ask).
        limit = ticks if buy else -ticks
        queues = self._eligible_queues(taker)

        if taker.tif == POST_ONLY:
            maker = self.best_maker(taker)
            if maker is not None and maker.key <= limit:
                return Result(taker, REJECTED, reason=REASON_POST_ONLY)
            self._rest(taker)
            return Result(taker, RESTED)

        if taker.tif == FOK and not self._fok_fillable(taker, queues, limit):
            return Result(taker, CANCELLED, reason=REASON_FOK)

        fills: list[Fill] = []
        result = Result(taker, FILLED, fills)
        by_id = self.by_id
        account = taker.account_id
        remaining = taker.remaining
        tid = taker.id
        side = taker.side
        if len(queues) == 1:
            # The common case (one hardware type, or a buy that accepts one): walk one queue's
            # levels in order, each level oldest first.
            heap, levels = queues[0].heap, queues[0].levels
            while remaining and heap:
                k = heap[0]
                if k > limit:
                    break
                level = levels[k]
                while remaining and level:
                    maker = level[0]
                    if maker.account_id == account:
                        taker.remaining = remaining
                        result.outcome, result.reason = CANCELLED, REASON_SELF_TRADE
                        return result
                    mrem = maker.remaining
                    qty = remaining if remaining < mrem else mrem
                    remaining -= qty
                    maker.remaining = mrem - qty
                    if buy:
                        fills.append(
                            Fill(
                                maker.id,
                                tid,
                                tid,
                                maker.id,
                                account,
                                maker.account_id,
                                maker.price,
                                qty,
                                maker.hardware,
                                side,
                            )
                        )
                    else:
                        fills.append(
                            Fill(
                                maker.id,
                                tid,
                                maker.id,
                                tid,
                                maker.account_id,
                                account,
                                maker.price,
                                qty,
                                taker.hardware,
                                side,
                            )
                        )
                    if mrem == qty:
                        level.popleft()
                        del by_id[maker.id]
                if not level:
                    del levels[heappop(heap)]
        else:
            while remaining:
                maker = None
                queue = None
                for q in queues:
                    head = q.head()
                    if head is not None and (maker is None or (head.key, head.seq) < (maker.key, maker.seq)):
                        maker, queue = head, q
                if maker is None or maker.key > limit:
                    break
                if maker.account_id == account:
                    taker.remaining = remaining
                    result.outcome, result.reason = CANCELLED, REASON_SELF_TRADE
                    return result
                mrem = maker.remaining
                qty = remaining if remaining < mrem else mrem
                remaining -= qty
                maker.remaining = mrem - qty
                if buy:
                    fills.append(
                        Fill(
                            maker.id,
                            tid,
                            tid,
                            maker.id,
                            account,
                            maker.account_id,
                            maker.price,
                            qty,
                            maker.hardware,
                            side,
                        )
                    )
                else:
                    fills.append(
                        Fill(
                            maker.id,
                            tid,
                            maker.id,
                            tid,
                            maker.account_id,
                            account,
                            maker.price,
                            qty,
                            taker.hardware,
                            side,
                        )
                    )
                if mrem == qty:
                    queue.levels[maker.key].popleft()  # type: ignore[union-attr]
                    del by_id[maker.id]
        taker.remaining = remaining

        if remaining == 0:
            result.outcome = FILLED
        elif taker.tif == IOC:
            result.outcome, result.reason = CANCELLED, REASON_IOC
        else:
            self._rest(taker)
            result.outcome = RESTED
        return result

    def _fok_fillable(self, taker: BookOrder, queues: list[_Queue], limit: int) -> bool:
        need = taker.remaining
        for _, maker in merge(*(q.in_priority(limit) for q in queues), key=lambda kv: kv[0]):
            if maker.account_id == taker.account_id:
                return False
            need -= maker.remaining
            if need <= 0:
                return True
        return False

    def cancel(self, order_id: int) -> BookOrder | None:
        order = self.by_id.pop(order_id, None)
        if order is None:
            return None
        queue = self.bids[order.allowed] if order.side == BUY else self.asks[order.hardware]  # type: ignore[index]
        queue.remove(order)
        return order


def _key(order: BookOrder) -> int:
    ticks = price_ticks(order.price)
    return -ticks if order.side == BUY else ticks
