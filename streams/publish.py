"""Publishing the feeds after the book changed.

Called by the market snapshot's publisher (marketplace.market_snapshot.snapshot_publish), which
runs after the book's writer committed (the matcher's batch, a cancel, an auction, an expiry)
and holds the instrument's InstrumentBook row lock. So:
- a rolled-back batch publishes nothing: its on-commit publisher never runs;
- an instrument's messages are numbered in the order its book changed, across processes: the
  sequence lives in the channel's StreamChannel row, advanced under that lock, and each depth
  update is the difference from the state the previous message left (stored in the same row);
- an account channel's row is locked too (accounts in id order, after the book lock, the one
  order every publisher takes them in), since several instruments' publishers may write to it.
Messages are StreamEvent rows of the same transaction, sent to the channel layer after it
commits (with Redis); without Redis each web process relays them from the table (relay.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min, Sum
from django.utils import timezone

from marketplace.models import Instrument, Order, Trade
from metering.models import LedgerAccount

from .models import StreamChannel, StreamEvent

log = logging.getLogger(__name__)

# Orders changed up to this long before the previous publication are compared again: a writer
# that stamped updated_at just before that publication may have committed just after it.
ORDER_LOOKBACK = dt.timedelta(seconds=2)
NEW_CHANNEL_TRADES = dt.timedelta(minutes=1)
KEEP_EVENTS = 5000  # per channel: what a server can fill a gap from; older ones are deleted
BALANCE_KINDS = ("available", "escrow", "owed", "withdrawal_hold")
TWO_PLACES = Decimal("0.01")


def market_channel(instrument_id: int) -> str:
    return f"market.{instrument_id}"


def account_channel(account_id: int) -> str:
    return f"account.{account_id}"


def price_str(value: Decimal | None) -> str | None:
    """As the REST API writes prices (marketplace.api.fields.price_str), so levels compare equal."""
    if value is None:
        return None
    if value == value.quantize(TWO_PLACES):
        return str(value.quantize(TWO_PLACES))
    return format(value.normalize(), "f")


def money_str(value: Decimal) -> str:
    return str(value.quantize(TWO_PLACES))


def levels_state(levels: list) -> list[list]:
    """Book levels as the feed sends them: [price, quantity, orders, {hardware: quantity}]."""
    return [[price_str(lv.price), lv.quantity, lv.orders, dict(lv.by_hardware)] for lv in levels]


def depth_changes(old: list[list], new: list[list]) -> list[list]:
    """Levels that differ, new values; a removed level comes with quantity 0."""
    before = {lv[0]: lv for lv in old}
    after = {lv[0]: lv for lv in new}
    changed = [lv for p, lv in after.items() if before.get(p) != lv]
    gone = [[p, 0, 0, {}] for p in before if p not in after]
    return changed + gone


def _minute(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(second=0, microsecond=0)


def _candle(instrument_id: int, start: dt.datetime) -> dict[str, Any] | None:
    trades = Trade.objects.filter(
        instrument_id=instrument_id, executed_at__gte=start, executed_at__lt=start + dt.timedelta(minutes=1)
    )
    agg = trades.aggregate(high=Max("price"), low=Min("price"), volume=Sum("quantity"), first=Min("match_sequence"),
                           last=Max("match_sequence"))  # fmt: skip
    if agg["first"] is None:
        return None
    prices = dict(trades.filter(match_sequence__in=[agg["first"], agg["last"]]).values_list("match_sequence", "price"))
    return {
        "interval": "1m",
        "start": start.isoformat(),
        "open": price_str(prices[agg["first"]]),
        "high": price_str(agg["high"]),
        "low": price_str(agg["low"]),
        "close": price_str(prices[agg["last"]]),
        "volume": int(agg["volume"]),
    }


def _lock_channels(names: list[str], *, initial: dict[str, dict] | None = None) -> dict[str, StreamChannel]:
    """The channels' rows, created if missing, locked in name order."""
    names = sorted(set(names))
    if not names:
        return {}
    initial = initial or {}
    StreamChannel.objects.bulk_create(
        [StreamChannel(name=n, state=initial.get(n, {})) for n in names], ignore_conflicts=True
    )
    return {c.name: c for c in StreamChannel.objects.select_for_update().filter(name__in=names).order_by("name")}


