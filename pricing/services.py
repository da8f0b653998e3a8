"""The database-backed matcher: lock an instrument, load its book, run the engine, write.

One batch is one transaction: the pending orders (in sequence order, up to
settings.MATCH_BATCH_SIZE) are matched against the resting book, and trades, order changes,
escrow releases and top-of-book are written in bulk. Any number of workers may call
instrument_match at once: the InstrumentBook row lock serializes them per instrument, and an
order is pending exactly until the batch that processed it commits, so nothing is matched twice
and a crash mid-batch leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import operator
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from functools import reduce

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, Max, Min, OuterRef, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from marketplace.models import (
    LIVE_STATUSES,
    Hardware,
    Instrument,
    InstrumentBook,
    Order,
    OrderStatus,
    Trade,
    check_transition,
)
from marketplace.terms import (
    allowed_hardware_codes,
    buy_escrow_open,
    buy_fill_escrow,
    trade_fee_bps,
    trade_tier_terms,
)
from metering.ledger import ledger_account_ids, ledger_post
from metering.models import LedgerAccount, LedgerTransaction

from . import engine
from .models import CallAuction

log = logging.getLogger(__name__)


@dataclass
class MatchReport:
    instrument_id: int
    processed: int = 0
    trades: int = 0
    batches: int = 0
    more_pending: bool = False


def fee_bps(*, maker: bool) -> int:
    return settings.MAKER_FEE_BPS if maker else settings.TAKER_FEE_BPS


def max_fee_bps() -> int:
    return max(settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS)


def instrument_match(*, instrument_id: int, max_batches: int = 50) -> MatchReport:
    """Match everything pending on one instrument, one transaction per batch."""
    report = MatchReport(instrument_id)
    for _ in range(max_batches):
        with transaction.atomic():
            book_row = InstrumentBook.objects.select_for_update().get(pk=instrument_id)
            processed, trades = match_locked(book_row=book_row)
        if processed == 0:
            return report
        report.processed += processed
        report.trades += trades
        report.batches += 1
    report.more_pending = Order.objects.filter(instrument_id=instrument_id, pending_match=True).exists()
    return report


def _hardware_codes() -> dict[int, str]:
    return dict(Hardware.objects.values_list("id", "code"))


def _book_order(row: dict, hw: dict[int, str]) -> engine.BookOrder:
    return engine.BookOrder(
        id=row["id"],
        seq=row["sequence"],
        account_id=row["account_id"],
        side=row["side"],
        price=row["price"],
        remaining=row["quantity"] - row["filled_quantity"],
        tif=row["time_in_force"],
        hardware=hw[row["hardware_id"]] if row["hardware_id"] else None,
        allowed=allowed_hardware_codes(row["allowed_hardware_ids"] or (), hw),
    )


_ORDER_FIELDS = (
    "id",
    "sequence",
    "account_id",
    "side",
    "price",
    "quantity",
    "filled_quantity",
    "time_in_force",
    "hardware_id",
    "allowed_hardware_ids",
    "status",
    "reserved",
    "maker_fee_bps",
    "taker_fee_bps",
    "unused_capacity_share",
    "output_token_weight",
    "cached_input_weight",
)


def _order_rows(qs: QuerySet[Order]) -> list[dict]:
    """Rows of _ORDER_FIELDS for the matcher. On PostgreSQL they are read with a plain cursor
    and allowed_hardware_ids is decoded once per distinct value (nearly all are []): the ORM's
    per-row JSON decoding and converters were most of the cost of loading a deep book."""
    if connection.vendor != "postgresql":
        return list(qs.values(*_ORDER_FIELDS))
    fields = [f for f in _ORDER_FIELDS if f != "allowed_hardware_ids"]
    sql, params = (
        qs.annotate(allowed_text=Cast("allowed_hardware_ids", TextField()))
        .values_list(*fields, "allowed_text")
        .query.sql_with_params()
    )
    decoded: dict[str | None, list[int]] = {}
    rows = []
    with connection.cursor() as cur:
        cur.execute(sql, params)
        for *values, allowed in cur.fetchall():
            row = dict(zip(fields, values, strict=True))
            if allowed not in decoded:
                decoded[allowed] = json.loads(allowed) if allowed else []
            row["allowed_hardware_ids"] = decoded[allowed]
            rows.append(row)
    return rows


def match_locked(*, book_row: InstrumentBook, batch_size: int | None = None) -> tuple[int, int]:
    """Run one batch. The caller holds SELECT FOR UPDATE on `book_row` inside a transaction.

    Returns (orders processed, trades written).
    """
    # In its day-ahead call auction an instrument collects orders; auction_clear matches them.
    instrument = Instrument.objects.annotate(
        in_call_auction=Exists(
            CallAuction.objects.filter(instrument=OuterRef("pk"), status=CallAuction.Status.COLLECTING)
        )
    ).get(pk=book_row.instrument_id)
    now = timezone.now()
    if instrument.status != Instrument.Status.OPEN or now >= instrument.delivery_end or instrument.in_call_auction:
        return 0, 0
    batch_size = batch_size or settings.MATCH_BATCH_SIZE
    pending = _order_rows(
        Order.objects.filter(instrument_id=instrument.id, pending_match=True).order_by("sequence")[:batch_size]
    )
    if not pending:
        return 0, 0
    hw = _hardware_codes()
    # Load only the resting orders this batch can reach: asks at or below its highest bid, bids
    # at or above its lowest ask. No order of the batch can trade with (or, post-only, cross)
    # anything else, and what rests during the batch is in memory, so the fills are those of
    # the whole book while a deep book costs nothing per batch. Top of book is read back after
    # the writes (_write_batch) since the loaded part may not hold it.
    buy_max = max((r["price"] for r in pending if r["side"] == engine.BUY), default=None)
    sell_min = min((r["price"] for r in pending if r["side"] == engine.SELL), default=None)
    reachable = []
    if buy_max is not None:
        reachable.append(Q(side=engine.SELL, price__lte=buy_max))
    if sell_min is not None:
        reachable.append(Q(side=engine.BUY, price__gte=sell_min))
    resting_rows = _order_rows(
        Order.objects.filter(instrument_id=instrument.id, pending_match=False, status__in=LIVE_STATUSES).filter(
            reduce(operator.or_, reachable)
        )
    )
    rows_by_id = {r["id"]: r for r in resting_rows}
    rows_by_id.update({r["id"]: r for r in pending})
    book = engine.OrderBook(_book_order(r, hw) for r in resting_rows)

    results = [book.submit(_book_order(r, hw)) for r in pending]
    return len(pending), _write_batch(
        instrument=instrument, book_row=book_row, results=results, rows_by_id=rows_by_id, hw=hw, now=now
    )


def _write_batch(
    *,
    instrument: Instrument,
    book_row: InstrumentBook,
    results: list[engine.Result],
    rows_by_id: dict[int, dict],
    hw: dict[int, str],
    now: dt.datetime,
) -> int:
    hw_ids = {code: pk for pk, code in hw.items()}
    trades: list[tuple] = []  # _MATCH_TRADE_COLUMNS
    filled_by: dict[int, int] = defaultdict(int)
    final: dict[int, tuple[str, str]] = {}  # order id -> (status, reason) for takers
    release: dict[int, Decimal] = defaultdict(Decimal)  # buyer Account id -> escrow to release
    match_seq = book_row.last_trade_sequence

    for res in results:
        taker = res.order
        for f in res.fills:
            match_seq += 1
            buy_row = rows_by_id[f.buy_id]
            buyer_bps, seller_bps = trade_fee_bps(buy_row=buy_row, sell_row=rows_by_id[f.sell_id], aggressor=f.aggressor)
            split = buy_fill_escrow(
                buy_row, filled_before=buy_row["filled_quantity"] + filled_by[f.buy_id], quantity=f.quantity,
                price=f.price, buyer_fee_bps=buyer_bps,
            )  # fmt: skip
            release[f.buyer_account_id] += split.release
            filled_by[f.maker_id] += f.quantity
            filled_by[f.taker_id] += f.quantity
            trades.append(
                (
                    f.buy_id,
                    f.sell_id,
                    f.buyer_account_id,
                    f.seller_account_id,
                    hw_ids[f.hardware],
                    f.quantity,
                    f.price,
                    f.aggressor,
                    match_seq,
                    buyer_bps,
                    seller_bps,
                    split.contract,
                    *trade_tier_terms(maker_row=rows_by_id[f.maker_id]),
                )
            )
        if res.outcome in (engine.CANCELLED, engine.REJECTED):
            final[taker.id] = (
                OrderStatus.REJECTED if res.outcome == engine.REJECTED else OrderStatus.CANCELLED,
                res.reason,
            )
            if taker.side == engine.BUY and taker.remaining:
                taker_row = rows_by_id[taker.id]
                release[taker.account_id] += buy_escrow_open(
                    taker_row, filled=taker_row["filled_quantity"] + filled_by[taker.id]
                )

    # Every pending order leaves pending; filled orders change quantity and status.
    updates: list[tuple[int, int, str, str]] = []
    touched = {r.order.id for r in results} | set(filled_by)
    for order_id in touched:
        row = rows_by_id[order_id]
        filled = row["filled_quantity"] + filled_by.get(order_id, 0)
        if order_id in final:
            status, reason = final[order_id]
        elif filled == row["quantity"]:
            status, reason = OrderStatus.FILLED, ""
        elif filled > 0:
            status, reason = OrderStatus.PARTIALLY_FILLED, ""
        else:
            status, reason = OrderStatus.OPEN, ""
        check_transition(row["status"], status)
        updates.append((order_id, filled, status, reason))
    _bulk_update_orders(updates, now)

    _bulk_insert_trades(instrument_id=instrument.id, trades=trades, now=now)
    _post_release(instrument_id=instrument.id, batch_key=results[-1].order.seq, release=release)

    book_row.last_matched_sequence = results[-1].order.seq
    book_row.last_trade_sequence = match_seq
    book_row.batches += 1
    top = Order.objects.filter(instrument_id=instrument.id, pending_match=False, status__in=LIVE_STATUSES).aggregate(
        bid=Max("price", filter=Q(side=engine.BUY)), ask=Min("price", filter=Q(side=engine.SELL))
    )
    book_row.best_bid, book_row.best_ask = top["bid"], top["ask"]
    if trades:
        book_row.last_price = trades[-1][_MATCH_TRADE_COLUMNS.index("price")]
        book_row.last_trade_at = now
    book_row.save()
    return len(trades)


# Columns of a trade row built by _write_batch (besides instrument_id and executed_at).
_MATCH_TRADE_COLUMNS = (
    "buy_order_id",
    "sell_order_id",
    "buyer_id",
    "seller_id",
    "hardware_id",
    "quantity",
    "price",
    "aggressor_side",
    "match_sequence",
    "buyer_fee_bps",
    "seller_fee_bps",
    "buyer_escrow",
    "unused_capacity_share",
    "output_token_weight",
    "cached_input_weight",
)
_MATCH_TRADE_PG_TYPES = ("bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "numeric", "text", "bigint",
                   "integer", "integer", "numeric", "numeric", "numeric", "numeric")  # fmt: skip


def _pg_array(values: list) -> str:
    """A PostgreSQL array literal of numbers or plain words: much cheaper to send than a list,
    which the driver adapts item by item. Words must not need escaping."""
    out = []
    for v in values:
        if isinstance(v, str):
            if '"' in v or "\\" in v:
                raise ValueError(f"{v!r} needs escaping in an array literal")
            out.append(f'"{v}"')
        else:
            out.append(str(v))
    return "{" + ",".join(out) + "}"


def _bulk_insert_trades(*, instrument_id: int, trades: list[tuple], now: dt.datetime) -> None:
    if not trades:
        return
    columns = {f.column for f in Trade._meta.concrete_fields} - {"id"}
    if connection.vendor == "postgresql" and columns == {*_MATCH_TRADE_COLUMNS, "instrument_id", "executed_at"}:
        # One INSERT ... SELECT FROM unnest() per batch; falls back to the ORM below if the
        # Trade model gains a column this statement does not know.
        names = ", ".join(_MATCH_TRADE_COLUMNS)
        arrays = ", ".join(f"%s::{t}[]" for t in _MATCH_TRADE_PG_TYPES)
        with connection.cursor() as cur:
            cur.execute(
                f"INSERT INTO marketplace_trade (instrument_id, executed_at, {names}) "
                f"SELECT %s, %s, {names} FROM unnest({arrays}) AS v({names})",
                [instrument_id, now, *(_pg_array([t[i] for t in trades]) for i in range(len(_MATCH_TRADE_COLUMNS)))],
            )
        return
    Trade.objects.bulk_create(
        [
            Trade(instrument_id=instrument_id, executed_at=now, **dict(zip(_MATCH_TRADE_COLUMNS, t, strict=True)))
            for t in trades
        ],
        batch_size=2000,
    )


def _post_release(*, instrument_id: int, batch_key: int, release: dict[int, Decimal]) -> None:
    # Every amount is >= 0 by construction (metering.money.fill_escrow never takes more than an
    # order holds); zero moves nothing.
    release = {a: amt for a, amt in release.items() if amt > 0}
    if not release:
        return
    escrow_ids = ledger_account_ids(release, LedgerAccount.Kind.ESCROW)
    available_ids = ledger_account_ids(release, LedgerAccount.Kind.AVAILABLE)
    legs = []
    for account_id, amount in release.items():
        legs.append((escrow_ids[account_id], -amount))
        legs.append((available_ids[account_id], amount))
    ledger_post(
        key=f"match:{instrument_id}:{batch_key}",
        kind=LedgerTransaction.Kind.MATCH,
        legs=legs,
        memo=f"escrow released by matching on instrument {instrument_id} up to sequence {batch_key}",
    )


def _bulk_update_orders(updates: list[tuple[int, int, str, str]], now: dt.datetime) -> None:
    if not updates:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE marketplace_order AS o SET filled_quantity = v.filled, status = v.status, "
                "status_reason = v.reason, pending_match = false, updated_at = %s "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[]) AS v(id, filled, status, reason) "
                "WHERE o.id = v.id",
                [now, *(_pg_array([u[i] for u in updates]) for i in range(4))],
            )
        return
    objs = [
        Order(id=oid, filled_quantity=filled, status=status, status_reason=reason, pending_match=False, updated_at=now)
        for oid, filled, status, reason in updates
    ]
    Order.objects.bulk_update(
        objs, ["filled_quantity", "status", "status_reason", "pending_match", "updated_at"], batch_size=500
    )


def book_refresh_top(*, book_row: InstrumentBook) -> None:
    """Recompute best bid/ask from the resting orders (after a cancel or expiry)."""
    from django.db.models import Max, Min

    live = Order.objects.filter(instrument_id=book_row.instrument_id, pending_match=False, status__in=LIVE_STATUSES)
    book_row.best_bid = live.filter(side="buy").aggregate(p=Max("price"))["p"]
    book_row.best_ask = live.filter(side="sell").aggregate(p=Min("price"))["p"]
    book_row.save(update_fields=["best_bid", "best_ask"])


# --- day-ahead call auction ---------------------------------------------------------------------


def auction_gate_closure(*, delivery_date: dt.date) -> dt.datetime:
    """Gate closure of the day-ahead auction for `delivery_date`: HH:MM UTC on the day before."""
    hour, minute = (int(x) for x in settings.AUCTION_GATE_CLOSURE_UTC.split(":"))
    return dt.datetime.combine(delivery_date - dt.timedelta(days=1), dt.time(hour, minute), tzinfo=dt.UTC)


def auction_open(*, instrument: Instrument, now: dt.datetime | None = None) -> CallAuction:
    """Start collecting an instrument's orders for its call auction (idempotent)."""
    now = now or timezone.now()
    gate = auction_gate_closure(delivery_date=instrument.delivery_date)
    auction, _ = CallAuction.objects.get_or_create(
        instrument=instrument, defaults={"gate_closure_at": gate, "opened_at": now}
    )
    return auction


