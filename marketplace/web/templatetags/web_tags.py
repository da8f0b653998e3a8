"""Display filters of the web UI: tokens in Mtok, prices and money as exact decimals, in the
formats of marketplace/display.py (the API and statement memos use the same)."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma

from marketplace import display
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
    """A price in the exchange's one format (marketplace/display.py): 2 -> 2.00, 1.9000 -> 1.90."""
    return display.price_text(value)


@register.filter
def money(value: Decimal | None) -> str:
    """Money: two decimals, thousands separated (marketplace/display.py)."""
    return display.money_text(value)


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
