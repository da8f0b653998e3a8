"""Reads of the marketplace: instruments, the book, orders and trades."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum

from .models import LIVE_STATUSES, Account, Instrument, Order, Trade


def instrument_list() -> QuerySet[Instrument]:
    """Instruments with their tier and region; their market figures (top of book, last price,
    24-hour volume) are in marketplace.market_snapshot, not aggregated here."""
    return Instrument.objects.select_related("tier", "region")


@dataclass
class BookLevel:
    price: Decimal
    quantity: int
    orders: int
    by_hardware: dict[str, int] = field(default_factory=dict)


@dataclass
class BookDepth:
    bids: list[BookLevel]
    asks: list[BookLevel]


def instrument_book_get(*, instrument: Instrument, depth: int = 50) -> BookDepth:
    """Resting orders aggregated by price level; asks also broken down by hardware."""
    rows = (
        Order.objects.filter(instrument=instrument, pending_match=False, status__in=LIVE_STATUSES)
        .values("side", "price", "hardware__code")
        .annotate(qty=Sum("quantity") - Sum("filled_quantity"), n=Count("id"))
    )
    bids: dict[Decimal, BookLevel] = {}
    asks: dict[Decimal, BookLevel] = {}
    for r in rows:
        levels = bids if r["side"] == "buy" else asks
        level = levels.setdefault(r["price"], BookLevel(r["price"], 0, 0))
        level.quantity += r["qty"]
        level.orders += r["n"]
        if r["hardware__code"]:
            level.by_hardware[r["hardware__code"]] = level.by_hardware.get(r["hardware__code"], 0) + r["qty"]
    return BookDepth(
        bids=sorted(bids.values(), key=lambda lv: -lv.price)[:depth],
        asks=sorted(asks.values(), key=lambda lv: lv.price)[:depth],
    )


def instrument_trades(*, instrument: Instrument) -> QuerySet[Trade]:
    return Trade.objects.filter(instrument=instrument).select_related("hardware")


def orders_for_account(*, account: Account) -> QuerySet[Order]:
    return Order.objects.filter(account=account).select_related("instrument__tier", "instrument__region", "hardware")


def trades_for_account(*, account: Account) -> QuerySet[Trade]:
    from django.db.models import Q

    return Trade.objects.filter(Q(buyer=account) | Q(seller=account)).select_related(
        "instrument__tier", "instrument__region", "hardware"
    )