def stream_market_publish(*, snapshot: Any, open_channel: bool = False) -> None:
    """Publish what changed in the instrument's book since its previous publication.

    `snapshot` is the MarketSnapshot just built. The caller holds the instrument's
    InstrumentBook row lock inside a transaction (see the module doc). A publication that has
    nothing to say writes nothing (readers rebuild snapshots of idle instruments: on SQLite a
    write each would serialize them); `open_channel` creates the channel even so (a subscriber)."""
    if not settings.STREAMS_ENABLED:
        return
    if not connection.in_atomic_block:
        raise RuntimeError("stream_market_publish runs inside the snapshot publisher's transaction")
    try:
        with transaction.atomic():  # a savepoint: a failure here never fails the snapshot
            _market_publish(snapshot, open_channel=open_channel)
    except Exception:
        # Subscribers see the next message's gap and re-sync from a snapshot.
        log.exception("live feed of instrument %s not published", snapshot.instrument_id)


def _market_publish(snapshot: Any, *, open_channel: bool) -> None:
    instrument_id = snapshot.instrument_id
    now = timezone.now()
    name = market_channel(instrument_id)
    bids, asks = levels_state(snapshot.bids), levels_state(snapshot.asks)
    # A channel starts at the book as it is, and with the trades of the last minute still to
    # publish: a channel is created by its first subscriber or by the first publication after
    # the instrument opened (or after this was deployed), which may be the batch of its first
    # trades, whose fills the traders' account channels must carry.
    last_trade = max((t.match_sequence for t in snapshot.trades if t.executed_at < now - NEW_CHANNEL_TRADES), default=0)
    start = {"bids": bids, "asks": asks, "trade_seq": last_trade, "orders": {}, "since": now.isoformat()}
    if not open_channel and not StreamChannel.objects.filter(name=name).exists():
        recent = now - max(NEW_CHANNEL_TRADES, ORDER_LOOKBACK)
        if (
            not any(t.executed_at >= recent for t in snapshot.trades)
            and not Order.objects.filter(instrument_id=instrument_id, updated_at__gte=recent).exists()
        ):
            return  # idle, and nobody subscribed yet: nothing to number
    channel = _lock_channels([name], initial={name: start})[name]
    state = channel.state or start
    market: list[tuple[str, dict]] = []
    private: dict[int, list[tuple[str, dict]]] = defaultdict(list)
    names: list[str] = []

    def symbol() -> str:  # read once, only when an account message needs it
        if not names:
            tier, region, day = Instrument.objects.values_list("tier__code", "region__code", "delivery_date").get(
                pk=instrument_id
            )
            names.append(f"{tier}:{region}:{day.isoformat()}")
        return names[0]

    trades = list(
        Trade.objects.filter(instrument_id=instrument_id, match_sequence__gt=state["trade_seq"])
        .order_by("match_sequence")
        .values(
            "id",
            "price",
            "quantity",
            "hardware__code",
            "aggressor_side",
            "match_sequence",
            "executed_at",
            "buy_order_id",
            "sell_order_id",
            "buyer_id",
            "seller_id",
        )  # fmt: skip
    )
    if trades:
        state["trade_seq"] = trades[-1]["match_sequence"]
        market.append(("trades", {"trades": [
            {"id": t["id"], "price": price_str(t["price"]), "quantity": t["quantity"], "hardware": t["hardware__code"],
             "aggressor_side": t["aggressor_side"], "match_sequence": t["match_sequence"],
             "executed_at": t["executed_at"].isoformat()}
            for t in trades
        ]}))  # fmt: skip
        for t in trades:
            for side, account_id, order_id in (("buy", t["buyer_id"], t["buy_order_id"]),
                                               ("sell", t["seller_id"], t["sell_order_id"])):  # fmt: skip
                private[account_id].append(("fill", {
                    "trade_id": t["id"], "order_id": order_id, "instrument": symbol(), "side": side,
                    "price": price_str(t["price"]), "quantity": t["quantity"], "hardware": t["hardware__code"],
                    "executed_at": t["executed_at"].isoformat(),
                }))  # fmt: skip

    changes = {"bids": depth_changes(state["bids"], bids), "asks": depth_changes(state["asks"], asks)}
    if changes["bids"] or changes["asks"]:
        market.append(("depth", changes))
        state["bids"], state["asks"] = bids, asks

    # Candles close when the minute is over: published by the first publication after it.
    minutes = {_minute(t["executed_at"]) for t in trades}
    if state.get("minute"):
        minutes.add(dt.datetime.fromisoformat(state["minute"]))
    open_minute = _minute(now)
    for m in sorted(x for x in minutes if x < open_minute):
        candle = _candle(instrument_id, m)
        if candle:
            market.append(("candle", candle))
    still_open = [x for x in minutes if x >= open_minute]
    state["minute"] = max(still_open).isoformat() if still_open else None

    since = dt.datetime.fromisoformat(state["since"]) - ORDER_LOOKBACK
    seen = state.get("orders", {})
    recent = {}
    for o in Order.objects.filter(instrument_id=instrument_id, updated_at__gte=since).values(
        "id", "account_id", "client_order_id", "side", "price", "quantity", "filled_quantity", "status",
        "status_reason", "updated_at",
    ):  # fmt: skip
        mark = [o["status"], o["filled_quantity"]]
        recent[str(o["id"])] = mark
        if seen.get(str(o["id"])) != mark:
            private[o["account_id"]].append(("order", {
                "id": o["id"], "client_order_id": o["client_order_id"], "instrument": symbol(),
                "side": o["side"], "price": price_str(o["price"]), "quantity": o["quantity"],
                "filled_quantity": o["filled_quantity"], "status": o["status"], "status_reason": o["status_reason"],
                "updated_at": o["updated_at"].isoformat(),
            }))  # fmt: skip
    state["orders"], state["since"] = recent, now.isoformat()

    if private:
        balances: dict[int, dict] = defaultdict(dict)
        for owner_id, cur, kind, balance in LedgerAccount.objects.filter(
            owner_id__in=list(private), kind__in=BALANCE_KINDS
        ).values_list("owner_id", "currency", "kind", "balance"):
            balances[owner_id].setdefault(cur, {k: "0.00" for k in BALANCE_KINDS})[kind] = money_str(balance)
        for account_id in private:
            private[account_id].append(("balance", {"balances": balances.get(account_id, {})}))

    if not market and not private:
        return  # nothing changed: no write (the next publication compares from here again)
    events = _append(channel, market, now)
    accounts = _lock_channels([account_channel(a) for a in private])
    for account_id, messages in private.items():
        events += _append(accounts[account_channel(account_id)], messages, now)
    channel.state = state
    channel.updated_at = now
    channel.save(update_fields=["seq", "state", "updated_at"])
    for c in accounts.values():
        c.updated_at = now
        c.save(update_fields=["seq", "updated_at"])
    if events:
        StreamEvent.objects.bulk_create(events)
        public = {e.channel: "account" if e.channel.startswith("account.") else f"market.{symbol()}" for e in events}
        transaction.on_commit(lambda: _deliver(events, public))


