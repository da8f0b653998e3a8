"""The one validation of an order's quantity and price, for every door (API, web form, admin,
management commands): `order_place` calls `order_terms_check` before anything else reads the
numbers, so no door can send the database a value it cannot store or sum.

Caps (README.md "Order limits"):
- quantity: a positive whole number of tokens, a multiple of the lot size, at most
  MAX_ORDER_QUANTITY. The cap keeps any sum of a book's quantities inside 64 bits: SQLite's
  SUM() raises on overflow (it would take the public book down for everyone), PostgreSQL's
  bigint columns refuse the row.
- price: a finite positive Decimal below MAX_PRICE, no finer than the instrument's tick. The
  tick is checked with quantize (exact) in a context wide enough for any admitted price, never
  with %: 1e-999999999 % 0.01 is 1e-999999999 only by luck of the context, and 1e999999999 % x
  raises.

It imports no service and no other app, so services, forms and commands may all use it.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

MAX_ORDER_QUANTITY = 10**15  # tokens: a billion Mtok, far beyond any day of any provider
MAX_PRICE = Decimal("1000000")  # per 1M tokens, exclusive
# Enough digits for any price below MAX_PRICE at any tick the catalog could hold.
_EXACT = decimal.Context(prec=60, Emax=999, Emin=-999, traps=[decimal.InvalidOperation, decimal.Overflow])


class OrderTermsError(ValueError):
    """An order term refused: `code`, a message a person can act on, and the API field."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def quantity_check(*, quantity: object, lot_size: int) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
        raise OrderTermsError("invalid_quantity", "quantity must be a positive whole number of tokens.", "quantity")
    if quantity > MAX_ORDER_QUANTITY:
        raise OrderTermsError(
            "quantity_too_large",
            f"quantity is at most {MAX_ORDER_QUANTITY:,} tokens ({MAX_ORDER_QUANTITY // 10**6:,} Mtok) per order.",
            "quantity",
        )
    if quantity % lot_size:
        raise OrderTermsError(
            "invalid_lot", f"quantity must be a multiple of the lot size ({lot_size:,} tokens).", "quantity"
        )
    return quantity


def price_check(*, price: object, tick_size: Decimal) -> Decimal:
    if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
        raise OrderTermsError("invalid_price", "price must be a positive number.", "price")
    if price >= MAX_PRICE:
        raise OrderTermsError(
            "invalid_price", f"price must be below {MAX_PRICE:,}, the largest price the exchange accepts.", "price"
        )
    tick = tick_size.normalize()
    try:
        on_tick = price.quantize(tick, context=_EXACT) == price
    except decimal.DecimalException:
        on_tick = False  # finer than any representable multiple of the tick
    if not on_tick:
        raise OrderTermsError("invalid_tick", f"price must be a multiple of the tick size ({tick}).", "price")
    # quantize proved price has the tick's exponent or coarser; now prove it is a multiple.
    ratio = _EXACT.divide(price, tick)
    if ratio.to_integral_value(context=_EXACT) != ratio:
        raise OrderTermsError("invalid_tick", f"price must be a multiple of the tick size ({tick}).", "price")
    return price


def order_terms_check(*, quantity: object, price: object, lot_size: int, tick_size: Decimal) -> tuple[int, Decimal]:
    """Quantity then price, refused with the first OrderTermsError; returns them unchanged."""
    return quantity_check(quantity=quantity, lot_size=lot_size), price_check(price=price, tick_size=tick_size)


# --- price protection (README.md "Price protection") ----------------------------------------


# The last sentence of a price_out_of_band message; the web form replaces it by its own question.
PRICE_BAND_REMEDY = (
    "Check the price; to place it anyway, confirm it in the web form or send price_band_override: true."
)


def price_band_limits(*, reference: Decimal, band: Decimal, tick_size: Decimal) -> tuple[Decimal, Decimal | None]:
    """The lowest and highest price the band admits around `reference`, on the tick: the low
    rounded up and the high rounded down, so every admitted price is inside reference ± band.
    A band of 100% or more has no low end but the tick (None is never returned for the low)."""
    tick = tick_size.normalize()
    low = reference * (1 - band)
    high = reference * (1 + band)
    low_tick = max(tick, (low / tick).to_integral_value(rounding=decimal.ROUND_CEILING) * tick)
    high_tick = (high / tick).to_integral_value(rounding=decimal.ROUND_FLOOR) * tick
    return low_tick, high_tick


def price_band_check(
    *, price: Decimal, reference: Decimal | None, band: Decimal, tick_size: Decimal, symbol: str = ""
) -> None:
    """Refuse a price outside reference ± band (a fraction: 0.25 = 25%) with price_out_of_band.

    No reference (a book that never traded) or a band of 0 admits every price: there is
    nothing to protect against yet, and the band must not stop a new market from opening.
    """
    if reference is None or band <= 0:
        return
    low, high = price_band_limits(reference=reference, band=band, tick_size=tick_size)
    if low <= price <= high:
        return
    where = f" on {symbol}" if symbol else ""
    shown = reference.quantize(tick_size.normalize())  # a trade price is on the tick: 2.00, not 2.0000
    side = "above" if price > high else "below"
    raise OrderTermsError(
        "price_out_of_band",
        f"price {price.quantize(tick_size.normalize())} is far {side} the market{where}: the price band admits {low} to {high} "
        f"(last trade {shown} ± {(band * 100).normalize():f}%). {PRICE_BAND_REMEDY}",
        "price",
    )
