"""The day-ahead call auction, in memory with no ORM: one uniform price for a batch of orders.

Rules (PRODUCT.md §3, docs/readme/pricing.md "Day-ahead call auction"):

1. Volume. At a candidate price p the eligible orders are the buys with limit >= p and the
   sells with limit <= p. The volume V(p) is the largest quantity that can trade between them
   under the hardware rule (a buy only takes the hardware it allows) and with no self-trade.
   With hardware restrictions that is a maximum flow, not min(demand, supply): buys are grouped
   by (allowed-hardware set, account when the account also sells), sells by (hardware, account
   when the account also buys); orders in one group are interchangeable, so the flow network
   has a handful of nodes however many orders there are, and max-flow on it is exact.
2. Price. The clearing price (a multiple of the tick) maximizes V(p); ties are broken by the
   least absolute imbalance |demand(p) - supply(p)| (eligible quantities), then by the distance
   to the reference price, then by the lower price. Candidates are the orders' limit prices, the
   first and last tick strictly between each two consecutive limits, and the reference price
   when it lies between them: V and the imbalance are constant strictly between consecutive
   limits (where they can be better than at either end), so no other price can win. No
   positive volume at any price means no cross: nothing trades.
3. Allocation. Everyone trades at the clearing price. Who fills is decided in price-time
   priority (better limit first, then lower sequence number): buys are taken one after another,
   each filled as much as possible while every earlier buy keeps its fill (an augmenting path
   may re-route earlier buys to other hardware, never shrink them); sells the same way. Both
   greedy vectors are maximal (the fillable vectors form a polymatroid, on which the greedy
   reaches a base), and by the Mendelsohn-Dulmage theorem one flow realizes both at once; that
   flow is split into trades. So rationing at the margin goes by time priority on each side.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

BUY, SELL = "buy", "sell"
INF = float("inf")


@dataclass(slots=True, frozen=True)
class AuctionOrder:
    id: int
    seq: int
    account_id: int
    side: str
    price: Decimal
    quantity: int  # what is left to trade
    hardware: str | None = None  # sells
    allowed: frozenset[str] = frozenset()  # buys; empty = any hardware


@dataclass(slots=True, frozen=True)
class AuctionFill:
    buy_id: int
    sell_id: int
    buyer_account_id: int
    seller_account_id: int
    quantity: int
    hardware: str


@dataclass(slots=True)
class Clearing:
    price: Decimal | None  # None: no cross
    volume: int
    demand: int  # eligible buy quantity at the price
    supply: int  # eligible sell quantity at the price
    reference_price: Decimal | None
    candidates: int = 0
    fills: list[AuctionFill] = field(default_factory=list)
    filled: dict[int, int] = field(default_factory=dict)  # order id -> quantity traded

    @property
    def imbalance(self) -> int:
        """Positive: buyers left over at the price; negative: sellers left over."""
        return self.demand - self.supply


# --- a small max-flow (Edmonds-Karp) on the group graph ----------------------------------------


class _Flow:
    def __init__(self) -> None:
        self.cap: dict[tuple, dict[tuple, float]] = defaultdict(dict)
        self.fwd: dict[tuple, list[tuple]] = defaultdict(list)  # the unbounded (inner) edges
        self.ptr: dict[tuple, int] = defaultdict(int)

    def add(self, u: tuple, v: tuple, c: float) -> None:
        self.cap[u][v] = self.cap[u].get(v, 0) + c
        self.cap[v].setdefault(u, 0)
        if c == INF:
            self.fwd[u].append(v)

    def _path(self, s: tuple, t: tuple, dead: set[tuple] | None) -> list[tuple] | None:
        prev: dict[tuple, tuple | None] = {s: None}
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for v, c in self.cap[u].items():
                if c > 0 and v not in prev and (dead is None or v not in dead):
                    prev[v] = u
                    if v == t:
                        path = [t]
                        while prev[path[-1]] is not None:
                            path.append(prev[path[-1]])  # type: ignore[arg-type]
                        return path[::-1]
                    queue.append(v)
        if dead is not None:
            # Nothing reached t, and augmenting elsewhere only adds reverse edges on vertices
            # that reach t, so none of these vertices will ever reach it: never search them again.
            dead.update(prev)
        return None

    def push(self, path: Sequence[tuple], amount: float) -> None:
        for u, v in zip(path, path[1:], strict=False):
            self.cap[u][v] -= amount
            self.cap[v][u] += amount

    def direct(self, start: tuple, t: tuple, limit: float) -> int:
        """Push along start -> hub -> group -> t with no re-routing (cheap; tried first).

        Inner edges are unbounded, so only the group's edge to t can be full; that capacity
        only ever decreases, so each hub keeps a pointer past the groups already full.
        """
        pushed = 0
        cap = self.cap
        for hub in self.fwd[start]:
            ends = self.fwd[hub]
            i = self.ptr[hub]
            while i < len(ends) and cap[ends[i]].get(t, 0) <= 0:
                i += 1
            self.ptr[hub] = i
            for end in ends[i:]:
                room = cap[end].get(t, 0)
                if room > 0:
                    amount = min(room, limit - pushed)
                    self.push((start, hub, end, t), amount)
                    pushed += amount
                    if pushed >= limit:
                        return int(pushed)
        return int(pushed)

    def augment(self, s: tuple, t: tuple, *, limit: float = INF, dead: set[tuple] | None = None) -> int:
        """Push up to `limit` from s to t along shortest residual paths."""
        pushed = 0
        while pushed < limit:
            path = self._path(s, t, dead)
            if path is None:
                break
            amount = min(min(self.cap[u][v] for u, v in zip(path, path[1:], strict=False)), limit - pushed)
            self.push(path, amount)
            pushed += amount
        return int(pushed)


_S, _T = ("S",), ("T",)


def _buy_group(o: AuctionOrder, dual: set[int]) -> tuple:
    return ("B", o.account_id if o.account_id in dual else None, o.allowed)


def _sell_group(o: AuctionOrder, dual: set[int]) -> tuple:
    return ("A", o.account_id if o.account_id in dual else None, o.hardware)


def _compatible(bg: tuple, sg: tuple) -> bool:
    _, b_acct, allowed = bg
    _, s_acct, hw = sg
    if allowed and hw not in allowed:
        return False
    return b_acct is None or s_acct is None or b_acct != s_acct


def _hub(bg: tuple, hw: str) -> tuple:
    """The hub a buy group reaches hardware `hw` through.

    Buys of accounts that never sell share one hub per hardware, which reaches every sell group
    of that hardware; an account that also sells has its own hub per hardware, which reaches all
    of them but its own. Any buy entering a hub is compatible with any sell leaving it, and the
    graph has O(groups + hardware x dual accounts) edges instead of buy groups x sell groups.
    """
    return ("H", bg[1], hw)


def _inner_edges(buy_groups: Iterable[tuple], sell_groups: Iterable[tuple]) -> list[tuple[tuple, tuple]]:
    sells_by_hw: dict[str, list[tuple]] = defaultdict(list)
    for sg in sell_groups:
        sells_by_hw[sg[2]].append(sg)
    edges: list[tuple[tuple, tuple]] = []
    hubs: set[tuple] = set()
    for bg in buy_groups:
        for hw in sells_by_hw:
            if not bg[2] or hw in bg[2]:
                hub = _hub(bg, hw)
                edges.append((bg, hub))
                hubs.add(hub)
    for hub in hubs:
        _, acct, hw = hub
        for sg in sells_by_hw[hw]:
            if acct is None or sg[1] is None or sg[1] != acct:
                edges.append((hub, sg))
    return edges


def _network(buy_caps: dict[tuple, int], sell_caps: dict[tuple, int]) -> _Flow:
    net = _Flow()
    buy_groups = [g for g, c in buy_caps.items() if c]
    sell_groups = [g for g, c in sell_caps.items() if c]
    for bg in buy_groups:
        net.add(_S, bg, buy_caps[bg])
    for sg in sell_groups:
        net.add(sg, _T, sell_caps[sg])
    for u, v in _inner_edges(buy_groups, sell_groups):
        net.add(u, v, INF)
    return net


def max_volume(buy_caps: dict[tuple, int], sell_caps: dict[tuple, int]) -> int:
    net = _network(buy_caps, sell_caps)
    pushed = 0
    for bg, c in list(net.cap[_S].items()):
        got = net.direct(bg, _T, c)
        if got:
            net.push((_S, bg), got)
            # direct_from_buy started at bg; account for the S -> bg leg here.
            pushed += got
    return pushed + net.augment(_S, _T)


# --- price discovery ---------------------------------------------------------------------------


def _priority(o: AuctionOrder) -> tuple:
    return (-o.price, o.seq) if o.side == BUY else (o.price, o.seq)


class _Eligible:
    """Eligible quantity per group at any price, by bisecting each group's sorted limits."""

    def __init__(self, orders: Sequence[AuctionOrder], group) -> None:
        by_group: dict[tuple, list[AuctionOrder]] = defaultdict(list)
        for o in orders:
            by_group[group(o)].append(o)
        self.groups: dict[tuple, tuple[list[Decimal], list[int]]] = {}
        for g, members in by_group.items():
            members.sort(key=lambda o: o.price)
            prices = [o.price for o in members]
            cum = [0]
            for o in members:
                cum.append(cum[-1] + o.quantity)
            self.groups[g] = (prices, cum)

    def buys_at(self, p: Decimal) -> dict[tuple, int]:
        return {g: cum[-1] - cum[bisect_left(prices, p)] for g, (prices, cum) in self.groups.items()}

    def sells_at(self, p: Decimal) -> dict[tuple, int]:
        return {g: cum[bisect_right(prices, p)] for g, (prices, cum) in self.groups.items()}


