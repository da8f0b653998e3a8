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

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Round
from django.utils import timezone

from marketplace.models import Account, Instrument, Trade


class LedgerAccount(models.Model):
    class Kind(models.TextChoices):
        AVAILABLE = "available"
        ESCROW = "escrow"
        OWED = "owed"
        # Funds of a withdrawal request awaiting staff: out of available, not yet paid out.
        WITHDRAWAL_HOLD = "withdrawal_hold"
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
        WITHDRAWAL_HOLD = "withdrawal_hold"
        WITHDRAWAL_RELEASE = "withdrawal_release"
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
            # Rounded to the cent: SQLite computes value - seller_fee in binary floating point
            # (167.94 - 0.08 = 167.85999999999999), which would refuse an exact split; on
            # PostgreSQL (numeric) the rounding changes nothing.
            models.CheckConstraint(
                condition=Q(provider_payout=Round(models.F("value") - models.F("seller_fee"), 2)),
                name="settlement_payout_is_value_less_fee",
            ),
        ]

    def __str__(self) -> str:
        return f"settlement of trade {self.trade_id}"


class FundingRequest(models.Model):
    """A participant's request to deposit or withdraw, decided by staff.

    Two-phase, like a pending transfer: a withdrawal request moves its amount from available
    to the account's withdrawal hold at once (`hold_transaction`), so it cannot be traded away
    while staff look at it; approval pays the hold out, rejection or cancellation returns it
    (`decision_transaction`). A deposit request moves no money until it is approved. Sandbox
    credits (embedded demo only) are deposit requests approved at once and flagged as test funds.
    """

    class Kind(models.TextChoices):
        DEPOSIT = "deposit"
        WITHDRAWAL = "withdrawal"

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        CANCELLED = "cancelled"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="funding_requests")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = models.DecimalField(max_digits=20, decimal_places=2)
    currency = models.CharField(max_length=3)
    reference = models.CharField(max_length=140, blank=True, help_text="payment reference or destination")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    sandbox = models.BooleanField(default=False, help_text="test funds credited in the sandbox, not real money")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=255, blank=True)
    hold_transaction = models.OneToOneField(
        LedgerTransaction, null=True, blank=True, on_delete=models.PROTECT, related_name="funding_hold"
    )
    decision_transaction = models.OneToOneField(
        LedgerTransaction, null=True, blank=True, on_delete=models.PROTECT, related_name="funding_decision"
    )

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="funding_amount_positive"),
            # A withdrawal always holds its funds; a deposit never does.
            models.CheckConstraint(
                condition=Q(kind="withdrawal", hold_transaction__isnull=False)
                | Q(kind="deposit", hold_transaction__isnull=True),
                name="funding_withdrawal_holds",
            ),
            models.CheckConstraint(
                condition=Q(status="pending", decided_at__isnull=True) | (~Q(status="pending") & Q(decided_at__isnull=False)),
                name="funding_decided_when_not_pending",
            ),
        ]
        indexes = [models.Index(fields=["status", "requested_at"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} {self.amount} {self.currency} ({self.status})"
