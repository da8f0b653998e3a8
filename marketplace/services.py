"""Writes of the marketplace: accounts, API keys, instruments, order placement and cancellation.

The web UI, the REST API, admin actions and management commands all call these functions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from metering import money
from metering.ledger import InsufficientFunds, ledger_accounts_ensure, ledger_post
from metering.models import LedgerTransaction

from .models import (
    LIVE_STATUSES,
    Account,
    ApiKey,
    Hardware,
    Instrument,
    InstrumentBook,
    Membership,
    Order,
    OrderStatus,
    Region,
    Side,
    Tier,
    TimeInForce,
    check_transition,
)
from .terms import order_terms_current


class ServiceError(Exception):
    """A refusal a person can act on; the API maps it to the one error shape."""

    status = 400

    def __init__(self, code: str, message: str, *, field: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class NotFound(ServiceError):
    status = 404


# --- accounts and keys ------------------------------------------------------------------


def account_create(
    *, name: str, is_buyer: bool = True, is_provider: bool = False, owner: AbstractBaseUser | None = None
) -> Account:
    name = name.strip()
    if not name:
        raise ServiceError("invalid_name", "An account needs a name.", field="name")
    slug = slugify(name)[:120]
    if not slug:
        raise ServiceError("invalid_name", "The account name needs letters or digits.", field="name")
    if not (is_buyer or is_provider):
        raise ServiceError("invalid_roles", "An account is a buyer, a provider, or both.", field="roles")
    with transaction.atomic():
        if Account.objects.filter(slug=slug).exists() or Account.objects.filter(name=name).exists():
            raise ServiceError("account_exists", f"An account named {name!r} already exists.", field="name", status=409)
        account = Account.objects.create(name=name, slug=slug, is_buyer=is_buyer, is_provider=is_provider)
        if owner is not None:
            Membership.objects.create(account=account, user=owner, role=Membership.Role.OWNER)
        ledger_accounts_ensure(account=account)
    return account


def account_signup(
    *, username: str, password: str, account_name: str, is_buyer: bool, is_provider: bool
) -> tuple[AbstractBaseUser, Account]:
    """Web sign-up: a new user and the account (organization) it owns, or neither.

    The caller has validated the password (Django's validators); a taken username or account
    name is refused with the field it belongs to.
    """
    from django.contrib.auth import get_user_model

    User = get_user_model()
    with transaction.atomic():
        if User.objects.filter(username__iexact=username).exists():
            raise ServiceError("username_taken", f"The username {username!r} is taken.", field="username", status=409)
        user = User.objects.create_user(username=username, password=password)
        account = account_create(name=account_name, is_buyer=is_buyer, is_provider=is_provider, owner=user)
    return user, account


def account_get(*, ref: str) -> Account:
    """Find an account by slug, name or numeric id (management commands take any)."""
    qs = Account.objects.all()
    found = qs.filter(slug=ref).first() or qs.filter(name=ref).first()
    if found is None and ref.isdigit():
        found = qs.filter(pk=int(ref)).first()
    if found is None:
        raise NotFound("unknown_account", f"No account {ref!r}.")
    return found


def _hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


VALID_SCOPES = tuple(ApiKey.Scope.values)


def api_key_create(
    *, account: Account, scopes: Iterable[str], name: str = "", created_by: AbstractBaseUser | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with the raw secret, which is never stored or shown again."""
    scopes = sorted(set(scopes))
    if not scopes:
        raise ServiceError("invalid_scopes", "Choose at least one scope: read, trade, meter.", field="scopes")
    bad = [s for s in scopes if s not in VALID_SCOPES]
    if bad:
        raise ServiceError("invalid_scopes", f"Unknown scope(s): {', '.join(bad)}. Use read, trade, meter.", field="scopes")
    if "meter" in scopes and not account.is_provider:
        raise ServiceError("invalid_scopes", "Only a provider account can have the meter scope.", field="scopes")
    prefix = secrets.token_hex(6)
    raw = f"cy_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        account=account, name=name[:120], prefix=prefix, key_hash=_hash_key(raw), scopes=scopes, created_by=created_by
    )
    return key, raw


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """The active key for a raw bearer string, or None."""
    parts = raw.split("_")
    if len(parts) < 3 or parts[0] != "cy":
        return None
    key = ApiKey.objects.select_related("account").filter(prefix=parts[1]).first()
    if key is None or key.revoked_at is not None:
        return None
    if not secrets.compare_digest(key.key_hash, _hash_key(raw)):
        return None
    now = timezone.now()
    # Touch at most once a minute: a write per request would be the API's hottest row.
    if key.last_used_at is None or now - key.last_used_at > dt.timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