def auctions_open_due(*, now: dt.datetime | None = None) -> int:
    """Open the auction of every open instrument for tomorrow (UTC) whose gate is still ahead."""
    if not settings.DAY_AHEAD_AUCTION:
        return 0
    now = now or timezone.now()
    tomorrow = now.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    if now >= auction_gate_closure(delivery_date=tomorrow):
        return 0
    opened = 0
    for inst in Instrument.objects.filter(
        delivery_date=tomorrow, status=Instrument.Status.OPEN, call_auction__isnull=True
    ):
        auction_open(instrument=inst, now=now)
        opened += 1
    return opened


def _auction_orders(instrument_id: int, hw: dict[int, str]) -> tuple[list[dict], list]:
    from .auction import AuctionOrder

    live = Order.objects.filter(instrument_id=instrument_id, status__in=LIVE_STATUSES)
    rows = [{**r, "pending_match": False} for r in _order_rows(live.filter(pending_match=False))]
    rows += [{**r, "pending_match": True} for r in _order_rows(live.filter(pending_match=True))]
    rows.sort(key=lambda r: r["sequence"])
    # Fill-or-kill and post-only only make sense against a continuous book: a pending one skips
    # the auction and is processed by continuous matching when it opens.
    participants = [
        r for r in rows if not (r["pending_match"] and r["time_in_force"] in (engine.FOK, engine.POST_ONLY))
    ]
    orders = [
        AuctionOrder(
            id=r["id"],
            seq=r["sequence"],
            account_id=r["account_id"],
            side=r["side"],
            price=r["price"],
            quantity=r["quantity"] - r["filled_quantity"],
            hardware=hw[r["hardware_id"]] if r["hardware_id"] else None,
            allowed=allowed_hardware_codes(r["allowed_hardware_ids"] or (), hw),
        )
        for r in participants
    ]
    return rows, orders


