"""Reads of the feeds: who is subscribing, channel snapshots, messages a server missed."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from marketplace.errors import ServiceError
from marketplace.market_snapshot import snapshot_build
from marketplace.models import LIVE_STATUSES, Account, ApiKey, Instrument, InstrumentBook, Order
from marketplace.services import api_key_authenticate, instrument_get
from marketplace.two_factor import totp_device_confirmed
from metering.models import LedgerAccount

from .models import StreamChannel, StreamEvent
from .publish import BALANCE_KINDS, account_channel, market_channel, money_str, price_str, stream_market_publish


def stream_key_account(*, raw: str) -> Account | None:
    """The account of an active API key with the read scope, or None."""
    key: ApiKey | None = api_key_authenticate(raw=raw)
    if key is None or not key.has_scope("read"):
        return None
    return key.account


def stream_user_account(*, user: Any, session: Any = None) -> Account | None:
    """A signed-in user's account, as the web UI picks it (the first by membership age). A
    user with an authenticator counts only once this session passed its code (as the pages
    require: marketplace.web.security_views.needs_verification)."""
    if user is None or not user.is_authenticated:
        return None
    if totp_device_confirmed(user=user) is not None:
        device_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
        device = Device.from_persistent_id(device_id) if device_id else None
        if device is None or device.user_id != user.pk or not device.confirmed:
            return None
    return Account.objects.filter(memberships__user=user).order_by("memberships__id").first()


def stream_instrument(*, symbol: str) -> Instrument | None:
    try:
        return instrument_get(symbol=symbol)
    except ServiceError:  # NotFound, or a symbol that does not parse
        return None


def stream_instrument_by_id(*, instrument_id: int) -> Instrument:
    return Instrument.objects.get(pk=instrument_id)


def stream_market_snapshot(*, instrument: Instrument) -> tuple[int, dict]:
    """The instrument's book as of its channel's sequence number: exactly the state the next
    message applies to (the row holds both, written together)."""
    name = market_channel(instrument.pk)
    channel = StreamChannel.objects.filter(name=name).first()
    if channel is None:
        with transaction.atomic():  # as the snapshot publisher does: under the book's lock
            list(InstrumentBook.objects.select_for_update().filter(pk=instrument.pk).values_list("pk"))
            stream_market_publish(snapshot=snapshot_build(instrument_id=instrument.pk), open_channel=True)
        channel = StreamChannel.objects.get(name=name)
    state = channel.state
    return channel.seq, {
        "instrument": instrument.symbol,
        "bids": state["bids"],
        "asks": state["asks"],
        "last_trade_sequence": state["trade_seq"],
    }


def stream_account_snapshot(*, account: Account) -> tuple[int, dict]:
    """The account's live orders and balances, with its channel's sequence number.

    Read while holding the channel row FOR SHARE (publishers take it FOR UPDATE), so no
    message is numbered meanwhile. Orders and balances are states, not increments: a message
    numbered after this snapshot that it already reflects is harmless to apply again."""
    name = account_channel(account.pk)
    with transaction.atomic():
        StreamChannel.objects.bulk_create([StreamChannel(name=name)], ignore_conflicts=True)
        seq = _seq_for_share(name)
        rows = list(
            Order.objects.filter(account=account, status__in=LIVE_STATUSES)
            .order_by("id")
            .values("id", "client_order_id", "instrument_id", "side", "price", "quantity", "filled_quantity", "status")
        )
        symbols = {i.pk: i.symbol for i in Instrument.objects.select_related("tier", "region").filter(
            pk__in={r["instrument_id"] for r in rows})}  # fmt: skip
        orders = [
            {
                "id": o["id"],
                "client_order_id": o["client_order_id"],
                "instrument": symbols[o["instrument_id"]],
                "side": o["side"],
                "price": price_str(o["price"]),
                "quantity": o["quantity"],
                "filled_quantity": o["filled_quantity"],
                "status": o["status"],
            }
            for o in rows
        ]
        balances: dict[str, dict] = {}
        for cur, kind, balance in LedgerAccount.objects.filter(owner=account, kind__in=BALANCE_KINDS).values_list(
            "currency", "kind", "balance"
        ):
            balances.setdefault(cur, {k: "0.00" for k in BALANCE_KINDS})[kind] = money_str(balance)
    return seq, {"account": account.slug, "orders": orders, "balances": balances}


def _seq_for_share(name: str) -> int:
    from django.db import connection

    table = StreamChannel._meta.db_table
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cur:
        cur.execute(f"SELECT seq FROM {table} WHERE name = %s{lock}", [name])  # noqa: S608 (table name is ours)
        return cur.fetchone()[0]


def stream_events_between(*, channel: str, after: int, upto: int) -> list[StreamEvent] | None:
    """Messages after..upto of a channel, or None when some are gone (deleted as old)."""
    events = list(StreamEvent.objects.filter(channel=channel, seq__gt=after, seq__lte=upto).order_by("seq"))
    if len(events) != upto - after:
        return None
    return events


def stream_events_after(*, last_id: int, limit: int = 1000) -> list[StreamEvent]:
    """The relay's read: messages by id (see relay.py for why it also looks back)."""
    return list(StreamEvent.objects.filter(id__gt=last_id).order_by("id")[:limit])


def stream_last_event_id() -> int:
    return StreamEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