# --- instruments ------------------------------------------------------------------------


def instrument_symbol_parse(symbol: str) -> tuple[str, str, dt.date]:
    try:
        tier, region, day = symbol.split(":")
        return tier, region, dt.date.fromisoformat(day)
    except ValueError:
        raise NotFound(
            "unknown_instrument", f"{symbol!r} is not an instrument symbol (tier:region:YYYY-MM-DD)."
        ) from None


def instrument_get(*, symbol: str) -> Instrument:
    tier, region, day = instrument_symbol_parse(symbol)
    inst = (
        Instrument.objects.select_related("tier", "region", "book")
        .filter(tier__code=tier, region__code=region, delivery_date=day)
        .first()
    )
    if inst is None:
        raise NotFound("unknown_instrument", f"No instrument {symbol}.")
    return inst


def instrument_create(*, tier: Tier, region: Region, day: dt.date, **fields) -> Instrument:
    start, end = Instrument.period_for(day)
    inst, _ = Instrument.objects.get_or_create(
        tier=tier, region=region, delivery_date=day, defaults={"delivery_start": start, "delivery_end": end, **fields}
    )
    InstrumentBook.objects.get_or_create(instrument=inst)
    return inst


@dataclass
class RollReport:
    created: int
    closed: int
    expired_orders: int


def instruments_roll(*, now: dt.datetime | None = None, days_ahead: int | None = None) -> RollReport:
    """Keep instruments open for today and the next N delivery days; close the past ones."""
    now = now or timezone.now()
    days_ahead = days_ahead if days_ahead is not None else settings.INSTRUMENT_DAYS_AHEAD
    today = now.astimezone(dt.UTC).date()
    before = Instrument.objects.count()
    for tier in Tier.objects.all():
        for region in Region.objects.all():
            for offset in range(days_ahead + 1):
                instrument_create(tier=tier, region=region, day=today + dt.timedelta(days=offset))
    created = Instrument.objects.count() - before
    closed = expired = 0
    for inst_id in Instrument.objects.filter(
        delivery_end__lte=now, status__in=[Instrument.Status.OPEN, Instrument.Status.HALTED]
    ).values_list("id", flat=True):
        expired += instrument_close(instrument_id=inst_id, now=now)
        closed += 1
    return RollReport(created=created, closed=closed, expired_orders=expired)


def instrument_close(*, instrument_id: int, now: dt.datetime | None = None) -> int:
    """Close an instrument whose delivery period has ended: expire its live orders."""
    now = now or timezone.now()
    with transaction.atomic():
        book_row = InstrumentBook.objects.select_for_update().get(pk=instrument_id)
        inst = Instrument.objects.select_for_update().get(pk=instrument_id)
        orders = list(Order.objects.filter(instrument_id=instrument_id, status__in=LIVE_STATUSES))
        for order in orders:
            _order_finish(order=order, status=OrderStatus.EXPIRED, reason="delivery_period_ended", now=now)
        _release_escrow(orders=orders, key_prefix="expire", instrument=inst)
        if inst.status in (Instrument.Status.OPEN, Instrument.Status.HALTED):
            inst.status = Instrument.Status.CLOSED
            inst.save(update_fields=["status"])
        book_row.best_bid = book_row.best_ask = None
        book_row.save(update_fields=["best_bid", "best_ask"])
    return len(orders)


