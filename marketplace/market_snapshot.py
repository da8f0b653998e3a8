"""Market data snapshots: each instrument's depth, top of book and last trades, rebuilt after
every change of its book and read by GET .../book, the instruments list and the web book, so
no request aggregates the orders table.

Who publishes: the matcher after every committed batch, and every other writer of the book
(cancel, auction, expiry) after its commit: `snapshot_publish_on_commit`. Publishing takes the
instrument's InstrumentBook row lock, which every writer of the book holds while it writes, so
publications are serialized with the writes: each one reads the book as committed when it got
the lock, and a later publication never loses to an earlier one.

Where: the shared Django cache (Redis when REDIS_URL is set), one entry per instrument, kept
SNAPSHOT_TTL seconds so that the rolling 24-hour volume and the trade list of a quiet
instrument are never older than that. A missing snapshot (never published, expired, Redis
restarted, a failed publish) is rebuilt by the reader that finds it missing. Inside an atomic
block a reader gets a fresh aggregation and stores nothing (the rows may still roll back).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.cache import cache
from django.db import transaction
from django.db.models import IntegerField, Subquery, Sum
from django.utils import timezone

from .book_depth import BookDepth, BookLevel, book_depth_aggregate
from .cache_generation import caching_allowed
from .models import Instrument, InstrumentBook, Trade

log = logging.getLogger(__name__)

DEPTH_LEVELS = 500  # the deepest GET .../book may ask for
LAST_TRADES = 50
SNAPSHOT_TTL = 60  # seconds
TAPE_BUCKET_SECONDS = 10


@dataclass(frozen=True)
class SnapshotTrade:
    price: Decimal
    quantity: int
    hardware: str
    aggressor_side: str
    match_sequence: int
    executed_at: dt.datetime


@dataclass(frozen=True)
class MarketSnapshot:
    instrument_id: int
    bids: list[BookLevel]  # best first, at most DEPTH_LEVELS
    asks: list[BookLevel]
    last_price: Decimal | None
    last_trade_at: dt.datetime | None
    volume_24h: int
    trades: list[SnapshotTrade] = field(default_factory=list)  # newest first, at most LAST_TRADES
    built_at: dt.datetime | None = None

    @property
    def best_bid(self) -> Decimal | None:
        return self.bids[0].price if self.bids else None

    @property
    def best_ask(self) -> Decimal | None:
        return self.asks[0].price if self.asks else None

    def depth(self, levels: int) -> BookDepth:
        return BookDepth(bids=self.bids[:levels], asks=self.asks[:levels])


def _key(instrument_id: int) -> str:
    return f"market-snapshot:{instrument_id}"


def snapshot_build(*, instrument_id: int) -> MarketSnapshot:
    """A fresh aggregation of the instrument's resting orders and trades."""
    now = timezone.now()
    depth = book_depth_aggregate(instrument=Instrument(pk=instrument_id), depth=DEPTH_LEVELS)
    trades = Trade.objects.filter(instrument_id=instrument_id)
    volume = (
        trades.filter(executed_at__gte=now - dt.timedelta(hours=24))
        .values("instrument_id")
        .annotate(v=Sum("quantity"))
        .values("v")
    )
    # One query for the book row and the 24-hour volume (a book read is pinned in queries).
    book_row = (
        InstrumentBook.objects.only("last_price", "last_trade_at")
        .annotate(volume_24h=Subquery(volume, output_field=IntegerField()))
        .get(pk=instrument_id)
    )
    last = [
        SnapshotTrade(*row)
        for row in trades.order_by("-match_sequence").values_list(
            "price", "quantity", "hardware__code", "aggressor_side", "match_sequence", "executed_at"
        )[:LAST_TRADES]
    ]
    return MarketSnapshot(
        instrument_id=instrument_id,
        bids=depth.bids,
        asks=depth.asks,
        last_price=book_row.last_price,
        last_trade_at=book_row.last_trade_at,
        volume_24h=int(book_row.volume_24h or 0),
        trades=last,
        built_at=now,
    )


class MarketTape:
    """The trade side of a snapshot kept in memory by the matcher beside its resident book: the
    last LAST_TRADES trades and the volume of the past 24 hours, so a publication after a batch
    needs no query over the trades table. Loaded from the table once (two indexed queries),
    then fed with each committed batch's trades.

    The volume is kept in TAPE_BUCKET_SECONDS buckets (a day of 10-second buckets per busy
    instrument, not one entry per batch); a bucket leaves the window when its newest trade is
    24 hours old, so the figure may include up to one bucket of older trades, well inside the
    SNAPSHOT_TTL a published snapshot may be old anyway."""

    def __init__(self, *, instrument_id: int) -> None:
        now = timezone.now()
        trades = Trade.objects.filter(instrument_id=instrument_id)
        self.trades: deque[SnapshotTrade] = deque(
            reversed(
                [
                    SnapshotTrade(*row)
                    for row in trades.order_by("-match_sequence").values_list(
                        "price", "quantity", "hardware__code", "aggressor_side", "match_sequence", "executed_at"
                    )[:LAST_TRADES]
                ]
            ),
            maxlen=LAST_TRADES,
        )  # oldest first
        # The match sequence of the newest trade the tape holds (InstrumentBook.last_trade_sequence
        # when it is current).
        self.last_sequence = self.trades[-1].match_sequence if self.trades else 0
        # [bucket number, newest executed_at, quantity], oldest first.
        self.buckets: deque[list] = deque()
        self.volume = 0
        moments = (
            trades.filter(executed_at__gte=now - dt.timedelta(hours=24))
            .values("executed_at")
            .annotate(q=Sum("quantity"))
            .order_by("executed_at")
            .values_list("executed_at", "q")
        )
        for at, q in moments:
            self._add(at, int(q))

    def _add(self, at: dt.datetime, quantity: int) -> None:
        bucket = int(at.timestamp()) // TAPE_BUCKET_SECONDS
        if self.buckets and self.buckets[-1][0] == bucket:
            last = self.buckets[-1]
            last[1], last[2] = max(last[1], at), last[2] + quantity
        else:
            self.buckets.append([bucket, at, quantity])
        self.volume += quantity

    def add(self, trades: list[SnapshotTrade]) -> None:
        """Trades of one committed batch, in match sequence order (they share one executed_at)."""
        if trades:
            self.trades.extend(trades)
            self.last_sequence = trades[-1].match_sequence
            self._add(trades[0].executed_at, sum(t.quantity for t in trades))

    def volume_24h(self, now: dt.datetime) -> int:
        cutoff = now - dt.timedelta(hours=24)
        while self.buckets and self.buckets[0][1] < cutoff:
            self.volume -= self.buckets.popleft()[2]
        return self.volume


