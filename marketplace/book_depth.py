"""The book as price levels, aggregated from the resting orders: what the market snapshot
publishes and the selectors read. Below the services, so the matcher may publish it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, Sum

from .models import LIVE_STATUSES, Instrument, Order


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


def book_depth_aggregate(*, instrument: Instrument, depth: int = 50) -> BookDepth:
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
