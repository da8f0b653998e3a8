"""An independent reference for what settlement must pay, written from the documents only.

Sources: PRODUCT.md §2 and §5, and README "Money: scale and rounding" and "Contracts, usage and
settlement". Nothing here imports the exchange's code: the arithmetic is exact (Fraction), and
the two rounding rules are written out by hand, so a bug in metering.money / metering.settlement /
metering.usage cannot also be in the expected values.

- Reserved amounts round UP to the cent, ONCE on the whole amount: a buy of q tokens at limit L
  reserves ceil(q x L / 1M x (1 + highest fee bps / 10,000)), and holds that less the same rule
  applied to what has filled. A contract's value rounds HALF-EVEN to the cent, once.
  Billable tokens round half-even to a whole token per event.
- A fill takes from its order's escrow what the order's holding drops by; the contract keeps at
  most its full value plus its buyer fee rounded up (ceil(x x p / 1M x (1 + bps))).
- A pair's usage fills its contracts oldest first; what is left after the newest is overage.
- value = (delivered + share x unused) x price / 1M, rounded half-even, at most the escrow.
- Fees accrue unrounded (exact value x bps / 10,000); per account and role on an instrument the
  running total is rounded half-even, and a contract pays what it rose by plus what earlier
  contracts could not hold, at most escrow - value (buyer) or value (seller).
- provider = value - seller fee; refund = escrow - value - buyer fee.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import floor

MTOK = 1_000_000


def _exact(x: Decimal | int | str | Fraction) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(Decimal(x) if isinstance(x, str) else x)


def half_even(x: Fraction) -> int:
    """Nearest integer; exact halves go to the even neighbour."""
    low = floor(x)
    rest = x - low
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and low % 2 == 1):
        return low + 1
    return low


def cents_half_even(x: Decimal | int | Fraction) -> Decimal:
    return Decimal(half_even(_exact(x) * 100)) / 100


def cents_up(x: Decimal | int | Fraction) -> Decimal:
    hundredths = _exact(x) * 100
    up = floor(hundredths)
    if up != hundredths:
        up += 1
    return Decimal(up) / 100


def billable(*, prompt: int, cached: int, completion: int, cached_weight: Decimal, output_weight: Decimal) -> int:
    exact = Fraction(prompt - cached) + cached * _exact(cached_weight) + completion * _exact(output_weight)
    return half_even(exact)


def allocate_oldest_first(usage: int, quantities: list[int]) -> tuple[list[int], int]:
    """(delivered per contract, in the given oldest-first order; overage)."""
    delivered = []
    for q in quantities:
        d = q if usage >= q else usage
        delivered.append(d)
        usage -= d
    return delivered, usage


def reserve(*, quantity: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What a buy of `quantity` tokens at limit `price` reserves."""
    return cents_up(Fraction(quantity) * _exact(price) / MTOK * (10_000 + max_fee_bps) / 10_000)


