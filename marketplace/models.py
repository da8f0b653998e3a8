"""Catalog, participants and the order flow of the exchange.

Units: quantities are integer tokens (a multiple of the instrument's lot); prices are decimal
currency per 1,000,000 tokens (a multiple of the instrument's tick). Money lives in the
metering ledger, never here.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per 1M tokens


class Tier(models.Model):
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64)
    latency_slo_ms = models.PositiveIntegerField(help_text="p95 time to first token, ms")
    output_token_weight = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("1"))
    cached_input_weight = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("1"))
    unused_capacity_share = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0"),
        help_text="Share of unused capacity the buyer still pays: 0 = pay per use, 1 = take-or-pay",
    )
    # Price protection (README "Price protection"): an order priced more than this fraction away
    # from its book's last trade is refused unless confirmed; 0 turns the band off for the tier.
    price_band = models.DecimalField(
        max_digits=6,
        decimal_places=4,
        default=Decimal("0.25"),
        help_text="Price protection: orders beyond last trade ± this fraction (0.25 = 25%) need confirming; 0 = off",
    )
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(price_band__gte=0) & Q(price_band__lte=10), name="tier_price_band_between_0_and_10"
            ),
            models.CheckConstraint(
                condition=Q(unused_capacity_share__gte=0) & Q(unused_capacity_share__lte=1),
                name="tier_share_between_0_and_1",
            ),
            models.CheckConstraint(
                condition=Q(output_token_weight__gte=0) & Q(cached_input_weight__gte=0),
                name="tier_weights_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.code


class Hardware(models.Model):
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64)
    watts_per_accelerator = models.PositiveIntegerField()

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "hardware"

    def __str__(self) -> str:
        return self.code


class HardwareThroughput(models.Model):
    """Reference output tokens/s of one accelerator serving a tier (for the energy floor)."""

    hardware = models.ForeignKey(Hardware, on_delete=models.CASCADE, related_name="throughputs")
    tier = models.ForeignKey(Tier, on_delete=models.CASCADE, related_name="throughputs")
    tokens_per_second = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hardware", "tier"], name="uniq_throughput")]

    def __str__(self) -> str:
        return f"{self.hardware}/{self.tier}: {self.tokens_per_second} tok/s"


class Region(models.Model):
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64)
    electricity_price_per_kwh = models.DecimalField(max_digits=10, decimal_places=4)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Instrument(models.Model):
    """One order book: tier x region x delivery period (a UTC day)."""

    class Status(models.TextChoices):
        OPEN = "open"
        HALTED = "halted"
        CLOSED = "closed"
        SETTLED = "settled"

    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="instruments")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="instruments")
    delivery_date = models.DateField()
    delivery_start = models.DateTimeField()
    delivery_end = models.DateTimeField()
    lot_size = models.PositiveBigIntegerField(default=1_000_000)
    tick_size = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0.01"))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    enforce_energy_floor = models.BooleanField(default=False)

    class Meta:
        ordering = ["delivery_date", "tier__sort_order", "region__code"]
        constraints = [
            models.UniqueConstraint(fields=["tier", "region", "delivery_date"], name="uniq_instrument"),
            models.CheckConstraint(condition=Q(lot_size__gt=0), name="instrument_lot_positive"),
            models.CheckConstraint(condition=Q(tick_size__gt=0), name="instrument_tick_positive"),
            models.CheckConstraint(
                condition=Q(delivery_end__gt=F("delivery_start")), name="instrument_period_ordered"
            ),
        ]
        indexes = [models.Index(fields=["status", "delivery_date"])]

    def __str__(self) -> str:
        return self.symbol

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("web:instrument", kwargs={"symbol": self.symbol})

    @property
    def symbol(self) -> str:
        return f"{self.tier.code}:{self.region.code}:{self.delivery_date.isoformat()}"

    @staticmethod
    def period_for(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        return start, start + dt.timedelta(days=1)

    def is_spot(self, now: dt.datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.delivery_start <= now < self.delivery_end


class InstrumentBook(models.Model):
    """The matching lock and the sequencer of one instrument.

    The matcher, cancels applied outside it, halts, closes and auction clears lock this row with
    SELECT ... FOR UPDATE. Placement takes no instrument-wide lock at all: it only writes the
    order (and a buy's escrow), and the matcher, holding this lock, gives each order and each
    cancel the next match sequence number when it applies it.
    """

    instrument = models.OneToOneField(Instrument, on_delete=models.CASCADE, primary_key=True, related_name="book")
    # The last match sequence number handed out (to an order or to a cancel), under this lock.
    last_matched_sequence = models.PositiveBigIntegerField(default=0)
    # Bumped by every change to the book made outside the matcher (a cancel applied by a
    # request or an operator, expiry, halt, resume, close, auction clear): a worker's resident
    # book is valid only while this and last_matched_sequence are what it last wrote.
    version = models.PositiveBigIntegerField(default=0)
    last_trade_sequence = models.PositiveBigIntegerField(default=0)
    batches = models.PositiveBigIntegerField(default=0)
    # Top of book and last trade, kept by whoever holds this lock (market data reads them).
    last_price = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    last_trade_at = models.DateTimeField(null=True, blank=True)
    best_bid = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    best_ask = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)

    def __str__(self) -> str:
        return f"book of {self.instrument_id}"


class Account(models.Model):
    """An organization trading on the exchange: a buyer, a provider, or both."""

    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=120, unique=True)
    is_buyer = models.BooleanField(default=True)
    is_provider = models.BooleanField(default=False)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="accounts")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "user"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.account}"


class ApiKey(models.Model):
    """A bearer key: `cy_<prefix>_<secret>`. Only the SHA-256 of the whole key is stored.

    The secret is 32 random bytes, so a fast hash is enough (no dictionary to attack); the
    prefix finds the row without scanning and is safe to show.
    """

    class Scope(models.TextChoices):
        READ = "read"
        TRADE = "trade"
        METER = "meter"
        FUNDING = "funding"  # request deposits and withdrawals

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=120, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.account.slug}:{self.prefix}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return self.is_active and scope in self.scopes


class Side(models.TextChoices):
    BUY = "buy"
    SELL = "sell"


class TimeInForce(models.TextChoices):
    GTC = "gtc", "good till cancelled (until the delivery period ends)"
    IOC = "ioc", "immediate or cancel"
    FOK = "fok", "fill or kill"
    POST_ONLY = "post_only", "post only (maker only)"


class OrderStatus(models.TextChoices):
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


# The only status moves the exchange makes; anything else is a bug and raises.
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    OrderStatus.OPEN: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.EXPIRED,
            OrderStatus.REJECTED,
        }
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED}
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
}
LIVE_STATUSES = (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)


class InvalidTransition(Exception):
    pass


def check_transition(current: str, new: str) -> None:
    if new == current and current != OrderStatus.PARTIALLY_FILLED:
        return
    if new not in ORDER_TRANSITIONS[current]:
        raise InvalidTransition(f"order status cannot move from {current} to {new}")


class Order(models.Model):
    """An order is never deleted; its status only moves along ORDER_TRANSITIONS."""

    # No single-column indexes on the foreign keys: (account, -id) and the unique (instrument,
    # sequence) lead with them, and every index is rewritten by each matcher update of an order
    # (status, sequence and pending_match change, so no update is HOT). Hardware is looked up
    # by order only when a hardware type is deleted (PROTECT), which may scan.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="orders", db_index=False)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="orders", db_index=False)
    side = models.CharField(max_length=4, choices=Side.choices)
    quantity = models.PositiveBigIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=4)
    time_in_force = models.CharField(max_length=16, choices=TimeInForce.choices, default=TimeInForce.GTC)
    hardware = models.ForeignKey(
        Hardware, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # Buy orders: hardware codes the buyer accepts, sorted, as entered; empty means any.
    allowed_hardware = models.JSONField(default=list, blank=True)
    # The same set by Hardware id, frozen at placement: what matching uses, so renaming a
    # hardware code never changes which sells a resting buy accepts.
    allowed_hardware_ids = models.JSONField(default=list, blank=True)
    client_order_id = models.CharField(max_length=64, null=True, blank=True)
    status = models.CharField(max_length=20, choices=OrderStatus.choices, default=OrderStatus.OPEN)
    filled_quantity = models.PositiveBigIntegerField(default=0)
    # Match sequence, assigned by the matcher when it applies the order (null until then):
    # price-time priority, replay and determinism are defined on it.
    sequence = models.PositiveBigIntegerField(null=True, blank=True)
    # True until the matcher has processed the order once (then it rests or is done).
    pending_match = models.BooleanField(default=True)
    # A cancel command: recorded by order_cancel, applied in sequence by the matcher.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Terms frozen at placement (PRODUCT.md §3; README "Frozen terms"): edits of the fee
    # settings or of the tier apply to orders placed after them. A buy holds in escrow
    # metering.money.order_escrow_open(quantity, filled, price, max(maker, taker)).
    maker_fee_bps = models.PositiveIntegerField(default=0)
    taker_fee_bps = models.PositiveIntegerField(default=0)
    unused_capacity_share = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal("0"))
    output_token_weight = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("1"))
    cached_input_weight = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("1"))
    below_energy_floor = models.BooleanField(default=False)
    status_reason = models.CharField(max_length=64, blank=True)
    # For replay: the match sequence number of the cancel command that cancelled this order;
    # equal to `sequence` when the cancel was applied before the order reached the engine.
    cancel_sequence = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(filled_quantity__lte=F("quantity")), name="order_filled_le_quantity"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_quantity_positive"),
            models.CheckConstraint(condition=Q(price__gt=0), name="order_price_positive"),
            models.CheckConstraint(
                condition=(Q(side="sell", hardware__isnull=False) | Q(side="buy", hardware__isnull=True)),
                name="order_hardware_only_on_sells",
            ),
            models.UniqueConstraint(fields=["instrument", "sequence"], name="uniq_order_sequence"),
            models.UniqueConstraint(
                fields=["account", "client_order_id"],
                condition=Q(client_order_id__isnull=False),
                name="uniq_client_order_id",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "-id"]),
            models.Index(
                fields=["instrument", "id"],
                condition=Q(pending_match=True),
                name="order_pending_idx",
            ),
            models.Index(
                fields=["instrument", "cancel_requested_at"],
                condition=Q(cancel_requested_at__isnull=False, status__in=["open", "partially_filled"]),
                name="order_cancel_command_idx",
            ),
            models.Index(
                fields=["instrument", "side", "price"],
                condition=Q(pending_match=False, status__in=["open", "partially_filled"]),
                name="order_resting_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.side} {self.quantity} @ {self.price}"

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled_quantity

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def max_fee_bps(self) -> int:
        """The highest fee this order can pay: what its reservation covers."""
        return max(self.maker_fee_bps, self.taker_fee_bps)


class Trade(models.Model):
    """A fill, and the delivery contract between buyer and provider it creates."""

    # As on Order: instrument, buyer and seller are the leading columns of the indexes below,
    # so they get no single-column index of their own (each costs every trade insert).
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="trades", db_index=False)
    buy_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="buy_trades")
    sell_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="sell_trades")
    buyer = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="buy_trades", db_index=False)
    seller = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="sell_trades", db_index=False)
    hardware = models.ForeignKey(Hardware, on_delete=models.PROTECT, related_name="+", db_index=False)
    quantity = models.PositiveBigIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=4)
    aggressor_side = models.CharField(max_length=4, choices=Side.choices)
    # Per-instrument trade number in execution order (the replay compares these).
    match_sequence = models.PositiveBigIntegerField()
    # Fees agreed at execution (basis points of value), by who provided liquidity.
    buyer_fee_bps = models.PositiveIntegerField(default=0)
    seller_fee_bps = models.PositiveIntegerField(default=0)
    # Money the buyer's escrow holds for this contract until settlement.
    buyer_escrow = models.DecimalField(max_digits=20, decimal_places=2, default=Decimal("0"))
    # The tier's terms, frozen from the resting (maker) order: settlement and usage use these.
    unused_capacity_share = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal("0"))
    output_token_weight = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("1"))
    cached_input_weight = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("1"))
    executed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="trade_quantity_positive"),
            models.CheckConstraint(condition=~Q(buyer=F("seller")), name="trade_no_self_trade"),
            models.UniqueConstraint(fields=["instrument", "match_sequence"], name="uniq_trade_sequence"),
        ]
        indexes = [
            models.Index(fields=["instrument", "-executed_at"]),
            models.Index(fields=["buyer", "-id"]),
            models.Index(fields=["seller", "-id"]),
        ]

    def __str__(self) -> str:
        return f"trade #{self.pk} {self.quantity} @ {self.price}"

    @property
    def notional(self) -> Decimal:
        return self.price * self.quantity / TOKENS_PER_PRICE_UNIT


class IdempotencyRecord(models.Model):
    """The first response to a request made with an Idempotency-Key, replayed on repeats."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=128)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "key"], name="uniq_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.account_id}:{self.key}"


class CacheGeneration(models.Model):
    """A counter per cached domain ("api_keys", "catalog"), bumped in the transaction of every
    change the per-process caches must not outlive (marketplace.cache_generation)."""

    name = models.CharField(max_length=32, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"
