"""The continuous matcher and sequencer: lock an instrument, apply its commands, write in bulk.

Placement only records orders (and a buy's escrow) and takes no instrument-wide lock; a cancel
only records a command on the order (marketplace.services.order_cancel). The matcher, holding
the instrument's InstrumentBook row lock, applies what was committed since its last batch and
gives each command the next match sequence number as it applies it:

1. the cancel commands (in the order they were requested), then
2. the new orders (in the order of their ids),

each up to settings.MATCH_BATCH_SIZE per batch. Price-time priority, replay (pricing.replay)
and determinism are defined on that sequence. One batch is one transaction: trades, order
changes, escrow releases and top of book are bulk writes, and a crash mid-batch leaves nothing
behind. Any number of workers may call instrument_match at once: the lock serializes them.

A resident book: each worker process keeps every instrument's book (engine.OrderBook plus the
order rows) in memory between batches and reloads it from the orders table only when the book
row's `version` (bumped by every change made outside the matcher) or `last_matched_sequence`
(moved by another worker) differs from what this process last wrote. Matching is routed to one
worker per instrument (pricing.dispatch), so the book normally stays warm.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from marketplace.book_depth import BookLevel
from marketplace.market_snapshot import (
    DEPTH_LEVELS,
    MarketSnapshot,
    MarketTape,
    SnapshotTrade,
    snapshot_drop,
    snapshot_publish_if_current,
)
from marketplace.models import (
    LIVE_STATUSES,
    Instrument,
    InstrumentBook,
    Order,
    OrderStatus,
    check_transition,
)
from metering import money
from metering.ledger import ledger_account_ids, ledger_post
from metering.models import LedgerAccount, LedgerTransaction

from . import book_rows, engine
from .models import CallAuction

log = logging.getLogger(__name__)


def buy_escrow_open(row: dict, *, filled: int) -> Decimal:
    """What a live buy order (a book row) holds in escrow once `filled` tokens filled."""
    return money.order_escrow_open(
        quantity=row["quantity"], filled=filled, price=row["price"],
        max_fee_bps=max(row["maker_fee_bps"], row["taker_fee_bps"]),
    )  # fmt: skip


def buy_fill_escrow(row: dict, *, filled_before: int, quantity: int, price: Decimal, buyer_fee_bps: int) -> money.FillEscrow:
    """Split a fill of buy order `row` into the contract's escrow and the release.

    A shortfall (the contract holds less than its full value plus fee: a cent from rounding the
    reservation once, or an order reserved under an older rule) is not an error: settlement
    never charges a contract more than it holds, and the book carries on; it is logged.
    """
    split = money.fill_escrow(
        order_quantity=row["quantity"], limit=row["price"], max_fee_bps=max(row["maker_fee_bps"], row["taker_fee_bps"]),
        filled_before=filled_before, quantity=quantity, price=price, buyer_fee_bps=buyer_fee_bps,
    )  # fmt: skip
    if split.shortfall > money.CENT:
        log.warning(
            "escrow shortfall: buy order %s fill of %s tokens holds %s, short by %s",
            row["id"], quantity, split.contract, split.shortfall,
        )  # fmt: skip
    return split


CANCEL_REASON = "cancelled_by_user"


@dataclass
class MatchReport:
    instrument_id: int
    processed: int = 0
    trades: int = 0
    batches: int = 0
    more_pending: bool = False


@dataclass
class ResidentBook:
    """One instrument's book as this process last wrote it."""

    version: int
    sequence: int
    book: engine.OrderBook
    rows: dict[int, dict]  # resting order rows by id (book_rows.ORDER_FIELDS)
    # Last trades and 24-hour volume for the market snapshot; read from the trades table at the
    # first publication after a load, then fed from each batch (None: read it again).
    tape: MarketTape | None = None


# instrument id -> its resident book. Only a committed batch puts a book back (on_commit), so a
# failed or rolled-back batch never leaves a book that differs from the database.
resident_books: dict[int, ResidentBook] = {}
# Loads and reuses of resident books in this process (tests and the benchmark read them).
resident_stats: Counter[str] = Counter()


def resident_books_clear() -> None:
    resident_books.clear()


