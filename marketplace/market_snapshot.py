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
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.cache import cache
from django.db import transaction
from django.db.models import IntegerField, Subquery, Sum
from django.utils import timezone

from streams.publish import stream_market_publish

from .book_depth import BookDepth, BookLevel, book_depth_aggregate
from .cache_generation import caching_allowed
from .models import Instrument, InstrumentBook, Trade

log = logging.getLogger(__name__)

DEPTH_LEVELS = 500  # the deepest GET .../book may ask for
LAST_TRADES = 50
SNAPSHOT_TTL = 60  # seconds


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


def snapshot_publish(*, instrument_id: int) -> MarketSnapshot:
    """Build and store the snapshot, holding the InstrumentBook lock (see the module doc)."""
    with transaction.atomic():
        list(InstrumentBook.objects.select_for_update().filter(pk=instrument_id).values_list("pk"))
        snap = snapshot_build(instrument_id=instrument_id)
        cache.set(_key(instrument_id), snap, SNAPSHOT_TTL)
        # The live feeds' messages, numbered under the same lock; sent after this commits.
        stream_market_publish(snapshot=snap)
    return snap


def snapshot_publish_on_commit(*, instrument_id: int) -> None:
    """Publish after the current transaction commits (call it inside the book's writer)."""

    def publish() -> None:
        try:
            snapshot_publish(instrument_id=instrument_id)
        except Exception:
            # A stale snapshot would be served as current; a missing one is rebuilt by readers.
            log.exception("market snapshot of instrument %s not published; dropping it", instrument_id)
            try:
                cache.delete(_key(instrument_id))
            except Exception:
                log.exception("could not drop the market snapshot of instrument %s", instrument_id)

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