def instrument_set_status(*, instrument: Instrument, status: str) -> Instrument:
    """Halt or resume trading. Resuming enqueues matching of what waited."""
    allowed = {Instrument.Status.OPEN: {Instrument.Status.HALTED}, Instrument.Status.HALTED: {Instrument.Status.OPEN}}
    with transaction.atomic():
        InstrumentBook.objects.select_for_update().get(pk=instrument.pk)
        inst = Instrument.objects.select_for_update().get(pk=instrument.pk)
        if status == inst.status:
            return inst
        if status not in allowed.get(inst.status, set()):
            raise ServiceError(
                "invalid_status_change", f"An instrument cannot go from {inst.status} to {status}.", status=409
            )
        inst.status = status
        inst.save(update_fields=["status"])
        if status == Instrument.Status.OPEN:
            _enqueue_match(inst.pk)
    return inst


# --- orders -----------------------------------------------------------------------------


def _enqueue_match(instrument_id: int) -> None:
    from pricing.tasks import enqueue_match

    transaction.on_commit(lambda: enqueue_match(instrument_id))


def _check_multiple(value: Decimal, step: Decimal) -> bool:
    return (value % step) == 0


def order_place(
    *,
    account: Account,
    instrument: Instrument,
    side: str,
    quantity: int,
    price: Decimal,
    time_in_force: str = TimeInForce.GTC,
    hardware: str | None = None,
    allowed_hardware: Sequence[str] = (),
    client_order_id: str | None = None,
    now: dt.datetime | None = None,
) -> Order:
    """Validate and record an order; matching happens after commit, in a Celery worker.

    Freezes the order's terms (fee rates, tier share and weights, allowed hardware ids:
    marketplace.terms). A buy reserves its maximum cost (quantity x limit plus the highest of its
    frozen fees, rounded up once: metering.money.reserve) from available into escrow in the same
    transaction, or is refused with insufficient_funds. Refused with 409 auction_gate_closed after
    its instrument's day-ahead gate until the clear (pricing.auction_gate).
    Takes the Instrument row lock (for the sequence number) before the ledger locks and holds
    it to commit, so commit order is sequence order per instrument: the matcher, reading
    committed pending orders, always sees a gap-free prefix of the sequence.
    """
    now = now or timezone.now()
    if side not in Side.values:
        raise ServiceError("invalid_side", "side must be buy or sell.", field="side")
    if time_in_force not in TimeInForce.values:
        raise ServiceError(
            "invalid_time_in_force", "time_in_force must be one of gtc, ioc, fok, post_only.", field="time_in_force"
        )
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
        raise ServiceError("invalid_quantity", "quantity must be a positive whole number of tokens.", field="quantity")
    if quantity % instrument.lot_size:
        raise ServiceError(
            "invalid_lot",
            f"quantity must be a multiple of the lot size ({instrument.lot_size:,} tokens).",
            field="quantity",
        )
    if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
        raise ServiceError("invalid_price", "price must be a positive number.", field="price")
    if not _check_multiple(price, instrument.tick_size):
        raise ServiceError(
            "invalid_tick", f"price must be a multiple of the tick size ({instrument.tick_size.normalize()}).", field="price"
        )
    if price >= Decimal("1000000"):
        raise ServiceError("invalid_price", "price is above the largest price the exchange accepts.", field="price")
    if instrument.status != Instrument.Status.OPEN:
        raise ServiceError(
            "instrument_not_open", f"{instrument.symbol} is {instrument.status}; it takes no orders.", status=409
        )
    if now >= instrument.delivery_end:
        raise ServiceError("instrument_not_open", f"{instrument.symbol}'s delivery period has ended.", status=409)
    from pricing.auction_gate import auction_gate_check

    auction_gate_check(instrument_id=instrument.pk, now=now, action="orders")
    if side == Side.BUY and not account.is_buyer:
        raise ServiceError("not_a_buyer", "This account is not a buyer; it cannot place buy orders.", status=403)
    if side == Side.SELL and not account.is_provider:
        raise ServiceError("not_a_provider", "Only provider accounts can list capacity (sell).", status=403)

    known_hw = dict(Hardware.objects.values_list("code", "id"))
    hardware_obj_id = None
    allowed: list[str] = []
    if side == Side.SELL:
        if allowed_hardware:
            raise ServiceError("invalid_hardware", "allowed_hardware is for buy orders; a sell names its hardware.", field="allowed_hardware")
        if not hardware:
            raise ServiceError("hardware_required", "A sell order names its hardware (e.g. h100).", field="hardware")
        if hardware not in known_hw:
            raise ServiceError("unknown_hardware", f"Unknown hardware {hardware!r}. Known: {', '.join(sorted(known_hw))}.", field="hardware")
        hardware_obj_id = known_hw[hardware]
    else:
        if hardware:
            raise ServiceError("invalid_hardware", "hardware is for sell orders; a buy lists allowed_hardware.", field="hardware")
        allowed = sorted(set(allowed_hardware))
        unknown = [h for h in allowed if h not in known_hw]
        if unknown:
            raise ServiceError("unknown_hardware", f"Unknown hardware {', '.join(unknown)}. Known: {', '.join(sorted(known_hw))}.", field="allowed_hardware")
    allowed_ids = sorted(known_hw[h] for h in allowed)

    if client_order_id is not None:
        client_order_id = client_order_id.strip() or None

    from pricing.floor import order_below_floor

    below_floor = False
    if side == Side.SELL:
        below_floor = order_below_floor(instrument=instrument, hardware_code=hardware, price=price)
        if below_floor and instrument.enforce_energy_floor:
            raise ServiceError(
                "below_energy_floor",
                f"{price} is below the energy-cost floor for {hardware} in {instrument.region.code}; "
                "this instrument refuses sells below the floor.",
                field="price",
                status=422,
            )

    terms = order_terms_current(instrument=instrument)
    reserve = per_lot = Decimal("0")
    if side == Side.BUY:
        reserve = money.reserve(quantity=quantity, price=price, max_fee_bps=terms.max_fee_bps)
        per_lot = money.reserve_per_lot(lot_size=instrument.lot_size, price=price, max_fee_bps=terms.max_fee_bps)

    try:
        with transaction.atomic():
            if client_order_id and Order.objects.filter(account=account, client_order_id=client_order_id).exists():
                raise ServiceError(
                    "duplicate_client_order_id", f"client_order_id {client_order_id!r} is already used by another order.",
                    field="client_order_id", status=409,
                )
            # The Instrument row lock (sequence) comes before the ledger locks, as everywhere.
            updated = Instrument.objects.filter(pk=instrument.pk, status=Instrument.Status.OPEN).update(
                last_sequence=F("last_sequence") + 1
            )
            if not updated:
                raise ServiceError("instrument_not_open", f"{instrument.symbol} is not open.", status=409)
            seq = Instrument.objects.values_list("last_sequence", flat=True).get(pk=instrument.pk)
            order = Order.objects.create(
                account=account,
                instrument=instrument,
                side=side,
                quantity=quantity,
                price=price,
                time_in_force=time_in_force,
                hardware_id=hardware_obj_id,
                allowed_hardware=allowed,
                allowed_hardware_ids=allowed_ids,
                client_order_id=client_order_id,
                sequence=seq,
                reserve_per_lot=per_lot,
                reserved=reserve,
                **terms.as_fields(),
                below_energy_floor=below_floor,
                created_at=now,
                updated_at=now,
            )
            if side == Side.BUY:
                ledger = ledger_accounts_ensure(account=account)
                total = reserve
                try:
                    ledger_post(
                        key=f"reserve:{order.pk}",
                        kind=LedgerTransaction.Kind.ESCROW_RESERVE,
                        legs=[(ledger["available"].pk, -total), (ledger["escrow"].pk, total)],
                        memo=f"escrow for buy order #{order.pk}: {quantity:,} tokens @ {price} on {instrument.symbol}",
                    )
                except InsufficientFunds:
                    raise ServiceError(
                        "insufficient_funds",
                        f"This order needs {total} {settings.EXCHANGE_CURRENCY} in escrow "
                        f"(quantity x limit + the highest fee); available is {ledger['available'].balance}.",
                        status=402,
                    ) from None
            _enqueue_match(instrument.pk)
    except IntegrityError as exc:
        if "client_order_id" in str(exc):
            raise ServiceError(
                "duplicate_client_order_id", f"client_order_id {client_order_id!r} is already used by another order.",
                field="client_order_id", status=409,
            ) from None
        raise
    return order


