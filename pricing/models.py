"""Pricing data the exchange publishes: the day-ahead call auction of an instrument and the
Token Price Index. Market data (candles, VWAP, stats) is computed from trades, not stored."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketplace.models import Instrument, Tier


class CallAuction(models.Model):
    """The day-ahead call auction of one instrument, and once cleared its published result.

    While a row is `collecting`, the matcher leaves the instrument's new orders pending (they
    are not matched continuously); at gate closure pricing.services.auction_clear clears them
    at one uniform price and sets `cleared`, after which continuous trading runs as usual.
    """

    class Status(models.TextChoices):
        COLLECTING = "collecting"
        CLEARED = "cleared"

    instrument = models.OneToOneField(Instrument, on_delete=models.PROTECT, related_name="call_auction")
    gate_closure_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COLLECTING)
    opened_at = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)
    reference_price = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    clearing_price = models.DecimalField(
        max_digits=14, decimal_places=4, null=True, blank=True, help_text="Empty when nothing crossed"
    )
    volume = models.PositiveBigIntegerField(default=0, help_text="Tokens traded at the clearing price")
    demand = models.PositiveBigIntegerField(default=0, help_text="Buy tokens eligible at the clearing price")
    supply = models.PositiveBigIntegerField(default=0, help_text="Sell tokens eligible at the clearing price")
    imbalance = models.BigIntegerField(default=0, help_text="demand - supply: buyers (+) or sellers (-) left over")
    orders_count = models.PositiveIntegerField(default=0)
    trades_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-gate_closure_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="collecting") | Q(cleared_at__isnull=False), name="auction_cleared_has_time"
            ),
        ]
        indexes = [models.Index(fields=["status", "gate_closure_at"])]

    def __str__(self) -> str:
        return f"call auction of {self.instrument_id} ({self.status})"


class IndexValue(models.Model):
    """Token Price Index of one tier for one UTC trade date (methodology: docs/readme/pricing.md)."""

    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="index_values")
    day = models.DateField(help_text="UTC date on which the trades executed")
    value = models.DecimalField(max_digits=14, decimal_places=4, help_text="Per 1M tokens")
    volume = models.PositiveBigIntegerField(help_text="Tokens traded")
    trades = models.PositiveIntegerField()
    instruments = models.PositiveIntegerField(help_text="Order books that contributed")
    is_final = models.BooleanField(default=False, help_text="The day has ended; the value no longer changes")
    published_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tier", "-day"]
        constraints = [
            models.UniqueConstraint(fields=["tier", "day"], name="uniq_index_value"),
            models.CheckConstraint(condition=Q(value__gt=0) & Q(volume__gt=0), name="index_value_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.tier_id} {self.day}: {self.value}"
