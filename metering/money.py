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

from dataclasses import dataclass
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


def reserve(*, quantity: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What a buy of `quantity` tokens at limit `price` reserves: quantity x limit plus the
    highest fee on that total, rounded up ONCE to the cent (100 Mtok at 0.30: 30.03)."""
    return round_reserve(notional(quantity, price) * (BPS + max_fee_bps) / BPS)


def order_escrow_open(*, quantity: int, filled: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What a live buy order holds in escrow once `filled` of its `quantity` tokens filled:
    reserve(quantity) - reserve(filled). The rule is applied to the cumulative fill, never per
    fill, so it cannot drift however the order is filled; a filled order holds nothing."""
    if filled >= quantity:
        return ZERO
    kw = {"price": price, "max_fee_bps": max_fee_bps}
    return reserve(quantity=quantity, **kw) - reserve(quantity=filled, **kw)


def contract_need(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """The most a contract can be charged: full quantity at its price plus the buyer's fee,
    rounded up once to the cent."""
    return round_reserve(notional(quantity, price) * (BPS + fee_bps) / BPS)


@dataclass(frozen=True)
class FillEscrow:
    contract: Decimal  # from the order's escrow to the contract's (Trade.buyer_escrow)
    release: Decimal  # price improvement and a lower fee: back to available at once
    shortfall: Decimal  # what the order's escrow lacked to cover contract_need (normally 0)


def fill_escrow(
    *,
    order_quantity: int,
    limit: Decimal,
    max_fee_bps: int,
    filled_before: int,
    quantity: int,
    price: Decimal,
    buyer_fee_bps: int,
) -> FillEscrow:
    """Split what a fill takes out of its buy order's escrow: the order's escrow goes from
    order_escrow_open(filled_before) to order_escrow_open(filled_before + quantity); the
    contract keeps min(that, contract_need) and the rest is released. Neither part is ever
    negative: a fill never needs money its order did not reserve. A contract that gets less
    than its need (a cent, from rounding once on the order) is charged at most what it holds."""
    kw = {"quantity": order_quantity, "price": limit, "max_fee_bps": max_fee_bps}
    consumed = order_escrow_open(filled=filled_before, **kw) - order_escrow_open(filled=filled_before + quantity, **kw)
    need = contract_need(quantity=quantity, price=price, fee_bps=buyer_fee_bps)
    contract = min(consumed, need)
    return FillEscrow(contract=contract, release=consumed - contract, shortfall=need - contract)


def fee_exact(amount: Decimal, bps: int) -> Decimal:
    """The unrounded fee on an unrounded amount: what a contract accrues."""
    return amount * bps / BPS


def fee_bps(*, maker: bool) -> int:
    """Today's fee rate (basis points of value) for a maker or a taker: what a NEW order
    freezes (Order.maker_fee_bps / taker_fee_bps); a trade uses its orders' frozen rates."""
    from django.conf import settings

    return settings.MAKER_FEE_BPS if maker else settings.TAKER_FEE_BPS


def max_fee_bps() -> int:
    """Today's highest fee rate (previews of a new order; orders use their frozen rates)."""
    from django.conf import settings

    return max(settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS)


@dataclass(frozen=True)
class FeeLine:
    """One contract as the running-total fee rule sees it (metering.settlement builds these)."""

    key: object  # the caller's id of the contract (a trade id)
    buyer_id: int
    seller_id: int
    exact_value: Decimal  # the contract's value before rounding
    value: Decimal  # the value it is charged (rounded half-even once)
    escrow: Decimal  # what the contract holds for the buyer (Trade.buyer_escrow)
    buyer_fee_bps: int
    seller_fee_bps: int


def fees_running(lines: list[FeeLine]) -> dict[object, tuple[Decimal, Decimal]]:
    """(buyer fee, seller fee) in cents of each contract under the running-total rule.

    `lines` are all the contracts of one instrument, oldest first (match sequence). Fees accrue
    unrounded (exact value x the trade's frozen bps); for each account and role (buyer,
    seller) the running total of its exact fees is rounded half-even, and each contract is
    charged what that rounded total rose by. A contract is never charged more than its escrow
    leaves after its value (buyer) or than its value (seller): what one cannot hold is charged
    on the account's next contracts there, and what is still due after the last goes on its
    earlier contracts that have room left, oldest first. So an account pays round(sum of its
    exact fees) on an instrument however its trades were split into fills, as long as its
    contracts can hold it (they can: a buy reserves the highest fee on its whole quantity).
    The result is a function of the instrument's final contracts and usage alone: any chunking,
    any re-run, any worker computes the same cents.
    """
    exact: dict[tuple[str, int], Decimal] = {}
    charged: dict[tuple[str, int], Decimal] = {}
    room_left: dict[tuple[str, object], Decimal] = {}
    mine: dict[tuple[str, int], list[object]] = {}
    out: dict[object, list[Decimal]] = {}
    for line in lines:
        fees = []
        for role, account, bps, room in (
            ("buyer", line.buyer_id, line.buyer_fee_bps, line.escrow - line.value),
            ("seller", line.seller_id, line.seller_fee_bps, line.value),
        ):
            k = (role, account)
            exact[k] = exact.get(k, ZERO) + fee_exact(line.exact_value, bps)
            due = round_charge(exact[k]) - charged.get(k, ZERO)
            fee_cents = min(max(due, ZERO), max(room, ZERO))
            charged[k] = charged.get(k, ZERO) + fee_cents
            room_left[(role, line.key)] = max(room, ZERO) - fee_cents
            mine.setdefault(k, []).append(line.key)
            fees.append(fee_cents)
        out[line.key] = fees
    for k, keys in mine.items():
        due = round_charge(exact[k]) - charged[k]
        for key in keys:
            if due <= 0:
                break
            add = min(due, room_left[(k[0], key)])
            out[key][0 if k[0] == "buyer" else 1] += add
            due -= add
    return {key: (fees[0], fees[1]) for key, fees in out.items()}
