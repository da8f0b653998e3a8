"""Order rows in and out of PostgreSQL, shared by the continuous matcher and the call auction.

Reads use a plain cursor (the ORM's per-row converters were most of the cost of loading a deep
book); writes send one array literal per column (INSERT ... SELECT FROM unnest(), UPDATE ...
FROM unnest()), which the driver passes as one parameter instead of adapting item by item.
SQLite (the embedded default) takes the ORM path. No function here takes a lock: the caller
holds the instrument's InstrumentBook row lock, as each docstring says.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from django.db import connection
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast

from marketplace.market_snapshot import snapshot_publish_on_commit
from marketplace.models import LIVE_STATUSES, Hardware, Instrument, InstrumentBook, Order, Trade

from . import engine

ORDER_FIELDS = (
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
    "pending_match",
    # Terms frozen at placement (marketplace.models.Order): fees, the tier's share and weights.
    "maker_fee_bps",
    "taker_fee_bps",
    "unused_capacity_share",
    "output_token_weight",
    "cached_input_weight",
)

# Columns of a trade row written by the matcher and the auction (besides instrument_id and
# executed_at), in this order.
TRADE_COLUMNS = (
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
_TRADE_PG_TYPES = ("bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "numeric", "text", "bigint",
                   "integer", "integer", "numeric", "numeric", "numeric", "numeric")  # fmt: skip


def hardware_codes() -> dict[int, str]:
    return dict(Hardware.objects.values_list("id", "code"))


def book_order(row: dict, hw: dict[int, str]) -> engine.BookOrder:
    """The engine's view of an order row (its remaining quantity, at its match sequence)."""
    return engine.BookOrder(
        id=row["id"],
        seq=row["sequence"],
        account_id=row["account_id"],
        side=row["side"],
        price=row["price"],
        remaining=row["quantity"] - row["filled_quantity"],
        tif=row["time_in_force"],
        hardware=hw[row["hardware_id"]] if row["hardware_id"] else None,
        allowed=allowed_codes(row, hw),
    )


def allowed_codes(row: dict, hw: dict[int, str]) -> frozenset[str]:
    """The current codes of a buy's frozen hardware ids (the engine matches by code). A
    deleted id keeps a code no sell has, so the set never widens to "any"."""
    ids = row["allowed_hardware_ids"]
    return frozenset(hw.get(i, f"#{i}") for i in ids) if ids else _ANY_HARDWARE


def trade_terms(*, buy_row: dict, sell_row: dict, aggressor: str) -> tuple[int, int, tuple]:
    """(buyer bps, seller bps, tier terms) a fill freezes on its trade: each side pays its own
    order's frozen maker or taker rate; the contract takes the tier terms (unused-capacity
    share, output and cached-input weights) of the resting (maker) order, as it takes its price."""
    buyer_is_maker = aggressor == engine.SELL
    buyer_bps = buy_row["maker_fee_bps"] if buyer_is_maker else buy_row["taker_fee_bps"]
    seller_bps = sell_row["taker_fee_bps"] if buyer_is_maker else sell_row["maker_fee_bps"]
    maker = buy_row if buyer_is_maker else sell_row
    return buyer_bps, seller_bps, (
        maker["unused_capacity_share"], maker["output_token_weight"], maker["cached_input_weight"]
    )


_ANY_HARDWARE: frozenset[str] = frozenset()


def order_rows(qs: QuerySet[Order]) -> list[dict]:
    """Rows of ORDER_FIELDS. On PostgreSQL they are read with a plain cursor and
    allowed_hardware_ids is decoded once per distinct value (nearly all are [])."""
    if connection.vendor != "postgresql":
        return list(qs.values(*ORDER_FIELDS))
    fields = [f for f in ORDER_FIELDS if f != "allowed_hardware_ids"]
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


def resting_rows(*, instrument_id: int) -> list[dict]:
    """Every resting order of the instrument (the whole book a resident book holds)."""
    return order_rows(Order.objects.filter(instrument_id=instrument_id, pending_match=False, status__in=LIVE_STATUSES))


def pg_array(values: list) -> str:
    """A PostgreSQL array literal of numbers, plain words or None (NULL). Words must not need
    escaping. Columns are homogeneous, so the kind is read from the first value that is not
    None and the whole column is joined in one pass (this runs for every column of every batch)."""
    first = next((v for v in values if v is not None), None)
    if isinstance(first, str):
        if any('"' in w or "\\" in w for w in set(values) if w is not None):
            raise ValueError(f"{values!r} need escaping in an array literal")
        return "{" + ",".join(["NULL" if v is None else f'"{v}"' for v in values]) + "}"
    if first is None or None in values:
        return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"
    return "{" + ",".join(map(str, values)) + "}"


