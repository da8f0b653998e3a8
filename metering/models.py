"""The double-entry ledger, usage events and settlements.

Ledger design (after django-hordak):
- Every movement of money is a LedgerTransaction of two or more LedgerEntry rows whose amounts
  sum to zero. On PostgreSQL a deferred constraint trigger checks the sum at commit and another
  trigger refuses UPDATE and DELETE of entries (migration 0002); on SQLite the service layer
  (metering.ledger) builds only balanced transactions and never updates entries.
- Each LedgerAccount keeps its running balance, changed only by the service that inserts the
  entries, in the same transaction. A CHECK constraint keeps participant balances >= 0, so an
  overdraft is refused by the database itself; system accounts (deposits, fees) may go negative.
- Each transaction has a unique idempotency key derived from its cause (`deposit:<uuid>`,
  `settle:<trade id>`, ...), so a retried task cannot post twice.

Money scale: 2 decimal places (cents) in the settlement currency. See metering.money for the
one rounding rule.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.db.models.functions import Round
from django.db.models.lookups import Exact
from django.utils import timezone

from marketplace.models import Account, Instrument, Trade


class LedgerAccount(models.Model):
    class Kind(models.TextChoices):
        AVAILABLE = "available"
        ESCROW = "escrow"
        OWED = "owed"
        DEPOSITS = "deposits"  # system: money that entered or left the exchange
        FEES = "fees"  # system: the platform's revenue

    SYSTEM_KINDS = (Kind.DEPOSITS, Kind.FEES)

    owner = models.ForeignKey(Account, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_accounts")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    currency = models.CharField(max_length=3)
    is_system = models.BooleanField(default=False)
    balance = models.DecimalField(max_digits=20, decimal_places=2, default=Decimal("0"))

    class Meta:
        ordering = ["owner_id", "kind"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "kind", "currency"], condition=Q(owner__isnull=False), name="uniq_participant_ledger"
            ),
            models.UniqueConstraint(
                fields=["kind", "currency"], condition=Q(owner__isnull=True), name="uniq_system_ledger"
            ),
            models.CheckConstraint(condition=Q(is_system=True) | Q(balance__gte=0), name="ledger_no_negative_balance"),
            models.CheckConstraint(
                condition=Q(is_system=True, owner__isnull=True) | Q(is_system=False, owner__isnull=False),
                name="ledger_system_has_no_owner",
            ),
        ]

    def __str__(self) -> str:
        who = self.owner.slug if self.owner_id else "system"
        return f"{who}:{self.kind}:{self.currency}"


class LedgerTransaction(models.Model):
    class Kind(models.TextChoices):
        DEPOSIT = "deposit"
        WITHDRAWAL = "withdrawal"
        ESCROW_RESERVE = "escrow_reserve"
        ESCROW_RELEASE = "escrow_release"
        MATCH = "match"
        SETTLEMENT = "settlement"
        REVERSAL = "reversal"

    key = models.CharField(max_length=160, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    memo = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.key


class LedgerEntry(models.Model):
    """Immutable: corrections are new, reversing transactions."""

    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(LedgerAccount, on_delete=models.PROTECT, related_name="entries")
    amount = models.DecimalField(max_digits=20, decimal_places=2)
    # The account's balance right after this entry: the running balance of a statement. Set by
    # ledger_post from the balance it updates under the account's row lock, so entries of one
    # account are in id order = balance order.
    balance_after = models.DecimalField(max_digits=20, decimal_places=2, null=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="ledger_entry_non_zero")]
        indexes = [models.Index(fields=["account", "id"])]

    def __str__(self) -> str:
        return f"{self.account}: {self.amount}"


class UsageEvent(models.Model):
    """One metered request reported by a provider; exactly once per (provider, event_id)."""

    provider = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="usage_reported")
    buyer = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="usage_consumed")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="usage_events")
    event_id = models.CharField(max_length=128)
    occurred_at = models.DateTimeField()
    input_tokens = models.PositiveBigIntegerField()
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField()
    billable_tokens = models.PositiveBigIntegerField()
    payload_hash = models.CharField(max_length=64)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="uniq_usage_event"),
            models.CheckConstraint(
                condition=Q(cached_input_tokens__lte=models.F("input_tokens")), name="usage_cached_le_input"
            ),
        ]
        indexes = [models.Index(fields=["instrument", "provider", "buyer"])]

    def __str__(self) -> str:
        return f"{self.provider_id}:{self.event_id}"


class Settlement(models.Model):
    """How one contract (trade) settled. One per trade, enforced by the primary key."""

    trade = models.OneToOneField(Trade, on_delete=models.PROTECT, primary_key=True, related_name="settlement")
    delivered_tokens = models.PositiveBigIntegerField()
    unused_tokens = models.PositiveBigIntegerField()
    value = models.DecimalField(max_digits=20, decimal_places=2)
    buyer_fee = models.DecimalField(max_digits=20, decimal_places=2)
    seller_fee = models.DecimalField(max_digits=20, decimal_places=2)
    provider_payout = models.DecimalField(max_digits=20, decimal_places=2)
    refund = models.DecimalField(max_digits=20, decimal_places=2)
    overage_tokens = models.PositiveBigIntegerField(default=0)
    transaction = models.OneToOneField(LedgerTransaction, on_delete=models.PROTECT, related_name="settlement")
    settled_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-settled_at"]
        constraints = [
            models.CheckConstraint(condition=Q(refund__gte=0), name="settlement_refund_non_negative"),
            # Compared in whole cents: SQLite evaluates decimal arithmetic in binary floating
            # point, where 0.07 - 0.01 != 0.06 (PostgreSQL's numeric is exact either way).
            models.CheckConstraint(
                condition=Exact(
                    Round(models.F("provider_payout") * 100), Round((models.F("value") - models.F("seller_fee")) * 100)
                ),
                name="settlement_payout_is_value_less_fee",
            ),
        ]

    def __str__(self) -> str:
        return f"settlement of trade {self.trade_id}"