def order_holds(*, quantity: int, filled: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What a live buy order holds in escrow once `filled` of its tokens filled."""
    if filled >= quantity:
        return Decimal("0")
    kw = {"price": price, "max_fee_bps": max_fee_bps}
    return reserve(quantity=quantity, **kw) - reserve(quantity=filled, **kw)


def contract_need(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """A contract's full value plus its buyer fee, rounded up once."""
    return reserve(quantity=quantity, price=price, max_fee_bps=fee_bps)


def fill_split(
    *, order_quantity: int, limit: Decimal, max_fee_bps: int, filled_before: int, quantity: int, price: Decimal,
    fee_bps: int,
) -> tuple[Decimal, Decimal]:
    """(the contract's escrow, released at once) of a fill."""
    kw = {"quantity": order_quantity, "price": limit, "max_fee_bps": max_fee_bps}
    took = order_holds(filled=filled_before, **kw) - order_holds(filled=filled_before + quantity, **kw)
    keep = min(took, contract_need(quantity=quantity, price=price, fee_bps=fee_bps))
    return keep, took - keep


def contract_escrow(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """The escrow of a contract that is its buy order's only fill, at the order's limit (then
    the order's reservation at the buyer's fee is exactly the contract's need)."""
    return contract_need(quantity=quantity, price=price, fee_bps=fee_bps)


@dataclass(frozen=True)
class Pay:
    delivered: int
    unused: int
    value: Decimal
    buyer_fee: Decimal
    seller_fee: Decimal
    provider: Decimal
    refund: Decimal


def contract_value(*, quantity: int, delivered: int, price: Decimal, share: Decimal, escrow: Decimal) -> tuple[Fraction, Decimal]:
    exact = (delivered + _exact(share) * (quantity - delivered)) * _exact(price) / MTOK
    return exact, min(cents_half_even(exact), escrow)


def running_fees(lines: list[tuple]) -> list[tuple[Decimal, Decimal]]:
    """Fees of contracts of one instrument, oldest first: lines are (buyer, seller, exact value,
    value, escrow, buyer bps, seller bps). Increments of each account's rounded running total,
    each at most what the contract has room for; what is still due at the end goes on the
    account's contracts with room left, oldest first."""
    zero = Decimal("0")
    exact: dict[tuple, Fraction] = {}
    charged: dict[tuple, Decimal] = {}
    room_left: list[list[Decimal]] = []
    out: list[list[Decimal]] = []
    for buyer, seller, exact_value, value, escrow, b_bps, s_bps in lines:
        pair, rooms = [], []
        for key, bps, room in ((("b", buyer), b_bps, escrow - value), (("s", seller), s_bps, value)):
            exact[key] = exact.get(key, Fraction(0)) + exact_value * bps / 10_000
            due = cents_half_even(exact[key]) - charged.get(key, zero)
            fee = min(max(due, zero), max(room, zero))
            charged[key] = charged.get(key, zero) + fee
            pair.append(fee)
            rooms.append(max(room, zero) - fee)
        out.append(pair)
        room_left.append(rooms)
    for key, total in exact.items():
        due = cents_half_even(total) - charged[key]
        side = 0 if key[0] == "b" else 1
        for n, (buyer, seller, *_rest) in enumerate(lines):
            if due <= 0:
                break
            if (buyer, seller)[side] != key[1]:
                continue
            add = min(due, room_left[n][side])
            out[n][side] += add
            due -= add
    return [(a, b) for a, b in out]


def contract_pay(
    *, quantity: int, delivered: int, price: Decimal, share: Decimal, buyer_bps: int, seller_bps: int, escrow: Decimal
) -> Pay:
    """One contract that is alone on its instrument for both its accounts."""
    exact, value = contract_value(quantity=quantity, delivered=delivered, price=price, share=share, escrow=escrow)
    [(buyer_fee, seller_fee)] = running_fees([(1, 2, exact, value, escrow, buyer_bps, seller_bps)])
    unused = quantity - delivered
    return Pay(delivered, unused, value, buyer_fee, seller_fee, value - seller_fee, escrow - value - buyer_fee)


@dataclass(frozen=True)
class Contract:
    key: object  # whatever identifies it to the caller (a trade id)
    pair: tuple  # (buyer, provider), or (instrument, buyer, provider)
    sequence: int  # match sequence: lower is older
    quantity: int
    price: Decimal
    buyer_bps: int
    seller_bps: int
    escrow: Decimal
    share: Decimal | None = None  # frozen on the trade; None: the share given to settle()


def settle(contracts: list[Contract], usage: dict[tuple, int], share: Decimal) -> tuple[dict[object, Pay], dict[object, int]]:
    """Every contract's pay, and the overage recorded on each (on the newest of its pair).

    A pair of three elements is (instrument, buyer, provider): fees run per instrument; a pair
    of two is (buyer, provider), all on one instrument."""
    overage: dict[object, int] = {}
    delivered_of: dict[object, int] = {}
    pairs: dict[tuple, list[Contract]] = {}
    for c in contracts:
        pairs.setdefault(c.pair, []).append(c)
    for pair, group in pairs.items():
        group = sorted(group, key=lambda c: c.sequence)
        delivered, over = allocate_oldest_first(usage.get(pair, 0), [c.quantity for c in group])
        for c, d in zip(group, delivered, strict=True):
            delivered_of[c.key] = d
            overage[c.key] = 0
        overage[group[-1].key] = over
    by_instrument: dict[object, list[Contract]] = {}
    for c in contracts:
        by_instrument.setdefault(c.pair[0] if len(c.pair) == 3 else None, []).append(c)
    pays: dict[object, Pay] = {}
    for group in by_instrument.values():
        group = sorted(group, key=lambda c: c.sequence)
        lines, values = [], []
        for c in group:
            c_share = share if c.share is None else c.share
            exact, value = contract_value(
                quantity=c.quantity, delivered=delivered_of[c.key], price=c.price, share=c_share, escrow=c.escrow
            )
            values.append(value)
            lines.append((c.pair[-2], c.pair[-1], exact, value, c.escrow, c.buyer_bps, c.seller_bps))
        for c, value, (b_fee, s_fee) in zip(group, values, running_fees(lines), strict=True):
            d = delivered_of[c.key]
            pays[c.key] = Pay(d, c.quantity - d, value, b_fee, s_fee, value - s_fee, c.escrow - value - b_fee)
    return pays, overage