def _order_finish(*, order: Order, status: str, reason: str, now: dt.datetime) -> None:
    check_transition(order.status, status)
    order.status = status
    order.status_reason = reason
    order.pending_match = False
    order.updated_at = now
    order.save(update_fields=["status", "status_reason", "pending_match", "updated_at", "cancelled_after_sequence"])


def order_escrow_held(*, order: Order) -> Decimal:
    """What a live buy order holds in escrow now (money.order_escrow_open of its frozen terms)."""
    return money.order_escrow_open(
        reserved=order.reserved, quantity=order.quantity, filled=order.filled_quantity, price=order.price,
        max_fee_bps=max(order.maker_fee_bps, order.taker_fee_bps),
    )  # fmt: skip


def _release_escrow(*, orders: list[Order], key_prefix: str, instrument: Instrument) -> None:
    """Give back the escrow of finished buy orders' unfilled lots (one transaction each)."""
    from metering.ledger import ledger_account_ids
    from metering.models import LedgerAccount

    open_escrow = {o.pk: order_escrow_held(order=o) for o in orders if o.side == Side.BUY and o.remaining > 0}
    buys = [o for o in orders if open_escrow.get(o.pk, 0) > 0]
    if not buys:
        return
    accounts = {o.account_id for o in buys}
    escrow = ledger_account_ids(accounts, LedgerAccount.Kind.ESCROW)
    available = ledger_account_ids(accounts, LedgerAccount.Kind.AVAILABLE)
    for o in buys:
        amount = open_escrow[o.pk]
        ledger_post(
            key=f"{key_prefix}:{o.pk}",
            kind=LedgerTransaction.Kind.ESCROW_RELEASE,
            legs=[(escrow[o.account_id], -amount), (available[o.account_id], amount)],
            memo=f"{key_prefix}: release of order #{o.pk} ({o.remaining:,} tokens unfilled)",
        )