def instrument_match(*, instrument_id: int, max_batches: int = 50, now: dt.datetime | None = None) -> MatchReport:
    """Apply everything pending on one instrument, one transaction per batch.

    `now` is the matcher's clock (trade times, the end-of-delivery check): the exchange's own
    time unless a caller replays a past day (seed_demo's simulated history)."""
    report = MatchReport(instrument_id)
    for _ in range(max_batches):
        with transaction.atomic():
            book_row = InstrumentBook.objects.select_for_update().get(pk=instrument_id)
            processed, trades = match_locked(book_row=book_row, now=now)
        if processed == 0:
            return report
        report.processed += processed
        report.trades += trades
        report.batches += 1
        if processed < settings.MATCH_BATCH_SIZE:
            # Neither the cancels nor the orders filled a batch: everything committed before this
            # batch read them is applied, and whatever committed since queued its own task
            # (dispatch.enqueue_match after commit; the sweep if that was lost). Looking again
            # would cost a locked, empty transaction per task.
            return report
    report.more_pending = instrument_has_commands(instrument_id=instrument_id)
    return report


def instrument_has_commands(*, instrument_id: int) -> bool:
    """Whether an order or a cancel of the instrument waits for the matcher."""
    return Order.objects.filter(
        Q(pending_match=True) | Q(cancel_requested_at__isnull=False, status__in=LIVE_STATUSES),
        instrument_id=instrument_id,
    ).exists()


def _resident_book(*, book_row: InstrumentBook, hw: dict[int, str]) -> ResidentBook:
    resident = resident_books.pop(book_row.instrument_id, None)
    if (
        resident is not None
        and resident.version == book_row.version
        and resident.sequence == book_row.last_matched_sequence
    ):
        resident_stats["reused"] += 1
        return resident
    resident_stats["loaded"] += 1
    rows = book_rows.resting_rows(instrument_id=book_row.instrument_id)
    book = engine.OrderBook(book_rows.book_order(r, hw) for r in rows)
    # The trade tape survives a change that made no trade (a cancel, halt or expiry outside the
    # matcher); a trade written elsewhere (another worker, the auction) moved the trade sequence.
    tape = resident.tape if resident is not None else None
    if tape is not None and tape.last_sequence != book_row.last_trade_sequence:
        tape = None
    return ResidentBook(book_row.version, book_row.last_matched_sequence, book, {r["id"]: r for r in rows}, tape)


def match_locked(
    *, book_row: InstrumentBook, batch_size: int | None = None, now: dt.datetime | None = None
) -> tuple[int, int]:
    """Run one batch. The caller holds SELECT FOR UPDATE on `book_row` inside a transaction.

    Returns (commands applied, trades written). Cancels are applied while an instrument is
    halted or collecting its call auction; new orders only while it trades continuously.
    """
    # tier and region come in the same query: the statement memo names the book's symbol.
    instrument = Instrument.objects.select_related("tier", "region").annotate(
        in_call_auction=Exists(
            CallAuction.objects.filter(instrument=OuterRef("pk"), status=CallAuction.Status.COLLECTING)
        )
    ).get(pk=book_row.instrument_id)
    now = now or timezone.now()
    if instrument.status not in (Instrument.Status.OPEN, Instrument.Status.HALTED) or now >= instrument.delivery_end:
        return 0, 0
    batch_size = batch_size or settings.MATCH_BATCH_SIZE
    live = Order.objects.filter(instrument_id=instrument.id, status__in=LIVE_STATUSES)
    cancels = book_rows.order_rows(
        live.filter(cancel_requested_at__isnull=False).order_by("cancel_requested_at", "id")[:batch_size]
    )
    pending: list[dict] = []
    if instrument.status == Instrument.Status.OPEN and not instrument.in_call_auction:
        pending = book_rows.order_rows(
            Order.objects.filter(instrument_id=instrument.id, pending_match=True, cancel_requested_at__isnull=True)
            .order_by("id")[:batch_size]
        )
    if not cancels and not pending:
        return 0, 0
    hw = book_rows.hardware_codes()
    resident = _resident_book(book_row=book_row, hw=hw)
    seq = book_row.last_matched_sequence
    release: dict[int, Decimal] = defaultdict(Decimal)  # buyer Account id -> escrow to release
    updates: list[book_rows.OrderUpdate] = []

    for row in cancels:
        seq += 1
        if row["pending_match"]:
            # Cancelled before the matcher reached it: sequenced and cancelled in one step, it
            # never enters the engine (replay skips an order whose cancel_sequence == sequence).
            order_seq = seq
        else:
            order_seq = row["sequence"]
            if resident.book.cancel(row["id"]) is None:
                # Never expected: the resident book is the database's book. Fail the batch
                # (it rolls back; the next run reloads the book from the database).
                resident_books.pop(book_row.instrument_id, None)
                raise RuntimeError(f"order {row['id']} rests in the database but not in the resident book")
            resident.rows.pop(row["id"], None)
        check_transition(row["status"], OrderStatus.CANCELLED)
        updates.append((row["id"], row["filled_quantity"], OrderStatus.CANCELLED, CANCEL_REASON, False, order_seq, seq))
        if row["side"] == engine.BUY:
            release[row["account_id"]] += buy_escrow_open(row, filled=row["filled_quantity"])

    results = []
    for row in pending:
        seq += 1
        row["sequence"] = seq
        results.append(resident.book.submit(book_rows.book_order(row, hw)))

    trades = _write_batch(
        instrument=instrument, book_row=book_row, resident=resident, pending=pending, results=results,
        updates=updates, release=release, last_sequence=seq, hw=hw, now=now,
    )  # fmt: skip
    resident.sequence = seq
    instrument_id = instrument.id
    transaction.on_commit(lambda: resident_books.__setitem__(instrument_id, resident))
    _snapshot_publish_on_commit(resident=resident, book_row=book_row, trades=trades, hw=hw, now=now)
    return len(cancels) + len(pending), len(trades)