def auction_reference_price(*, instrument: Instrument, book_row: InstrumentBook) -> Decimal | None:
    """The instrument's last price, else the latest Token Price Index of its tier."""
    if book_row.last_price is not None:
        return book_row.last_price
    from .models import IndexValue

    return (
        IndexValue.objects.filter(tier_id=instrument.tier_id).order_by("-day").values_list("value", flat=True).first()
    )


def auction_clear(*, instrument_id: int, now: dt.datetime | None = None) -> CallAuction:
    """Clear an instrument's call auction at gate closure; then continuous trading opens.

    Takes the InstrumentBook lock (like the matcher), so it never runs beside a matching batch.
    Trades, order statuses, escrow releases and top of book are written as continuous matching
    writes them; every trade is at the one clearing price. An unfilled remainder of a GTC order
    stays pending and is processed by continuous matching right after (it rests, or trades if
    the hardware rule or self-trade prevention left the residual book crossed); an IOC
    remainder is cancelled. Clearing the same auction twice does nothing.
    """
    from .auction import clear

    now = now or timezone.now()
    with transaction.atomic():
        book_row = InstrumentBook.objects.select_for_update().get(pk=instrument_id)
        auction = CallAuction.objects.select_for_update().get(instrument_id=instrument_id)
        if auction.status == CallAuction.Status.CLEARED:
            return auction
        instrument = Instrument.objects.get(pk=instrument_id)
        hw = _hardware_codes()
        hw_ids = {code: pk for pk, code in hw.items()}
        rows, orders = _auction_orders(instrument_id, hw)
        rows_by_id = {r["id"]: r for r in rows}
        ref = auction_reference_price(instrument=instrument, book_row=book_row)
        result = clear(orders, reference_price=ref, tick=instrument.tick_size)

        release: dict[int, Decimal] = defaultdict(Decimal)
        buy_filled: dict[int, int] = defaultdict(int)
        trades: list[tuple] = []  # rows of _MATCH_TRADE_COLUMNS
        match_seq = book_row.last_trade_sequence
        for f in result.fills:
            buy_row, sell_row = rows_by_id[f.buy_id], rows_by_id[f.sell_id]
            # No one rests first in a call auction; the later order counts as the taker so
            # that fees follow the continuous market's rule deterministically.
            aggressor = engine.BUY if buy_row["sequence"] > sell_row["sequence"] else engine.SELL
            buyer_bps, seller_bps = trade_fee_bps(buy_row=buy_row, sell_row=sell_row, aggressor=aggressor)
            split = buy_fill_escrow(
                buy_row, filled_before=buy_row["filled_quantity"] + buy_filled[f.buy_id], quantity=f.quantity,
                price=result.price, buyer_fee_bps=buyer_bps,
            )  # fmt: skip
            buy_filled[f.buy_id] += f.quantity
            release[f.buyer_account_id] += split.release
            match_seq += 1
            maker_row = sell_row if aggressor == engine.BUY else buy_row
            trades.append(
                (f.buy_id, f.sell_id, f.buyer_account_id, f.seller_account_id, hw_ids[f.hardware], f.quantity,
                 result.price, aggressor, match_seq, buyer_bps, seller_bps, split.contract,
                 *trade_tier_terms(maker_row=maker_row))
            )  # fmt: skip

        updates: list[tuple[int, int, str, str, bool]] = []
        for o in orders:
            row = rows_by_id[o.id]
            traded = result.filled.get(o.id, 0)
            filled = row["filled_quantity"] + traded
            pending = row["pending_match"]
            reason = ""
            if filled == row["quantity"]:
                status, pending = OrderStatus.FILLED, False
            elif row["pending_match"] and row["time_in_force"] == engine.IOC:
                status, pending, reason = OrderStatus.CANCELLED, False, engine.REASON_IOC
                if row["side"] == engine.BUY:
                    release[row["account_id"]] += buy_escrow_open(row, filled=filled)
            elif traded:
                status = OrderStatus.PARTIALLY_FILLED
            else:
                continue
            check_transition(row["status"], status)
            updates.append((o.id, filled, status, reason, pending))
        _auction_update_orders(updates, now)
        _bulk_insert_trades(instrument_id=instrument_id, trades=trades, now=now)
        _post_release(instrument_id=instrument_id, batch_key="auction", release=release)  # type: ignore[arg-type]

        book_row.last_trade_sequence = match_seq
        if trades:
            book_row.last_price = result.price
            book_row.last_trade_at = now
        book_row.save()
        book_refresh_top(book_row=book_row)

        auction.status = CallAuction.Status.CLEARED
        auction.cleared_at = now
        auction.reference_price = result.reference_price
        auction.clearing_price = result.price
        auction.volume = result.volume
        auction.demand = result.demand
        auction.supply = result.supply
        auction.imbalance = result.imbalance
        auction.orders_count = len(orders)
        auction.trades_count = len(trades)
        auction.save()

        from .tasks import enqueue_match

        transaction.on_commit(lambda: enqueue_match(instrument_id))
    return auction


