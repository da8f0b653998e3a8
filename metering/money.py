"""Money: Decimal at 2 places (cents) in one settlement currency; never float.

Every fee and reservation amount of the exchange is computed here, by named functions.

Rounding rules:
- an amount *reserved* (escrow) rounds up to the cent (ROUND_CEILING), once, on the whole
  amount: a buy of q tokens at limit L reserves ceil(q x L / 1M x (1 + max fee)), so the
  reservation covers every fill at any price <= L and any fee rate the order can pay;
- a contract's *value* rounds half-even to the cent, once per contract;
- *fees* accrue unrounded on each contract (value before rounding x the rate frozen on the
  trade) and are rounded half-even once, on each account's running total per instrument and
  role (buyer, seller): a contract is charged the increase of that rounded running total, so an
  account pays round(total exact fee) however its trades were split into fills.
Every split is built by subtraction (provider payout = value - seller fee, refund = escrow -
value - buyer fee), so the parts add up to the whole exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

from django.conf import settings

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
    """A fee rounded on its own (quotes); settlement uses fee_exact and fee_running."""
    return round_charge(amount * bps / BPS)


def fee_exact(amount: Decimal, bps: int) -> Decimal:
    """The unrounded fee on an unrounded amount: what a contract accrues."""
    return amount * bps / BPS


def fee_rates() -> tuple[int, int]:
    """The (maker, taker) rates in bps that a new order freezes (MAKER_FEE_BPS, TAKER_FEE_BPS)."""
    return settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS


def fee_running(*, exact_before: Decimal, charged_before: Decimal, exact: Decimal, cap: Decimal) -> Decimal:
    """The cent fee of one contract under the running-total rule (see the module docstring).

    `exact_before` / `charged_before`: the account's unrounded and charged fees in this role on
    this instrument so far. The contract is charged round(exact_before + exact) - charged_before,
    never below zero and never above `cap` (what its escrow or value leaves); whatever a cap holds
    back stays due and is charged on the account's next contract with room.
    """
    due = round_charge(exact_before + exact) - charged_before
    return min(max(due, ZERO), max(cap, ZERO))


def reserve(*, quantity: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What a buy of `quantity` tokens at limit `price` reserves: value plus the highest fee,
    rounded up once to the cent."""
    return round_reserve(notional(quantity, price) * (BPS + max_fee_bps) / BPS)


def contract_need(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """The most a contract can be charged (full quantity at its price plus its buyer fee), rounded up."""
    return round_reserve(notional(quantity, price) * (BPS + fee_bps) / BPS)


def order_escrow_open(*, reserved: Decimal, quantity: int, filled: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """The escrow a live buy order holds: its reservation less the reservation of what has filled.

    reserved - reserve(filled) is a function of the order alone (the rule applied once, to the
    cumulative fill), so it never drifts however the order fills; a fully filled order holds
    nothing. Never negative (an order reserved under an older rule may hold less than this).
    """
    if filled >= quantity:
        return ZERO
    return max(reserved - reserve(quantity=filled, price=price, max_fee_bps=max_fee_bps), ZERO)


@dataclass(frozen=True)
class FillEscrow:
    contract: Decimal  # moves from the order's escrow to the contract (Trade.buyer_escrow)
    release: Decimal  # price improvement and fee difference: back to available at once
    shortfall: Decimal  # what the order's escrow lacked to give the contract its need (0 normally)


def fill_escrow(
    *,
    reserved: Decimal,
    order_quantity: int,
    limit: Decimal,
    max_fee_bps: int,
    filled_before: int,
    quantity: int,
    price: Decimal,
    buyer_fee_bps: int,
) -> FillEscrow:
    """Split what a fill takes out of its buy order's escrow between the contract and a release.

    The order's escrow drops from order_escrow_open(filled_before) to order_escrow_open(filled
    after); the contract keeps min(that drop, contract_need) and the rest is released. Neither
    part is ever negative, so a fill can never need money the order did not reserve.
    """
    kw = {"reserved": reserved, "quantity": order_quantity, "price": limit, "max_fee_bps": max_fee_bps}
    consumed = order_escrow_open(filled=filled_before, **kw) - order_escrow_open(filled=filled_before + quantity, **kw)
    need = contract_need(quantity=quantity, price=price, fee_bps=buyer_fee_bps)
    contract = min(consumed, need)
    exact_limit_need = reserve(quantity=filled_before + quantity, price=limit, max_fee_bps=max_fee_bps)
    shortfall = max(exact_limit_need - reserved, ZERO) if contract < need else ZERO
    return FillEscrow(contract=contract, release=consumed - contract, shortfall=shortfall)


def reserve_per_lot(*, lot_size: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """One lot's reservation (shown per lot in the order form); orders reserve `reserve`."""
    return reserve(quantity=lot_size, price=price, max_fee_bps=max_fee_bps)


def contract_escrow(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """Escrow of a contract filled at its order's limit with no rounding residue (benchmarks)."""
    return contract_need(quantity=quantity, price=price, fee_bps=fee_bps)