def snapshot_publish_if_current(
    *, instrument_id: int, state: tuple[int, int], build: Callable[[], MarketSnapshot]
) -> MarketSnapshot:
    """Store `build()` (a snapshot the caller made in memory) if the book row is still at
    `state` (version, last_matched_sequence), else a fresh aggregation. Holding the lock, as
    snapshot_publish does: a writer that moved the book since publishes after us."""
    with transaction.atomic():
        now_state = (
            InstrumentBook.objects.select_for_update()
            .filter(pk=instrument_id)
            .values_list("version", "last_matched_sequence")
            .first()
        )
        snap = build() if now_state == state else snapshot_build(instrument_id=instrument_id)
        cache.set(_key(instrument_id), snap, SNAPSHOT_TTL)
    return snap


def snapshot_publish(*, instrument_id: int) -> MarketSnapshot:
    """Build and store the snapshot, holding the InstrumentBook lock (see the module doc)."""
    with transaction.atomic():
        list(InstrumentBook.objects.select_for_update().filter(pk=instrument_id).values_list("pk"))
        snap = snapshot_build(instrument_id=instrument_id)
        cache.set(_key(instrument_id), snap, SNAPSHOT_TTL)
        reference_price_store(instrument_id=instrument_id, price=snap.last_price)
    return snap


def snapshot_drop(*, instrument_id: int) -> None:
    """Forget a snapshot that may be stale (its next reader rebuilds it). Never raises."""
    try:
        cache.delete(_key(instrument_id))
    except Exception:
        log.exception("could not drop the market snapshot of instrument %s", instrument_id)


def snapshot_publish_on_commit(*, instrument_id: int) -> None:
    """Publish after the current transaction commits (call it inside the book's writer)."""

    def publish() -> None:
        try:
            snapshot_publish(instrument_id=instrument_id)
        except Exception:
            # A stale snapshot would be served as current; a missing one is rebuilt by readers.
            log.exception("market snapshot of instrument %s not published; dropping it", instrument_id)
            snapshot_drop(instrument_id=instrument_id)

    transaction.on_commit(publish)


def snapshot_get(*, instrument_id: int) -> MarketSnapshot:
    """The instrument's published snapshot, rebuilt if missing."""
    return snapshot_get_many(instrument_ids=[instrument_id])[instrument_id]


def snapshot_get_many(*, instrument_ids: list[int]) -> dict[int, MarketSnapshot]:
    if not caching_allowed():
        return {i: snapshot_build(instrument_id=i) for i in instrument_ids}
    try:
        found = cache.get_many([_key(i) for i in instrument_ids])
    except Exception:
        log.exception("could not read market snapshots; aggregating")
        return {i: snapshot_build(instrument_id=i) for i in instrument_ids}
    out = {}
    for i in instrument_ids:
        snap = found.get(_key(i))
        out[i] = snap if snap is not None else snapshot_publish(instrument_id=i)
    return out


# --- the reference price of price protection ------------------------------------------------
# Order placement reads it on every order, so it is one small cache entry of its own (not the
# whole snapshot) and outlives the snapshot's minute: a quiet book keeps its protection for
# REFERENCE_TTL. It is written with every snapshot publication (i.e. after every committed
# change of the book), never built by the reader: placement adds no database query. A missing
# entry (never traded, Redis flushed) means no band until the next publication of the book.
REFERENCE_TTL = 9 * 24 * 3600  # longer than any instrument trades (today + INSTRUMENT_DAYS_AHEAD)


def _reference_key(instrument_id: int) -> str:
    return f"reference-price:{instrument_id}"


def reference_price_store(*, instrument_id: int, price: Decimal | None) -> None:
    if price is None:
        cache.delete(_reference_key(instrument_id))
    else:
        cache.set(_reference_key(instrument_id), price, REFERENCE_TTL)


def reference_price_get(*, instrument_id: int) -> Decimal | None:
    """The book's last trade price as last published, or None; one cache read, no query."""
    try:
        return cache.get(_reference_key(instrument_id))
    except Exception:
        log.exception("could not read the reference price of instrument %s; no price band", instrument_id)
        return None