def _auction_update_orders(updates: list[tuple[int, int, str, str, bool]], now: dt.datetime) -> None:
    if not updates:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE marketplace_order AS o SET filled_quantity = v.filled, status = v.status, "
                "status_reason = v.reason, pending_match = v.pending, updated_at = %s "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::boolean[]) "
                "AS v(id, filled, status, reason, pending) WHERE o.id = v.id",
                [
                    now,
                    *(_pg_array([u[i] for u in updates]) for i in range(4)),
                    _pg_array([str(u[4]).lower() for u in updates]),
                ],
            )
        return
    objs = [
        Order(
            id=oid, filled_quantity=filled, status=status, status_reason=reason, pending_match=pending, updated_at=now
        )
        for oid, filled, status, reason, pending in updates
    ]
    Order.objects.bulk_update(
        objs, ["filled_quantity", "status", "status_reason", "pending_match", "updated_at"], batch_size=500
    )


def auctions_clear_due(*, now: dt.datetime | None = None) -> list[int]:
    """Clear every collecting auction whose gate has closed (on open instruments)."""
    now = now or timezone.now()
    ids = list(
        CallAuction.objects.filter(
            status=CallAuction.Status.COLLECTING, gate_closure_at__lte=now, instrument__status=Instrument.Status.OPEN
        ).values_list("instrument_id", flat=True)
    )
    for instrument_id in ids:
        auction_clear(instrument_id=instrument_id, now=now)
    return ids