def _dual_accounts(orders: Iterable[AuctionOrder]) -> set[int]:
    buyers, sellers = set(), set()
    for o in orders:
        (buyers if o.side == BUY else sellers).add(o.account_id)
    return buyers & sellers


def _round_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    return (price / tick).to_integral_value(rounding=ROUND_HALF_EVEN) * tick


def clearing_price(
    orders: Sequence[AuctionOrder], *, reference_price: Decimal | None = None, tick: Decimal = Decimal("0.01")
) -> Clearing:
    """The uniform price and its volume, without deciding who fills (indicative results)."""
    buys = [o for o in orders if o.side == BUY and o.quantity > 0]
    sells = [o for o in orders if o.side == SELL and o.quantity > 0]
    ref = _round_to_tick(reference_price, tick) if reference_price is not None else None
    if not buys or not sells:
        return Clearing(None, 0, sum(o.quantity for o in buys), sum(o.quantity for o in sells), ref)
    dual = _dual_accounts(buys + sells)
    buy_el = _Eligible(buys, lambda o: _buy_group(o, dual))
    sell_el = _Eligible(sells, lambda o: _sell_group(o, dual))
    limits = sorted({o.price for o in buys} | {o.price for o in sells})
    # Strictly between two consecutive limits a < b, V and the imbalance are constant but differ
    # from both ends (the buys at a and the sells at b drop out), so the gap can win on imbalance.
    # Its best tick is the reference if inside, else the tick nearest the reference: a + tick or
    # b - tick (a + tick without a reference: the lower price).
    candidates = set(limits)
    for a, b in zip(limits, limits[1:], strict=False):
        if b - a > tick:
            candidates.update((a + tick, b - tick))
    if ref is not None and limits[0] < ref < limits[-1]:
        candidates.add(ref)
    candidates = sorted(candidates)
    # min(demand, supply) bounds the volume: evaluate the most promising prices first and skip
    # any whose bound is below the best volume found (they cannot win, not even a tie).
    bounded = []
    for p in candidates:
        b_caps, s_caps = buy_el.buys_at(p), sell_el.sells_at(p)
        demand, supply = sum(b_caps.values()), sum(s_caps.values())
        if demand and supply:
            bounded.append((min(demand, supply), p, b_caps, s_caps, demand, supply))
    bounded.sort(key=lambda item: (-item[0], item[1]))
    best: tuple | None = None
    for bound, p, b_caps, s_caps, demand, supply in bounded:
        if best is not None and bound < -best[0][0]:
            break
        volume = max_volume(b_caps, s_caps)
        if not volume:
            continue
        distance = abs(p - ref) if ref is not None else Decimal(0)
        key = (-volume, abs(demand - supply), distance, p)
        if best is None or key < best[0]:
            best = (key, p, volume, demand, supply)
    if best is None:
        return Clearing(
            None, 0, sum(o.quantity for o in buys), sum(o.quantity for o in sells), ref, candidates=len(candidates)
        )
    _, p, volume, demand, supply = best
    return Clearing(p, volume, demand, supply, ref, candidates=len(candidates))