def _append(channel: StreamChannel, messages: list[tuple[str, dict]], now: dt.datetime) -> list[StreamEvent]:
    out = []
    for kind, data in messages:
        channel.seq += 1
        out.append(StreamEvent(channel=channel.name, seq=channel.seq, type=kind, data=data, created_at=now))
    if out and channel.seq // 1000 != (channel.seq - len(out)) // 1000:
        StreamEvent.objects.filter(channel=channel.name, seq__lte=channel.seq - KEEP_EVENTS).delete()
    return out


def group_name(channel: str) -> str:
    """The channel layer group of a stream channel (the layer's names allow dots)."""
    return f"stream.{channel}"


def event_message(event: StreamEvent, public: str | None = None) -> dict:
    """The channel layer message of an event. With the channel's public name it carries the
    frame subscribers get, encoded once here rather than once per subscriber."""
    message = {"type": "stream.event", "channel": event.channel, "seq": event.seq, "kind": event.type,
               "data": event.data}  # fmt: skip
    if public is not None:
        message["text"] = json.dumps({"channel": public, "type": event.type, "seq": event.seq, "data": event.data})
    return message


def _deliver(events: list[StreamEvent], public: dict[str, str]) -> None:
    """Send committed messages to the channel layer (Redis). In the embedded setup the web
    processes relay them from the table instead (STREAMS_DELIVERY = "relay")."""
    if settings.STREAMS_DELIVERY != "push":
        return
    try:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = get_channel_layer()

        async def send_all() -> None:
            for e in events:
                await layer.group_send(group_name(e.channel), event_message(e, public[e.channel]))

        async_to_sync(send_all)()
    except Exception:
        # The messages are committed: a subscriber's server fills the gap from the table on the
        # next message of the channel, or the client re-syncs from a snapshot.
        log.exception("stream messages not sent to the channel layer")