def order_cancel(*, account: Account, order_id: int, now: dt.datetime | None = None) -> Order:
    """Cancel a live order of `account` and release its escrow.

    Takes the instrument's matching lock, and first matches whatever was sequenced before the
    cancel arrived, so a cancel is an event in sequence like any order (replay stays exact).
    """
    from pricing.auction_gate import auction_gate_check
    from pricing.services import book_refresh_top, match_locked

    now = now or timezone.now()
    order = Order.objects.filter(pk=order_id, account=account).select_related("instrument").first()
    if order is None:
        raise NotFound("order_not_found", f"No order {order_id} in your account.")
    with transaction.atomic():
        book_row = InstrumentBook.objects.select_for_update().get(pk=order.instrument_id)
        if order.is_live:
            auction_gate_check(instrument_id=order.instrument_id, now=now, action="cancels")
        while match_locked(book_row=book_row)[0]:
            pass
        order.refresh_from_db()
        cancellable = order.is_live
        if cancellable:
            order.cancelled_after_sequence = book_row.last_matched_sequence
            _order_finish(order=order, status=OrderStatus.CANCELLED, reason="cancelled_by_user", now=now)
            _release_escrow(orders=[order], key_prefix="cancel", instrument=order.instrument)
            book_refresh_top(book_row=book_row)
    if not cancellable:
        # Refused after commit, so the matching done above stands and the status we report
        # is the one the order keeps.
        raise ServiceError(
            "order_not_cancellable", f"Order {order_id} is {order.status}; only open orders can be cancelled.", status=409
        )
    return order