def _runs(orders: list[AuctionOrder], group) -> list[tuple[tuple, list[AuctionOrder]]]:
    """Consecutive orders of one group in priority order, merged (they are interchangeable)."""
    runs: list[tuple[tuple, list[AuctionOrder]]] = []
    for o in orders:
        g = group(o)
        if runs and runs[-1][0] == g:
            runs[-1][1].append(o)
        else:
            runs.append((g, [o]))
    return runs


def _greedy_fills(
    ranked: list[AuctionOrder], group, own_caps: dict[tuple, int], other_caps: dict[tuple, int], *, buy_side: bool
) -> dict[int, int]:
    """Fill one side's orders in priority order, each as much as the earlier ones allow.

    The network points from this side to the other (for sells the edges are reversed), the
    other side is capped by group, and each run of orders pushes flow from its group node to T.
    A node that once cannot reach T never can again (see _Flow._path), so searches shrink.
    """
    net = _Flow()
    for og, c in other_caps.items():
        net.add(og, _T, c)
    buy_groups, sell_groups = (own_caps, other_caps) if buy_side else (other_caps, own_caps)
    for u, v in _inner_edges(buy_groups, sell_groups):
        if buy_side:
            net.add(u, v, INF)
        else:
            net.add(v, u, INF)
    fills: dict[int, int] = {}
    dead: set[tuple] = set()
    for g, run in _runs(ranked, group):
        want = sum(o.quantity for o in run)
        got = 0
        if g not in dead:
            got = net.direct(g, _T, want)
            if got < want:
                got += net.augment(g, _T, limit=want - got, dead=dead)
        for o in run:
            take = min(o.quantity, got)
            fills[o.id] = take
            got -= take
    return fills