def _snapshot_publish_on_commit(
    *, resident: ResidentBook, book_row: InstrumentBook, trades: list[tuple], hw: dict[int, str], now: dt.datetime
) -> None:
    """After commit, publish the market snapshot from the resident book and tape instead of
    aggregating the orders table (marketplace.market_snapshot.snapshot_publish_if_current falls
    back to the aggregation if another writer moved the book meanwhile)."""
    instrument_id = book_row.instrument_id
    state = (book_row.version, book_row.last_matched_sequence)
    last_price, last_trade_at = book_row.last_price, book_row.last_trade_at
    cols = book_rows.TRADE_COLUMNS
    i_price, i_qty, i_hw, i_side, i_seq = (
        cols.index(c) for c in ("price", "quantity", "hardware_id", "aggressor_side", "match_sequence")
    )
    tape_trades = [SnapshotTrade(t[i_price], t[i_qty], hw[t[i_hw]], t[i_side], t[i_seq], now) for t in trades]

    def build() -> MarketSnapshot:
        if resident.tape is None:
            resident.tape = MarketTape(instrument_id=instrument_id)  # committed: includes this batch
        else:
            resident.tape.add(tape_trades)
        built_at = timezone.now()
        bids, asks = resident.book.depth(DEPTH_LEVELS)
        return MarketSnapshot(
            instrument_id=instrument_id,
            bids=[BookLevel(lv.price, lv.quantity, lv.orders, lv.by_hardware) for lv in bids],
            asks=[BookLevel(lv.price, lv.quantity, lv.orders, lv.by_hardware) for lv in asks],
            last_price=last_price,
            last_trade_at=last_trade_at,
            volume_24h=resident.tape.volume_24h(built_at),
            trades=list(reversed(resident.tape.trades)),
            built_at=built_at,
        )

    def publish() -> None:
        built = False

        def build_once() -> MarketSnapshot:
            nonlocal built
            snap = build()
            built = True
            return snap

        try:
            snapshot_publish_if_current(instrument_id=instrument_id, state=state, build=build_once)
        except Exception:
            built = False
            # A stale snapshot would be served as current; a missing one is rebuilt by readers.
            log.exception("market snapshot of instrument %s not published; dropping it", instrument_id)
            snapshot_drop(instrument_id=instrument_id)
        if not built:
            resident.tape = None  # it may have missed this batch: read it again next time

    transaction.on_commit(publish)


