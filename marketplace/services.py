"""Writes of the marketplace: accounts, API keys, instruments, order placement and cancellation.

The web UI, the REST API, admin actions and management commands all call these functions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from metering import money
from metering.ledger import (
    InsufficientFunds,
    Posting,
    ledger_accounts_ensure,
    ledger_post_in_transaction,
    ledger_post_many,
    ledger_post_with_new_row,
    participant_ledger_ids,
)
from metering.models import LedgerAccount, LedgerTransaction
from pricing.dispatch import enqueue_match_on_commit

from . import order_terms
from .cache_generation import API_KEYS, CATALOG, generation_bump
from .catalog_cache import catalog_hardware_ids, catalog_instrument, instrument_auction_gate, instruments_with_gate
from .db_errors import constraint_name
from .display import price_text
from .errors import NotFound, ServiceError
from .market_snapshot import reference_price_get, snapshot_publish_on_commit
from .models import (
    LIVE_STATUSES,
    TOKENS_PER_PRICE_UNIT,
    Account,
    ApiKey,
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

# --- accounts and keys ------------------------------------------------------------------


def _account_exists(name: str) -> ServiceError:
    return ServiceError("account_exists", f"An account named {name!r} already exists.", field="name", status=409)


def _account_name_invalid(name: str) -> ServiceError | None:
    """Why `name` (stripped) cannot name an account at all, or None."""
    if not name:
        return ServiceError("invalid_name", "An account needs a name.", field="name")
    if "\x00" in name or not any(c.isalnum() for c in name):
        return ServiceError("invalid_name", "The account name needs letters or digits.", field="name")
    return None


def _account_name_taken(name: str, slug: str) -> bool:
    return Account.objects.filter(slug=slug).exists() or Account.objects.filter(name=name).exists()


def account_signup_refusals(*, username: str, account_name: str) -> list[ServiceError]:
    """Every reason account_signup would refuse these names, all at once, so a form can show
    each beside its field (account_signup itself still checks, under its transaction)."""
    from django.contrib.auth import get_user_model

    found = []
    if username and get_user_model().objects.filter(username__iexact=username).exists():
        found.append(_username_taken(username))
    name = (account_name or "").strip()
    invalid = _account_name_invalid(name)
    if invalid is not None:
        found.append(invalid)
    elif _account_name_taken(name, slugify(name)[:120]):
        found.append(_account_exists(name))
    return found


def _username_taken(username: str) -> ServiceError:
    return ServiceError("username_taken", f"The username {username!r} is taken.", field="username", status=409)


def account_create(
    *, name: str, is_buyer: bool = True, is_provider: bool = False, owner: AbstractBaseUser | None = None
) -> Account:
    name = name.strip()
    invalid = _account_name_invalid(name)
    if invalid is not None:
        raise invalid
    # The slug names the account in URLs and usage events, so it stays ASCII; a name with no
    # ASCII letters (次元科技) gets a generated one, unique by its random part.
    slug = slugify(name)[:120] or f"org-{secrets.token_hex(5)}"
    if not (is_buyer or is_provider):
        raise ServiceError("invalid_roles", "An account is a buyer, a provider, or both.", field="roles")
    exists = _account_exists(name)
    try:
        with transaction.atomic():
            if _account_name_taken(name, slug):
                raise exists
            account = Account.objects.create(name=name, slug=slug, is_buyer=is_buyer, is_provider=is_provider)
            if owner is not None:
                Membership.objects.create(account=account, user=owner, role=Membership.Role.OWNER)
            ledger_accounts_ensure(account=account)
    except IntegrityError:
        # A concurrent sign-up with the same name (or slug) committed first: the unique index
        # decided, and this one was rolled back.
        raise exists from None
    return account


def account_signup(
    *, username: str, password: str, account_name: str, is_buyer: bool, is_provider: bool, email: str = ""
) -> tuple[AbstractBaseUser, Account]:
    """Web sign-up: a new user and the account (organization) it owns, or neither.

    The caller has validated the password (Django's validators); a taken username or account
    name is refused with the field it belongs to.
    """
    from django.contrib.auth import get_user_model

    User = get_user_model()
    taken = _username_taken(username)
    try:
        with transaction.atomic():
            if User.objects.filter(username__iexact=username).exists():
                raise taken
            user = User.objects.create_user(username=username, email=email, password=password)
            account = account_create(name=account_name, is_buyer=is_buyer, is_provider=is_provider, owner=user)
    except IntegrityError:
        # A concurrent sign-up took the username first (the unique index decided).
        raise taken from None
    return user, account


def user_email_set(*, user: AbstractBaseUser, email: str) -> AbstractBaseUser:
    """The address password-reset links go to ("" for none); validated by the caller's form."""
    user.email = email.strip()
    user.save(update_fields=["email"])
    return user


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
        raise ServiceError("invalid_scopes", "Choose at least one scope: read, trade, meter, funding.", field="scopes")
    bad = [s for s in scopes if s not in VALID_SCOPES]
    if bad:
        raise ServiceError(
            "invalid_scopes", f"Unknown scope(s): {', '.join(bad)}. Use read, trade, meter, funding.", field="scopes"
        )
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
        with transaction.atomic():
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            generation_bump(name=API_KEYS)  # every process's key cache refuses it within a second
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
    inst = catalog_instrument(tier=tier, region=region, day=day)  # no query while the catalog is unchanged
    if inst is not None:
        return inst
    inst = (
        instruments_with_gate(Instrument.objects.select_related("tier", "region", "book"))
        .filter(tier__code=tier, region__code=region, delivery_date=day)
        .first()
    )
    if inst is None:
        raise NotFound("unknown_instrument", f"No instrument {symbol}.")
    return inst


def instrument_create(*, tier: Tier, region: Region, day: dt.date, **fields) -> Instrument:
    start, end = Instrument.period_for(day)
    inst, created = Instrument.objects.get_or_create(
        tier=tier, region=region, delivery_date=day, defaults={"delivery_start": start, "delivery_end": end, **fields}
    )
    InstrumentBook.objects.get_or_create(instrument=inst)
    if created:
        generation_bump(name=CATALOG)
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
            generation_bump(name=CATALOG)
        book_row.best_bid = book_row.best_ask = None
        book_row.version += 1  # changed outside the matcher: resident books reload
        book_row.save(update_fields=["best_bid", "best_ask", "version"])
        snapshot_publish_on_commit(instrument_id=instrument_id)
    return len(orders)


def instrument_set_status(*, instrument: Instrument, status: str) -> Instrument:
    """Halt or resume trading. Resuming enqueues matching of what waited."""
    allowed = {Instrument.Status.OPEN: {Instrument.Status.HALTED}, Instrument.Status.HALTED: {Instrument.Status.OPEN}}
    with transaction.atomic():
        book_row = InstrumentBook.objects.select_for_update().get(pk=instrument.pk)
        inst = Instrument.objects.select_for_update().get(pk=instrument.pk)
        if status == inst.status:
            return inst
        if status not in allowed.get(inst.status, set()):
            raise ServiceError(
                "invalid_status_change", f"An instrument cannot go from {inst.status} to {status}.", status=409
            )
        inst.status = status
        inst.save(update_fields=["status"])
        # Changed outside the matcher: resident books reload.
        InstrumentBook.objects.filter(pk=book_row.pk).update(version=F("version") + 1)
        generation_bump(name=CATALOG)
        if status == Instrument.Status.OPEN:
            enqueue_match_on_commit(inst.pk)
    return inst


# --- orders -----------------------------------------------------------------------------

AUCTION_GATE_CLOSED = "auction_gate_closed"


def auction_gate_check(*, instrument: Instrument, now: dt.datetime, action: str) -> None:
    """Refuse `action` ("orders" or "cancels") with 409 auction_gate_closed from the gate closure
    of the instrument's day-ahead auction until the clear has run (PRODUCT.md §3), so the book
    the clear prices is the one that stood at the gate, while the indicative price was public.
    Every door (API, web form, admin, management commands) comes through order_place and
    order_cancel_request, which call this."""
    gate = instrument_auction_gate(instrument)
    if gate is not None and now >= gate:
        raise ServiceError(
            AUCTION_GATE_CLOSED,
            f"{instrument.symbol}: the day-ahead auction's gate closed at {gate.isoformat()}; {action} are "
            "refused until the auction has cleared, then continuous trading opens.",
            status=409,
        )


def _order_insert_sql(*, order: Order) -> tuple[str, list]:
    """PostgreSQL: INSERT the order while its instrument is open, taking the order's foreign-key
    lock on the instrument in the same statement (FOR KEY SHARE), before any ledger row.

    PostgreSQL checks the order -> instrument foreign key (deferred) at COMMIT with FOR KEY
    SHARE on the instrument row, i.e. after the escrow posting locked the buyer's ledger rows:
    the reverse of the global lock order (instrument first, ledger last), so a placement and an
    instrument close releasing that buyer's escrow could deadlock. KEY SHARE locks do not
    conflict with each other, so placements on one instrument still never wait for each other;
    they wait only for a close or halt holding the row FOR UPDATE, and an instrument halted or
    closed meanwhile inserts nothing (instrument_not_open). Every concrete column of Order is
    written, so a field added to the model is written here without touching this SQL.
    """
    fields = [f for f in Order._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = [f.get_db_prep_save(f.pre_save(order, True), connection) for f in fields]
    sql = (
        f"INSERT INTO {Order._meta.db_table} ({columns}) SELECT {', '.join(['%s'] * len(fields))} "
        f"FROM {Instrument._meta.db_table} WHERE id = %s AND status = %s FOR KEY SHARE RETURNING id"
    )
    return sql, [*values, order.instrument_id, Instrument.Status.OPEN]


def _order_insert_sqlite(*, order: Order) -> None:
    # SQLite serializes writers: nothing to lock, and this check cannot race. (PostgreSQL
    # leaves it to the unique index, whose violation names uniq_client_order_id.)
    if order.client_order_id and Order.objects.filter(
        account_id=order.account_id, client_order_id=order.client_order_id
    ).exists():
        raise ServiceError(
            "duplicate_client_order_id", f"client_order_id {order.client_order_id!r} is already used by another order.",
            field="client_order_id", status=409,
        )
    order.save(force_insert=True)


def _price_band_enforce(*, instrument: Instrument, price: Decimal) -> None:
    """Price protection: refuse `price` outside the tier's band around the last trade.

    The reference comes from the market snapshot's cache entry (no query on the order path);
    the band from the instrument's tier, which the catalog cache loaded with the instrument.
    """
    band = instrument.tier.price_band
    if band <= 0:
        return
    try:
        order_terms.price_band_check(
            price=price,
            reference=reference_price_get(instrument_id=instrument.pk),
            band=band,
            tick_size=instrument.tick_size,
            symbol=instrument.symbol,
        )
    except order_terms.OrderTermsError as exc:
        raise ServiceError(exc.code, exc.message, field=exc.field, status=422) from None


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
    savepoint: bool = True,
    price_band_override: bool = False,
) -> Order:
    """Validate and record an order; matching happens after commit, in a Celery worker.

    A buy reserves its maximum cost (quantity x limit plus the highest fee, rounded up once to
    the cent: metering.money.reserve) from available into escrow in the same transaction, or is
    refused with insufficient_funds. Every term that prices or routes a contract is frozen on
    the order row (fee rates, the tier's share and weights, allowed hardware by id), taken from
    what placement already loaded (the instrument's tier, the catalog's hardware): no query.
    After a day-ahead auction's gate and until its clear, refused with auction_gate_closed.

    A price outside the tier's band around the book's last trade is refused with
    price_out_of_band unless `price_band_override` (the trader confirmed it): `_price_band_enforce`.
    Takes no instrument-wide lock: only the buyer's own ledger rows are locked (by the escrow
    posting), so placements on one instrument never wait for each other. The order has no
    match sequence yet: the matcher gives it one when it applies it (pricing.matcher).

    Called inside a transaction, a refusal rolls back only the order's own savepoint; a caller
    that rolls its whole transaction back on any exception anyway (the API's Idempotency-Key
    wrapper) passes savepoint=False and saves the SAVEPOINT and RELEASE round trips.
    """
    now = now or timezone.now()
    if side not in Side.values:
        raise ServiceError("invalid_side", "side must be buy or sell.", field="side")
    if time_in_force not in TimeInForce.values:
        raise ServiceError(
            "invalid_time_in_force", "time_in_force must be one of gtc, ioc, fok, post_only.", field="time_in_force"
        )
    try:
        order_terms.order_terms_check(
            quantity=quantity, price=price, lot_size=instrument.lot_size, tick_size=instrument.tick_size
        )
    except order_terms.OrderTermsError as exc:
        raise ServiceError(exc.code, exc.message, field=exc.field) from None
    if instrument.status != Instrument.Status.OPEN:
        raise ServiceError(
            "instrument_not_open", f"{instrument.symbol} is {instrument.status}; it takes no orders.", status=409
        )
    if now >= instrument.delivery_end:
        raise ServiceError("instrument_not_open", f"{instrument.symbol}'s delivery period has ended.", status=409)
    auction_gate_check(instrument=instrument, now=now, action="new orders")
    if side == Side.BUY and not account.is_buyer:
        raise ServiceError("not_a_buyer", "This account is not a buyer; it cannot place buy orders.", status=403)
    if side == Side.SELL and not account.is_provider:
        raise ServiceError("not_a_provider", "Only provider accounts can list capacity (sell).", status=403)
    if not price_band_override:
        _price_band_enforce(instrument=instrument, price=price)

    known_hw = catalog_hardware_ids()
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

    if client_order_id is not None:
        client_order_id = client_order_id.strip() or None

    from pricing.floor import order_below_floor

    below_floor = False
    if side == Side.SELL:
        below_floor = order_below_floor(instrument=instrument, hardware_code=hardware, price=price)
        if below_floor and instrument.enforce_energy_floor:
            raise ServiceError(
                "below_energy_floor",
                f"{price_text(price)} is below the energy-cost floor for {hardware} in {instrument.region.code}; "
                "this instrument refuses sells below the floor.",
                field="price",
                status=422,
            )

    maker_bps, taker_bps = money.fee_bps(maker=True), money.fee_bps(maker=False)
    tier = instrument.tier  # loaded with the instrument (catalog cache or instrument_get)
    reserve = Decimal("0")
    if side == Side.BUY:
        reserve = money.reserve(quantity=quantity, price=price, max_fee_bps=max(maker_bps, taker_bps))

    order = Order(
        account=account,
        instrument=instrument,
        side=side,
        quantity=quantity,
        price=price,
        time_in_force=time_in_force,
        hardware_id=hardware_obj_id,
        allowed_hardware=allowed,
        allowed_hardware_ids=sorted(known_hw[h] for h in allowed),
        client_order_id=client_order_id,
        maker_fee_bps=maker_bps,
        taker_fee_bps=taker_bps,
        unused_capacity_share=tier.unused_capacity_share,
        output_token_weight=tier.output_token_weight,
        cached_input_weight=tier.cached_input_weight,
        below_energy_floor=below_floor,
        created_at=now,
        updated_at=now,
    )
    total = reserve
    try:
        # On PostgreSQL one statement writes the order and, for a buy, its escrow: outside a
        # transaction it runs in autocommit (a single statement is atomic), so a placement is
        # one round trip with no BEGIN or COMMIT; inside one it gets a savepoint, so a refusal
        # changes nothing of the caller's.
        one_statement = connection.vendor == "postgresql" and not connection.in_atomic_block
        with contextlib.nullcontext() if one_statement else transaction.atomic(savepoint=savepoint):
            if connection.vendor == "postgresql":
                insert_sql, insert_params = _order_insert_sql(order=order)
                if side == Side.BUY:
                    ledger = participant_ledger_ids(account=account)
                    pk = ledger_post_with_new_row(
                        row_sql=insert_sql,
                        row_params=insert_params,
                        kind=LedgerTransaction.Kind.ESCROW_RESERVE,
                        legs=[(ledger["available"], -total), (ledger["escrow"], total)],
                        key_prefix="reserve:",
                        memo_prefix="escrow for buy order #",
                        memo_suffix=f": {quantity:,} tokens @ {price_text(price)} on {instrument.symbol}",
                    )
                else:
                    with connection.cursor() as cur:
                        cur.execute(insert_sql, insert_params)
                        pk = (cur.fetchone() or (None,))[0]
                if pk is None:
                    raise ServiceError(
                        "instrument_not_open", f"{instrument.symbol} was halted or closed; it takes no orders.",
                        status=409,
                    )
                order.pk = pk
                order._state.adding = False
                order._state.db = connection.alias
            else:
                _order_insert_sqlite(order=order)
                if side == Side.BUY:
                    ledger = participant_ledger_ids(account=account)
                    ledger_post_in_transaction(
                        key=f"reserve:{order.pk}",
                        kind=LedgerTransaction.Kind.ESCROW_RESERVE,
                        legs=[(ledger["available"], -total), (ledger["escrow"], total)],
                        memo=f"escrow for buy order #{order.pk}: {quantity:,} tokens @ {price_text(price)} on {instrument.symbol}",
                    )
            enqueue_match_on_commit(instrument.pk)  # at once in autocommit: the order is committed
    except InsufficientFunds:
        order.pk = None
        # Read after the refusal (the statement that was refused read it under its lock).
        available = (
            LedgerAccount.objects.filter(owner=account, kind=LedgerAccount.Kind.AVAILABLE, currency=settings.EXCHANGE_CURRENCY)
            .values_list("balance", flat=True)
            .first()
        )
        raise ServiceError(
            "insufficient_funds",
            f"This order needs {total} {settings.EXCHANGE_CURRENCY} in escrow "
            f"(quantity x limit + the highest fee); available is {available}.",
            status=402,
        ) from None
    except IntegrityError as exc:
        if constraint_name(exc) == "uniq_client_order_id":
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
    order.save(
        update_fields=["status", "status_reason", "pending_match", "updated_at", "sequence", "cancel_sequence"]
    )


_RELEASE_WHY = {"cancel": "cancelled", "expire": "expired when its delivery period ended"}


def _release_escrow(*, orders: list[Order], key_prefix: str, instrument: Instrument) -> None:
    """Give back what finished buy orders still held in escrow (one transaction each)."""
    from metering.ledger import ledger_account_ids
    from metering.models import LedgerAccount

    held = {
        o.pk: money.order_escrow_open(
            quantity=o.quantity, filled=o.filled_quantity, price=o.price, max_fee_bps=o.max_fee_bps
        )
        for o in orders
        if o.side == Side.BUY
    }
    buys = [o for o in orders if held.get(o.pk, 0) > 0]
    if not buys:
        return
    accounts = {o.account_id for o in buys}
    escrow = ledger_account_ids(accounts, LedgerAccount.Kind.ESCROW)
    available = ledger_account_ids(accounts, LedgerAccount.Kind.AVAILABLE)
    # One ledger_post_many: every account of every release is locked once, in ascending id
    # order, before any balance changes (posting one release per order would lock in order
    # order, which deadlocks against a transaction locking the same accounts ascending).
    ledger_post_many(
        postings=[
            Posting(
                key=f"{key_prefix}:{o.pk}",
                kind=LedgerTransaction.Kind.ESCROW_RELEASE,
                legs=[
                    (escrow[o.account_id], -held[o.pk]),
                    (available[o.account_id], held[o.pk]),
                ],
                memo=(
                    f"escrow of buy order #{o.pk} back to available: {_RELEASE_WHY.get(key_prefix, key_prefix)}, "
                    f"{o.remaining / TOKENS_PER_PRICE_UNIT:g} Mtok unfilled on {instrument.symbol}"
                ),
            )
            for o in buys
        ]
    )


def order_cancel_request(*, account: Account, order_id: int, now: dt.datetime | None = None) -> Order:
    """Record a cancel command on a live order of `account` and queue the matcher, which
    applies it in sequence. Repeating it changes nothing. Locks only the order's row."""
    now = now or timezone.now()
    with transaction.atomic():
        order = (
            Order.objects.select_for_update(of=("self",))
            .select_related("instrument")
            .filter(pk=order_id, account=account)
            .first()
        )
        if order is None:
            raise NotFound("order_not_found", f"No order {order_id} in your account.")
        if not order.is_live:
            raise _not_cancellable(order)
        if order.cancel_requested_at is None:
            auction_gate_check(instrument=order.instrument, now=now, action="cancels")
            order.cancel_requested_at = now
            order.save(update_fields=["cancel_requested_at"])
        enqueue_match_on_commit(order.instrument_id)
    return order


def _not_cancellable(order: Order) -> ServiceError:
    return ServiceError(
        "order_not_cancellable", f"Order {order.pk} is {order.status}; only open orders can be cancelled.", status=409
    )


def order_cancel(
    *, account: Account, order_id: int, now: dt.datetime | None = None, wait_ms: int | None = None
) -> Order:
    """Cancel a live order of `account` and answer with its final state.

    The cancel is a command in the instrument's match sequence: recorded on the order, applied
    by the matcher (which releases the escrow in its batch). The request waits for that at most
    `wait_ms` (settings.ORDER_CANCEL_WAIT_MS); if the matcher has not got there by then (no
    worker, or a backlog after an outage) the request applies its own cancel command under the
    instrument lock, taking the next sequence number itself. That is bounded work: one order,
    whatever the backlog, and waiting for the lock means waiting for at most one batch. Raises
    order_not_cancellable (409) if a fill or expiry got there first.
    """
    order = order_cancel_request(account=account, order_id=order_id, now=now)
    wait = settings.ORDER_CANCEL_WAIT_MS if wait_ms is None else wait_ms
    deadline = time.monotonic() + wait / 1000
    pause = 0.005
    while True:
        status = Order.objects.filter(pk=order.pk).values_list("status", flat=True).get()
        if status not in LIVE_STATUSES:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            _order_cancel_apply(order_id=order.pk, instrument_id=order.instrument_id, now=now or timezone.now())
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    order.refresh_from_db()
    if order.status != OrderStatus.CANCELLED:
        raise _not_cancellable(order)
    return order


def _order_cancel_apply(*, order_id: int, instrument_id: int, now: dt.datetime) -> None:
    """Apply one order's recorded cancel command outside the matcher, in sequence: under the
    instrument's book lock, with the next match sequence number (and the order's own one too if
    the matcher never reached it). Bumps the book version, so resident books reload."""
    with transaction.atomic():
        book_row = InstrumentBook.objects.select_for_update().get(pk=instrument_id)
        order = Order.objects.select_for_update().select_related("instrument").get(pk=order_id)
        if not order.is_live or order.cancel_requested_at is None:
            return
        seq = book_row.last_matched_sequence + 1
        if order.pending_match:
            order.sequence = seq  # cancelled before it reached the engine: replay skips it
        order.cancel_sequence = seq
        _order_finish(order=order, status=OrderStatus.CANCELLED, reason="cancelled_by_user", now=now)
        _release_escrow(orders=[order], key_prefix="cancel", instrument=order.instrument)
        book_row.last_matched_sequence = seq
        book_row.version += 1
        book_row.save(update_fields=["last_matched_sequence", "version"])
        from pricing.book_rows import book_top_refresh

        book_top_refresh(book_row=book_row)
