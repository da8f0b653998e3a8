"""Published pricing data in admin: call auctions and the Token Price Index, read-only
(they are written by the auction and index services, never by hand)."""

from __future__ import annotations

from django.contrib import admin

from marketplace.admin import ReadOnlyAdmin

from .models import CallAuction, IndexValue


@admin.register(CallAuction)
class CallAuctionAdmin(ReadOnlyAdmin):
    list_display = (
        "instrument",
        "status",
        "gate_closure_at",
        "clearing_price",
        "volume",
        "demand",
        "supply",
        "imbalance",
        "orders_count",
        "trades_count",
        "cleared_at",
    )
    list_filter = ("status", "instrument__tier", "instrument__region")
    list_select_related = ("instrument__tier", "instrument__region")
    search_fields = ("instrument__tier__code", "instrument__region__code")
    date_hierarchy = "gate_closure_at"


@admin.register(IndexValue)
class IndexValueAdmin(ReadOnlyAdmin):
    list_display = ("tier", "day", "value", "volume", "trades", "instruments", "is_final", "published_at")
    list_filter = ("tier", "is_final")
    list_select_related = ("tier",)
    search_fields = ("tier__code",)
    date_hierarchy = "day"
