"""An independent reference for what settlement must pay, written from the documents only.

Sources: PRODUCT.md §2 and §5, and README "Money: scale and rounding" and "Contracts, usage and
settlement". Nothing here imports the exchange's code: the arithmetic is exact (Fraction), and
the two rounding rules are written out by hand, so a bug in metering.money / metering.settlement /
metering.usage cannot also be in the expected values.

- Reserved amounts round UP to the cent; charged or paid amounts round HALF-EVEN to the cent,
  once per contract. Billable tokens round half-even to a whole token per event.
- A pair's usage fills its contracts oldest first; what is left after the newest is overage.
- value = (delivered + share x unused) x price / 1M; fee = value x bps / 10,000;
  provider = value - seller fee; refund = escrow - value - buyer fee.
- A contract's escrow = ceil(full value) + ceil(that value x buyer bps); a buy order's
  reservation per lot = ceil(lot value) + ceil(that value x the highest fee bps).
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


def contract_escrow(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    value = cents_up(Fraction(quantity) * _exact(price) / MTOK)
    return value + cents_up(_exact(value) * fee_bps / 10_000)


def reserve_per_lot(*, lot_size: int, price: Decimal, max_fee_bps: int) -> Decimal:
    return contract_escrow(quantity=lot_size, price=price, fee_bps=max_fee_bps)


@dataclass(frozen=True)
class Pay:
    delivered: int
    unused: int
    value: Decimal
    buyer_fee: Decimal
    seller_fee: Decimal
    provider: Decimal
    refund: Decimal


def contract_pay(
    *, quantity: int, delivered: int, price: Decimal, share: Decimal, buyer_bps: int, seller_bps: int, escrow: Decimal
) -> Pay:
    unused = quantity - delivered
    value = cents_half_even((delivered + _exact(share) * unused) * _exact(price) / MTOK)
    buyer_fee = cents_half_even(_exact(value) * buyer_bps / 10_000)
    seller_fee = cents_half_even(_exact(value) * seller_bps / 10_000)
    return Pay(delivered, unused, value, buyer_fee, seller_fee, value - seller_fee, escrow - value - buyer_fee)


@dataclass(frozen=True)
class Contract:
    key: object  # whatever identifies it to the caller (a trade id)
    pair: tuple  # (buyer, provider)
    sequence: int  # match sequence: lower is older
    quantity: int
    price: Decimal
    buyer_bps: int
    seller_bps: int
    escrow: Decimal


def settle(contracts: list[Contract], usage: dict[tuple, int], share: Decimal) -> tuple[dict[object, Pay], dict[object, int]]:
    """Every contract's pay, and the overage recorded on each (on the newest of its pair)."""
    pays: dict[object, Pay] = {}
    overage: dict[object, int] = {}
    pairs: dict[tuple, list[Contract]] = {}
    for c in contracts:
        pairs.setdefault(c.pair, []).append(c)
    for pair, group in pairs.items():
        group = sorted(group, key=lambda c: c.sequence)
        delivered, over = allocate_oldest_first(usage.get(pair, 0), [c.quantity for c in group])
        for c, d in zip(group, delivered, strict=True):
            pays[c.key] = contract_pay(
                quantity=c.quantity, delivered=d, price=c.price, share=share,
                buyer_bps=c.buyer_bps, seller_bps=c.seller_bps, escrow=c.escrow,
            )  # fmt: skip
            overage[c.key] = 0
        overage[group[-1].key] = over
    return pays, overage
