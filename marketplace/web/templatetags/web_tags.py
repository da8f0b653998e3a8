"""Display filters of the web UI: tokens in Mtok, prices and money as exact decimals."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma

from marketplace.models import TOKENS_PER_PRICE_UNIT

register = template.Library()


@register.filter
def mtok(tokens: int | None) -> str:
    """Tokens as millions ("12.5"), exact: 1,500,000 -> 1.5."""
    if tokens in (None, ""):
        return "–"
    value = (Decimal(int(tokens)) / TOKENS_PER_PRICE_UNIT).normalize()
    text = f"{value:f}"
    whole, _, frac = text.partition(".")
    return intcomma(int(whole)) + (f".{frac}" if frac else "") if not whole.startswith("-") else text


@register.filter
def price(value: Decimal | None) -> str:
    """A price with at least two decimals, no trailing noise: 2.5000 -> 2.50, 0.1234 -> 0.1234."""
    if value is None or value == "":
        return "–"
    value = Decimal(value)
    q = value.normalize()
    if -q.as_tuple().exponent < 2:
        q = value.quantize(Decimal("0.01"))
    return f"{q:f}"


@register.filter
def money(value: Decimal | None) -> str:
    if value is None or value == "":
        return "–"
    value = Decimal(value).quantize(Decimal("0.01"))
    sign = "-" if value < 0 else ""
    whole, _, frac = f"{abs(value):f}".partition(".")
    return f"{sign}{intcomma(int(whole))}.{frac}"


@register.filter
def signed(value: Decimal | None) -> str:
    if value is None:
        return "–"
    return f"+{price(value)}" if value > 0 else price(value)


@register.filter
def widget(field) -> str:
    """Render a bound field's input with aria-describedby naming its help text and errors."""
    ids = []
    if field.help_text:
        ids.append(f"{field.auto_id}_helptext")
    if field.errors:
        ids.append(f"{field.auto_id}_errors")
    attrs = {"aria-describedby": " ".join(ids)} if ids else None
    return field.as_widget(attrs=attrs)