def trades_insert(*, instrument_id: int, trades: list[tuple], now: dt.datetime) -> None:
    """Insert trade rows of TRADE_COLUMNS in one statement."""
    if not trades:
        return
    columns = {f.column for f in Trade._meta.concrete_fields} - {"id"}
    if connection.vendor == "postgresql" and columns == {*TRADE_COLUMNS, "instrument_id", "executed_at"}:
        # Falls back to the ORM below if the Trade model gains a column this statement lacks.
        names = ", ".join(TRADE_COLUMNS)
        arrays = ", ".join(f"%s::{t}[]" for t in _TRADE_PG_TYPES)
        with connection.cursor() as cur:
            cur.execute(
                f"INSERT INTO marketplace_trade (instrument_id, executed_at, {names}) "
                f"SELECT %s, %s, {names} FROM unnest({arrays}) AS v({names})",
                [instrument_id, now, *(pg_array([t[i] for t in trades]) for i in range(len(TRADE_COLUMNS)))],
            )
        return
    Trade.objects.bulk_create(
        [
            Trade(instrument_id=instrument_id, executed_at=now, **dict(zip(TRADE_COLUMNS, t, strict=True)))
            for t in trades
        ],
        batch_size=2000,
    )


# An order change written by the matcher or the auction: (id, filled, status, reason, pending,
# sequence (None while it stays pending), cancel_sequence or None to keep).
OrderUpdate = tuple[int, int, str, str, bool, int | None, int | None]


def orders_update(updates: list[OrderUpdate], now: dt.datetime) -> None:
    """Write order changes in one statement, in id order (one lock order for every writer of
    orders, and neighbouring rows together on the heap)."""
    if not updates:
        return
    updates = sorted(updates, key=lambda u: u[0])
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE marketplace_order AS o SET filled_quantity = v.filled, status = v.status, "
                "status_reason = v.reason, pending_match = v.pending, updated_at = %s, "
                "sequence = v.seq, cancel_sequence = COALESCE(v.cseq, o.cancel_sequence) "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::boolean[], %s::bigint[], "
                "%s::bigint[]) AS v(id, filled, status, reason, pending, seq, cseq) WHERE o.id = v.id",
                [
                    now,
                    *(pg_array([u[i] for u in updates]) for i in range(4)),
                    pg_array(["true" if u[4] else "false" for u in updates]),
                    pg_array([u[5] for u in updates]),
                    pg_array([u[6] for u in updates]),
                ],
            )
        return
    objs = [
        Order(
            id=oid, filled_quantity=filled, status=status, status_reason=reason, pending_match=pending,
            updated_at=now, sequence=seq, cancel_sequence=cseq,
        )
        for oid, filled, status, reason, pending, seq, cseq in updates
    ]  # fmt: skip
    fields = ["filled_quantity", "status", "status_reason", "pending_match", "updated_at", "sequence"]
    Order.objects.bulk_update(objs, fields, batch_size=500)
    cancelled = [o for o in objs if o.cancel_sequence is not None]
    if cancelled:
        Order.objects.bulk_update(cancelled, ["cancel_sequence"], batch_size=500)


def book_top_refresh(*, book_row: InstrumentBook) -> None:
    """Recompute best bid/ask from the resting orders (caller holds the book row lock)."""
    from django.db.models import Max, Min, Q

    top = Order.objects.filter(
        instrument_id=book_row.instrument_id, pending_match=False, status__in=LIVE_STATUSES
    ).aggregate(bid=Max("price", filter=Q(side=engine.BUY)), ask=Min("price", filter=Q(side=engine.SELL)))
    book_row.best_bid, book_row.best_ask = top["bid"], top["ask"]
    book_row.save(update_fields=["best_bid", "best_ask"])
    snapshot_publish_on_commit(instrument_id=book_row.instrument_id)


def auction_orders(*, instrument_id: int, hw: dict[int, str]) -> tuple[list[dict], list]:
    """The rows of an instrument's live orders in arrival order, and the auction's view of those
    that take part. Resting orders come first, by match sequence; pending ones (collected during
    the call phase, not yet sequenced) follow by id, the order they arrived in."""
    from .auction import AuctionOrder

    live = Order.objects.filter(instrument_id=instrument_id, status__in=LIVE_STATUSES)
    resting = sorted(order_rows(live.filter(pending_match=False)), key=lambda r: r["sequence"])
    pending = sorted(order_rows(live.filter(pending_match=True)), key=lambda r: r["id"])
    rows = resting + pending
    # Fill-or-kill and post-only only make sense against a continuous book: a pending one skips
    # the auction and is processed by continuous matching when it opens. So does a pending
    # order whose cancel is already requested.
    participants = [
        r
        for r in rows
        if not (r["pending_match"] and r["time_in_force"] in (engine.FOK, engine.POST_ONLY))
    ]
    orders = [
        AuctionOrder(
            id=r["id"],
            seq=i,
            account_id=r["account_id"],
            side=r["side"],
            price=r["price"],
            quantity=r["quantity"] - r["filled_quantity"],
            hardware=hw[r["hardware_id"]] if r["hardware_id"] else None,
            allowed=allowed_codes(r, hw),
        )
        for i, r in enumerate(participants, start=1)
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
