"""Reads of the marketplace: instruments, the book, orders and trades."""

from __future__ import annotations

from django.db.models import QuerySet

from .book_depth import BookDepth, BookLevel, book_depth_aggregate
from .models import Account, Instrument, Order, Trade

__all__ = ["BookDepth", "BookLevel", "instrument_book_get"]


def instrument_list() -> QuerySet[Instrument]:
    """Instruments with their tier and region; their market figures (top of book, last price,
    24-hour volume) are in marketplace.market_snapshot, not aggregated here."""
    return Instrument.objects.select_related("tier", "region")


def instrument_book_get(*, instrument: Instrument, depth: int = 50) -> BookDepth:
    """Resting orders aggregated by price level; asks also broken down by hardware."""
    return book_depth_aggregate(instrument=instrument, depth=depth)


def instrument_trades(*, instrument: Instrument) -> QuerySet[Trade]:
    return Trade.objects.filter(instrument=instrument).select_related("hardware")


def orders_for_account(*, account: Account) -> QuerySet[Order]:
    return Order.objects.filter(account=account).select_related("instrument__tier", "instrument__region", "hardware")


def trades_for_account(*, account: Account) -> QuerySet[Trade]:
    from django.db.models import Q

    return Trade.objects.filter(Q(buyer=account) | Q(seller=account)).select_related(
        "instrument__tier", "instrument__region", "hardware"
    )
