"""Money: Decimal at 2 places (cents) in one settlement currency; never float.

The one rounding rule:
- amounts *reserved* (escrow) round up to the cent (ROUND_CEILING), per lot, so a reservation
  always covers whatever it is later charged;
- amounts *charged or paid* (settlement value and fees) round half-even to the cent, computed
  once per contract from cumulative totals, never per event, so rounding cannot drift.
Every split is built by subtraction (provider payout = value - seller fee, refund = escrow -
value - buyer fee), so the parts add up to the whole exactly.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
TOKENS_PER_PRICE_UNIT = 1_000_000
BPS = Decimal(10_000)


def round_charge(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def round_reserve(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_CEILING)


def notional(tokens: int | Decimal, price: Decimal) -> Decimal:
    """Exact value of `tokens` at `price` per 1M tokens (unrounded)."""
    return Decimal(tokens) * price / TOKENS_PER_PRICE_UNIT


def fee(amount: Decimal, bps: int) -> Decimal:
    return round_charge(amount * bps / BPS)


def reserve_per_lot(*, lot_size: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What one lot of a buy order at `price` holds in escrow: value plus the highest fee."""
    value = round_reserve(notional(lot_size, price))
    return value + round_reserve(value * max_fee_bps / BPS)


def contract_escrow(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """What a contract keeps in escrow: its full value plus the buyer's fee, rounded up.

    Never more than the lots' reservation at any limit >= price, since ceil(k*x) <= k*ceil(x).
    """
    value = round_reserve(notional(quantity, price))
    return value + round_reserve(value * fee_bps / BPS)


def fee_bps(*, maker: bool) -> int:
    """The exchange's fee rate (basis points of value) for a maker or a taker."""
    from django.conf import settings

    return settings.MAKER_FEE_BPS if maker else settings.TAKER_FEE_BPS


def max_fee_bps() -> int:
    """The highest fee rate: a buy reserves it, since it may end up maker or taker."""
    from django.conf import settings

    return max(settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS)