def clear(
    orders: Sequence[AuctionOrder], *, reference_price: Decimal | None = None, tick: Decimal = Decimal("0.01")
) -> Clearing:
    """Find the clearing price and allocate it: fills between orders, all at that price."""
    result = clearing_price(orders, reference_price=reference_price, tick=tick)
    if result.price is None:
        return result
    p = result.price
    buys = sorted((o for o in orders if o.side == BUY and o.quantity > 0 and o.price >= p), key=_priority)
    sells = sorted((o for o in orders if o.side == SELL and o.quantity > 0 and o.price <= p), key=_priority)
    dual = _dual_accounts(o for o in orders if o.quantity > 0)

    def bgroup(o: AuctionOrder) -> tuple:
        return _buy_group(o, dual)

    def sgroup(o: AuctionOrder) -> tuple:
        return _sell_group(o, dual)

    b_caps: dict[tuple, int] = defaultdict(int)
    s_caps: dict[tuple, int] = defaultdict(int)
    for o in buys:
        b_caps[bgroup(o)] += o.quantity
    for o in sells:
        s_caps[sgroup(o)] += o.quantity

    buy_fill = _greedy_fills(buys, bgroup, b_caps, s_caps, buy_side=True)
    sell_fill = _greedy_fills(sells, sgroup, s_caps, b_caps, buy_side=False)

    # One flow with exactly those margins (exists by Mendelsohn-Dulmage; checked).
    b_tot: dict[tuple, int] = defaultdict(int)
    s_tot: dict[tuple, int] = defaultdict(int)
    for o in buys:
        b_tot[bgroup(o)] += buy_fill[o.id]
    for o in sells:
        s_tot[sgroup(o)] += sell_fill[o.id]
    net = _network(dict(b_tot), dict(s_tot))
    total = net.augment(_S, _T)
    if not (total == result.volume == sum(buy_fill.values()) == sum(sell_fill.values())):
        raise AssertionError(f"auction allocation inconsistent: {total} vs {result.volume}")

    # Split the flow into trades hub by hub: every buy group entering a hub is compatible with
    # every sell group leaving it. Orders are taken in priority order within their group.
    buy_queues: dict[tuple, deque] = defaultdict(deque)
    sell_queues: dict[tuple, deque] = defaultdict(deque)
    for o in buys:
        if buy_fill[o.id]:
            buy_queues[bgroup(o)].append([o, buy_fill[o.id]])
    for o in sells:
        if sell_fill[o.id]:
            sell_queues[sgroup(o)].append([o, sell_fill[o.id]])
    inflow: dict[tuple, list[list]] = defaultdict(list)
    outflow: dict[tuple, list[list]] = defaultdict(list)
    for u, v in _inner_edges([g for g, c in b_tot.items() if c], [g for g, c in s_tot.items() if c]):
        flow = int(net.cap[v].get(u, 0))  # the reverse residual of an edge is its flow
        if flow > 0:
            (inflow[v] if u[0] == "B" else outflow[u]).append([u if u[0] == "B" else v, flow])
    pairs: dict[tuple[int, int], int] = {}
    meta: dict[tuple[int, int], AuctionFill] = {}
    for hub in sorted(inflow, key=repr):
        ins, outs = deque(inflow[hub]), deque(outflow[hub])
        while ins:
            bg, bflow = ins[0]
            sg, sflow = outs[0]
            q = min(bflow, sflow)
            ins[0][1] -= q
            outs[0][1] -= q
            if ins[0][1] == 0:
                ins.popleft()
            if outs[0][1] == 0:
                outs.popleft()
            while q > 0:
                bo_entry, so_entry = buy_queues[bg][0], sell_queues[sg][0]
                bo, so = bo_entry[0], so_entry[0]
                take = min(q, bo_entry[1], so_entry[1])
                key = (bo.id, so.id)
                pairs[key] = pairs.get(key, 0) + take
                meta[key] = AuctionFill(bo.id, so.id, bo.account_id, so.account_id, 0, so.hardware or "")
                q -= take
                bo_entry[1] -= take
                so_entry[1] -= take
                if bo_entry[1] == 0:
                    buy_queues[bg].popleft()
                if so_entry[1] == 0:
                    sell_queues[sg].popleft()
    rank = {o.id: i for i, o in enumerate(buys)} | {o.id: i for i, o in enumerate(sells)}
    result.fills = [
        AuctionFill(m.buy_id, m.sell_id, m.buyer_account_id, m.seller_account_id, pairs[k], m.hardware)
        for k, m in sorted(meta.items(), key=lambda kv: (rank[kv[0][0]], rank[kv[0][1]]))
    ]
    result.filled = {oid: q for oid, q in (buy_fill | sell_fill).items() if q}
    return result
