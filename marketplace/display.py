"""How prices and money read, in one place: web templates (the `price` and `money` filters),
the API's display strings, statement memos and messages all call these.

- A price (currency per Mtok) has at least two decimals and as many more as it needs, up to the
  four the database keeps, with no trailing zeros beyond two: 2 -> "2.00", 1.9000 -> "1.90",
  0.1234 -> "0.1234". No thousands separator: a price shown is one a trader can type back into
  the order form, which refuses separators as ambiguous.
- An amount of money is always two decimals with thousands separators: "1,234.50".
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

TWO_PLACES = Decimal("0.01")


def price_plain(value: Decimal | int | str | None) -> str | None:
    """The price format, None for no price. The API's price fields use exactly this."""
    if value is None or value == "":
        return None
    try:
        value = Decimal(value)
    except InvalidOperation:
        return str(value)
    if not value.is_finite():
        return str(value)
    if value == value.quantize(TWO_PLACES):
        return f"{value.quantize(TWO_PLACES):f}"
    return f"{value.normalize():f}"


def price_text(value: Decimal | int | str | None) -> str:
    """A price for people to read: the price format, an en dash for none."""
    text = price_plain(value)
    return "–" if text is None else text


def money_text(value: Decimal | int | str | None) -> str:
    """An amount for people to read: two decimals, thousands separated, an en dash for none."""
    if value is None or value == "":
        return "–"
    value = Decimal(value).quantize(TWO_PLACES)
    return f"{value:,.2f}"
