"""The database side of the day-ahead call auction: open at the gate, clear at one price.

Clearing takes the InstrumentBook lock (like the matcher), so it never runs beside a matching
batch, and writes trades, order changes and escrow releases as the matcher does.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from marketplace.cache_generation import CATALOG, generation_bump
from marketplace.models import Instrument, InstrumentBook, OrderStatus, check_transition

from . import book_rows, engine
from .dispatch import enqueue_match_on_commit
from .matcher import buy_escrow_open, buy_fill_escrow, escrow_release_post
from .models import CallAuction


def auction_gate_closure(*, delivery_date: dt.date) -> dt.datetime:
    """Gate closure of the day-ahead auction for `delivery_date`: HH:MM UTC on the day before."""
    hour, minute = (int(x) for x in settings.AUCTION_GATE_CLOSURE_UTC.split(":"))
    return dt.datetime.combine(delivery_date - dt.timedelta(days=1), dt.time(hour, minute), tzinfo=dt.UTC)


def auction_open(*, instrument: Instrument, now: dt.datetime | None = None) -> CallAuction:
    """Start collecting an instrument's orders for its call auction (idempotent)."""
    now = now or timezone.now()
    gate = auction_gate_closure(delivery_date=instrument.delivery_date)
    with transaction.atomic():
        auction, created = CallAuction.objects.get_or_create(
            instrument=instrument, defaults={"gate_closure_at": gate, "opened_at": now}
        )
        if created:
            generation_bump(name=CATALOG)  # cached instruments learn their gate (order_place)
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


def auction_clear(*, instrument_id: int, now: dt.datetime | None = None) -> CallAuction:
    """Clear an instrument's call auction at gate closure; then continuous trading opens.

    Every trade is at the one clearing price. Collected orders that leave pending here (filled,
    or an IOC remainder cancelled) take match sequence numbers in arrival order; an unfilled
    remainder of a GTC order stays pending and is sequenced by continuous matching right after
    (it rests, or trades if the hardware rule or self-trade prevention left the residual book
    crossed). Clearing the same auction twice does nothing. Changes the book outside the
    matcher, so it bumps the book's version (resident books reload).
    """
    from .auction import clear

    now = now or timezone.now()
    with transaction.atomic():
        book_row = InstrumentBook.objects.select_for_update().get(pk=instrument_id)
        auction = CallAuction.objects.select_for_update().get(instrument_id=instrument_id)
        if auction.status == CallAuction.Status.CLEARED:
            return auction
        instrument = Instrument.objects.select_related("tier", "region").get(pk=instrument_id)
        hw = book_rows.hardware_codes()
        hw_ids = {code: pk for pk, code in hw.items()}
        rows, orders = book_rows.auction_orders(instrument_id=instrument_id, hw=hw)
        rows_by_id = {r["id"]: r for r in rows}
        position = {o.id: o.seq for o in orders}
        ref = book_rows.auction_reference_price(instrument=instrument, book_row=book_row)
        result = clear(orders, reference_price=ref, tick=instrument.tick_size)

        release: dict[int, Decimal] = defaultdict(Decimal)
        buy_filled: dict[int, int] = defaultdict(int)  # tokens filled so far in this clear, per buy
        trades: list[tuple] = []  # rows of book_rows.TRADE_COLUMNS
        trade_seq = book_row.last_trade_sequence
        for f in result.fills:
            buy_row = rows_by_id[f.buy_id]
            # No one rests first in a call auction; the later arrival counts as the taker so
            # that fees follow the continuous market's rule deterministically.
            aggressor = engine.BUY if position[f.buy_id] > position[f.sell_id] else engine.SELL
            buyer_bps, seller_bps, tier_terms = book_rows.trade_terms(
                buy_row=buy_row, sell_row=rows_by_id[f.sell_id], aggressor=aggressor
            )
            split = buy_fill_escrow(
                buy_row, filled_before=buy_row["filled_quantity"] + buy_filled[f.buy_id], quantity=f.quantity,
                price=result.price, buyer_fee_bps=buyer_bps,
            )  # fmt: skip
            buy_filled[f.buy_id] += f.quantity
            release[f.buyer_account_id] += split.release
            trade_seq += 1
            trades.append(
                (f.buy_id, f.sell_id, f.buyer_account_id, f.seller_account_id, hw_ids[f.hardware], f.quantity,
                 result.price, aggressor, trade_seq, buyer_bps, seller_bps, split.contract, *tier_terms)
            )  # fmt: skip

        seq = book_row.last_matched_sequence
        updates: list[book_rows.OrderUpdate] = []
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
            order_seq = row["sequence"]
            if row["pending_match"] and not pending:
                seq += 1
                order_seq = seq
            updates.append((o.id, filled, status, reason, pending, order_seq, None))
        book_rows.orders_update(updates, now)
        book_rows.trades_insert(instrument_id=instrument_id, trades=trades, now=now)
        escrow_release_post(
            instrument_id=instrument_id, batch_key="auction", release=release, symbol=instrument.symbol
        )

        book_row.last_matched_sequence = seq
        book_row.last_trade_sequence = trade_seq
        book_row.version += 1
        if trades:
            book_row.last_price = result.price
            book_row.last_trade_at = now
        book_row.save()
        book_rows.book_top_refresh(book_row=book_row)

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
        generation_bump(name=CATALOG)  # the gate opens again in every process's catalog
        enqueue_match_on_commit(instrument_id)
    return auction


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