def _write_batch(
    *,
    instrument: Instrument,
    book_row: InstrumentBook,
    resident: ResidentBook,
    pending: list[dict],
    results: list[engine.Result],
    updates: list[book_rows.OrderUpdate],
    release: dict[int, Decimal],
    last_sequence: int,
    hw: dict[int, str],
    now: dt.datetime,
) -> list[tuple]:
    """Write the batch (orders, trades, escrow releases, book row); returns the trade rows."""
    hw_ids = {code: pk for pk, code in hw.items()}
    rows_by_id = resident.rows
    pending_by_id = {r["id"]: r for r in pending}
    trades: list[tuple] = []  # book_rows.TRADE_COLUMNS
    filled_by: dict[int, int] = defaultdict(int)
    final: dict[int, tuple[str, str]] = {}  # order id -> (status, reason) for takers
    trade_seq = book_row.last_trade_sequence

    def row_of(order_id: int) -> dict:
        return pending_by_id.get(order_id) or rows_by_id[order_id]

    for res in results:
        taker = res.order
        for f in res.fills:
            trade_seq += 1
            buy_row = row_of(f.buy_id)
            buyer_bps, seller_bps, tier_terms = book_rows.trade_terms(
                buy_row=buy_row, sell_row=row_of(f.sell_id), aggressor=f.aggressor
            )
            split = buy_fill_escrow(
                buy_row, filled_before=buy_row["filled_quantity"] + filled_by[f.buy_id], quantity=f.quantity,
                price=f.price, buyer_fee_bps=buyer_bps,
            )  # fmt: skip
            release[f.buyer_account_id] += split.release
            filled_by[f.maker_id] += f.quantity
            filled_by[f.taker_id] += f.quantity
            trades.append(
                (f.buy_id, f.sell_id, f.buyer_account_id, f.seller_account_id, hw_ids[f.hardware], f.quantity,
                 f.price, f.aggressor, trade_seq, buyer_bps, seller_bps, split.contract, *tier_terms)
            )  # fmt: skip
        if res.outcome in (engine.CANCELLED, engine.REJECTED):
            final[taker.id] = (
                OrderStatus.REJECTED if res.outcome == engine.REJECTED else OrderStatus.CANCELLED,
                res.reason,
            )
            if taker.side == engine.BUY and taker.remaining:
                row = pending_by_id[taker.id]
                release[taker.account_id] += buy_escrow_open(row, filled=row["filled_quantity"] + filled_by[taker.id])

    # Every pending order leaves pending with its sequence; filled orders change quantity and
    # status. The resident rows follow, so the next batch needs no read.
    touched = [r.order.id for r in results] + [oid for oid in filled_by if oid not in pending_by_id]
    for order_id in touched:
        row = row_of(order_id)
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
        updates.append((order_id, filled, status, reason, False, row["sequence"], None))
        row.update(filled_quantity=filled, status=status, pending_match=False)
        if status in LIVE_STATUSES:
            rows_by_id[order_id] = row
        else:
            rows_by_id.pop(order_id, None)
    book_rows.orders_update(updates, now)
    book_rows.trades_insert(instrument_id=instrument.id, trades=trades, now=now)
    escrow_release_post(
        instrument_id=instrument.id, batch_key=str(last_sequence), release=release, symbol=instrument.symbol
    )

    book_row.last_matched_sequence = last_sequence
    book_row.last_trade_sequence = trade_seq
    book_row.batches += 1
    # The resident book is the whole book, so top of book needs no query.
    book_row.best_bid, book_row.best_ask = resident.book.best_bid(), resident.book.best_ask()
    if trades:
        book_row.last_price = trades[-1][book_rows.TRADE_COLUMNS.index("price")]
        book_row.last_trade_at = now
    book_row.save()
    return trades


def escrow_release_post(
    *, instrument_id: int, batch_key: str, release: dict[int, Decimal], symbol: str | None = None
) -> None:
    """Give buyers back, in one ledger transaction, what their fills and cancels no longer hold
    in escrow. The caller holds the instrument's book row lock.

    Every amount is >= 0 by construction (metering.money.fill_escrow never takes more than an
    order holds); one that is not is logged and left in escrow, never posted and never a
    reason to stop the book (a stuck book could not even cancel)."""
    for account_id, amount in release.items():
        if amount < 0:
            log.error("escrow release of %s for account %s on instrument %s skipped", amount, account_id, instrument_id)
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
        # Words a trader knows: the book's symbol, and why money came back.
        memo=(
            f"escrow back to available after matching on {symbol or f'instrument {instrument_id}'}: "
            "price improvement, fees below the reserved maximum, and unfilled remainders"
        ),
    )
