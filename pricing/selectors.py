"""Reads of the pricing engine: market data, candles, energy floors, quotes, the index, auctions.

Aggregations run in the database (GROUP BY a truncated time over the (instrument, executed_at)
index); Python only fills the gaps between buckets and picks open/close prices by sequence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Max, Min, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Trunc
from django.utils import timezone

from marketplace.catalog_cache import catalog_hardware_ids
from marketplace.errors import NotFound, ServiceError
from marketplace.models import LIVE_STATUSES, Hardware, HardwareThroughput, Instrument, Order, Region, Tier, Trade

from .floor import energy_cost_per_mtok
from .models import CallAuction, IndexValue

PRICE_PLACES = Decimal("0.0001")
UTC = dt.UTC


def notional_expr() -> ExpressionWrapper:
    return ExpressionWrapper(F("price") * F("quantity"), output_field=DecimalField(max_digits=38, decimal_places=4))


def _price(value) -> Decimal | None:
    """A price column from an aggregate (SQLite returns MIN/MAX of a decimal as a float)."""
    if value is None:
        return None
    return Decimal(str(value)).quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN)


def vwap(notional: Decimal | None, volume: int | None) -> Decimal | None:
    """Volume-weighted average price, rounded half-even to 4 places (the index's rounding)."""
    if not volume:
        return None
    return (Decimal(notional) / Decimal(volume)).quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN)


# --- candles -----------------------------------------------------------------------------------

INTERVALS: dict[str, tuple[str, dt.timedelta]] = {
    "1m": ("minute", dt.timedelta(minutes=1)),
    "1h": ("hour", dt.timedelta(hours=1)),
    "1d": ("day", dt.timedelta(days=1)),
}
DEFAULT_CANDLES = 500
MAX_CANDLES = 5000


@dataclass(frozen=True, slots=True)
class Candle:
    start: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    trades: int
    vwap: Decimal | None


def _floor_time(t: dt.datetime, interval: str) -> dt.datetime:
    t = t.astimezone(UTC)
    if interval == "1m":
        return t.replace(second=0, microsecond=0)
    if interval == "1h":
        return t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def instrument_candles(
    *,
    instrument: Instrument,
    interval: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> list[Candle]:
    """OHLCV candles of [start, end), oldest first.

    Buckets are UTC-aligned. A bucket without trades after the first trade is carried forward:
    open = high = low = close = the previous close, volume 0, vwap null. Buckets before the
    instrument's first trade are omitted. Open and close are the first and last trade of the
    bucket by match sequence (the execution order). Defaults: end = now, start = 500 buckets
    earlier; at most 5,000 buckets per request.
    """
    if interval not in INTERVALS:
        raise ServiceError("invalid_interval", "interval must be one of 1m, 1h, 1d.", field="interval")
    kind, step = INTERVALS[interval]
    now = now or timezone.now()
    end = end or now
    start = start or end - DEFAULT_CANDLES * step
    if start >= end:
        raise ServiceError("invalid_range", "from must be before to.", field="from")
    start = _floor_time(start, interval)
    if (end - start) / step > MAX_CANDLES:
        raise ServiceError(
            "range_too_large", f"At most {MAX_CANDLES} candles per request; narrow from/to.", field="from"
        )
    trades = Trade.objects.filter(instrument=instrument, executed_at__gte=start, executed_at__lt=end)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Enough memory to group a million rows without spilling the sort to disk.
            with connection.cursor() as cur:
                cur.execute("SET LOCAL work_mem = '64MB'")
        rows = list(
            trades.annotate(bucket=Trunc("executed_at", kind, tzinfo=UTC))
            .values("bucket")
            .annotate(
                high=Max("price"),
                low=Min("price"),
                volume=Sum("quantity"),
                notional=Sum(notional_expr()),
                trades=Count("id"),
                first_seq=Min("match_sequence"),
                last_seq=Max("match_sequence"),
            )
            .order_by("bucket")
        )
    # Open and close: the prices at the first and last sequence numbers, by the unique
    # (instrument, match_sequence) index; on PostgreSQL the numbers go as one array parameter.
    seqs = sorted({r["first_seq"] for r in rows} | {r["last_seq"] for r in rows})
    by_seq = Trade.objects.filter(instrument=instrument)
    if connection.vendor == "postgresql":
        by_seq = by_seq.filter(match_sequence__in=RawSQL("SELECT unnest(%s::bigint[])", [seqs]))
    else:
        by_seq = by_seq.filter(match_sequence__in=seqs)
    price_at = dict(by_seq.values_list("match_sequence", "price"))
    by_bucket = {r["bucket"].astimezone(UTC): r for r in rows}
    # The close before the range: the latest time first (the (instrument, -executed_at) index
    # answers it without a sort), then the last trade at that time by sequence.
    prev_at = (
        Trade.objects.filter(instrument=instrument, executed_at__lt=start)
        .order_by("-executed_at")
        .values_list("executed_at", flat=True)
        .first()
    )
    prev_close = None
    if prev_at is not None:
        prev_close = (
            Trade.objects.filter(instrument=instrument, executed_at=prev_at)
            .order_by("-match_sequence")
            .values_list("price", flat=True)
            .first()
        )
    candles: list[Candle] = []
    last_bucket = _floor_time(min(end - dt.timedelta(microseconds=1), now), interval)
    t = start
    while t <= last_bucket:
        r = by_bucket.get(t)
        if r is not None:
            close = price_at[r["last_seq"]]
            candles.append(
                Candle(
                    t,
                    price_at[r["first_seq"]],
                    _price(r["high"]),
                    _price(r["low"]),
                    close,
                    int(r["volume"]),
                    r["trades"],
                    vwap(r["notional"], r["volume"]),
                )
            )
            prev_close = close
        elif prev_close is not None:
            candles.append(Candle(t, prev_close, prev_close, prev_close, prev_close, 0, 0, None))
        t += step
    return candles


# --- instrument statistics ----------------------------------------------------------------------


@dataclass
class InstrumentStats:
    last_price: Decimal | None
    last_trade_at: dt.datetime | None
    best_bid: Decimal | None
    best_ask: Decimal | None
    spread: Decimal | None
    mid: Decimal | None
    open_24h: Decimal | None
    high_24h: Decimal | None
    low_24h: Decimal | None
    change_24h: Decimal | None
    volume_24h: int
    trades_24h: int
    vwap_24h: Decimal | None
    in_call_auction: bool


def instrument_stats(*, instrument: Instrument, now: dt.datetime | None = None) -> InstrumentStats:
    """Top of book (kept by the matcher on InstrumentBook) and the last 24 hours of trades."""
    now = now or timezone.now()
    book = instrument.book
    agg = Trade.objects.filter(instrument=instrument, executed_at__gte=now - dt.timedelta(hours=24)).aggregate(
        volume=Sum("quantity"),
        notional=Sum(notional_expr()),
        trades=Count("id"),
        high=Max("price"),
        low=Min("price"),
        first_seq=Min("match_sequence"),
    )
    open_24h = None
    if agg["first_seq"] is not None:
        open_24h = (
            Trade.objects.filter(instrument=instrument, match_sequence=agg["first_seq"])
            .values_list("price", flat=True)
            .first()
        )
    spread = mid = None
    if book.best_bid is not None and book.best_ask is not None:
        spread = book.best_ask - book.best_bid
        mid = (book.best_ask + book.best_bid) / 2
    last = book.last_price
    return InstrumentStats(
        last_price=last,
        last_trade_at=book.last_trade_at,
        best_bid=book.best_bid,
        best_ask=book.best_ask,
        spread=spread,
        mid=mid,
        open_24h=open_24h,
        high_24h=_price(agg["high"]),
        low_24h=_price(agg["low"]),
        change_24h=(last - open_24h) if (last is not None and open_24h is not None) else None,
        volume_24h=int(agg["volume"] or 0),
        trades_24h=agg["trades"],
        vwap_24h=vwap(agg["notional"], agg["volume"]),
        in_call_auction=CallAuction.objects.filter(
            instrument=instrument, status=CallAuction.Status.COLLECTING
        ).exists(),
    )


# --- energy floor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FloorRow:
    tier: str
    hardware: str
    region: str
    watts: int
    tokens_per_second: int
    electricity_price_per_kwh: Decimal
    energy_kwh_per_mtok: Decimal
    energy_cost_per_mtok: Decimal
    energy_share: Decimal
    floor: Decimal


def _ceil_tick(value: Decimal, tick: Decimal) -> Decimal:
    from decimal import ROUND_CEILING

    return (value / tick).to_integral_value(rounding=ROUND_CEILING) * tick


def energy_floor_list(
    *, tier: str | None = None, region: str | None = None, hardware: str | None = None, tick: Decimal = Decimal("0.01")
) -> list[FloorRow]:
    """The energy-cost floor of every tier x hardware x region (filtered by code), as pricing.floor
    computes it for one order: kWh per 1M tokens x electricity price / energy share, rounded up
    to the tick. Pairs without a catalog throughput figure are left out."""
    tiers = Tier.objects.all()
    regions = Region.objects.all()
    hw = Hardware.objects.all()
    for qs_name, code, label in (("tiers", tier, "tier"), ("regions", region, "region"), ("hw", hardware, "hardware")):
        if code is not None:
            qs = {"tiers": tiers, "regions": regions, "hw": hw}[qs_name]
            if not qs.filter(code=code).exists():
                raise ServiceError(f"unknown_{label}", f"Unknown {label} {code!r}.", field=label)
    if tier:
        tiers = tiers.filter(code=tier)
    if region:
        regions = regions.filter(code=region)
    if hardware:
        hw = hw.filter(code=hardware)
    regions = list(regions)
    throughput = HardwareThroughput.objects.filter(tier__in=tiers, hardware__in=hw).select_related("tier", "hardware")
    share = settings.ENERGY_SHARE_OF_COST
    rows = []
    for tp in sorted(throughput, key=lambda t: (t.tier.sort_order, t.tier.code, t.hardware.code)):
        kwh = energy_cost_per_mtok(
            watts=tp.hardware.watts_per_accelerator, tokens_per_second=tp.tokens_per_second, price_per_kwh=Decimal(1)
        )
        for r in regions:
            cost = kwh * r.electricity_price_per_kwh
            rows.append(
                FloorRow(
                    tier=tp.tier.code,
                    hardware=tp.hardware.code,
                    region=r.code,
                    watts=tp.hardware.watts_per_accelerator,
                    tokens_per_second=tp.tokens_per_second,
                    electricity_price_per_kwh=r.electricity_price_per_kwh,
                    energy_kwh_per_mtok=kwh.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN),
                    energy_cost_per_mtok=cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN),
                    energy_share=share,
                    floor=_ceil_tick(cost / share, tick),
                )
            )
    return rows


def instrument_floors(*, instrument: Instrument) -> dict[str, Decimal]:
    """Floor per hardware code for an instrument's tier and region (what a provider sees)."""
    return {
        row.hardware: row.floor
        for row in energy_floor_list(
            tier=instrument.tier.code, region=instrument.region.code, tick=instrument.tick_size
        )
    }


# --- the book as the engine sees it --------------------------------------------------------------


def instrument_engine_book(*, instrument: Instrument):
    """An engine.OrderBook of the resting orders, plus the pending ones in sequence order.

    Exactly what the matcher loads; the caller may submit orders to it freely (it is a copy).
    """
    from . import book_rows, engine

    hw = book_rows.hardware_codes()
    live = Order.objects.filter(instrument=instrument, status__in=LIVE_STATUSES)
    resting = [book_rows.book_order(r, hw) for r in book_rows.order_rows(live.filter(pending_match=False))]
    # Pending orders have no match sequence yet; the matcher will apply them in id order.
    pending = []
    last = instrument.book.last_matched_sequence
    for i, r in enumerate(book_rows.order_rows(live.filter(pending_match=True).order_by("id")), start=1):
        pending.append(book_rows.book_order({**r, "sequence": last + i}, hw))
    return engine.OrderBook(resting), pending


def instrument_in_call_auction(*, instrument: Instrument) -> bool:
    return CallAuction.objects.filter(instrument=instrument, status=CallAuction.Status.COLLECTING).exists()


# --- the index ---------------------------------------------------------------------------------


def index_latest() -> list[IndexValue]:
    """The most recent published value of each tier."""
    latest = []
    for tier in Tier.objects.all():
        v = IndexValue.objects.filter(tier=tier).select_related("tier").order_by("-day").first()
        if v is not None:
            latest.append(v)
    return latest


def index_history(*, tier: str, start: dt.date | None = None, end: dt.date | None = None) -> list[IndexValue]:
    if not Tier.objects.filter(code=tier).exists():
        raise NotFound("unknown_tier", f"Unknown tier {tier!r}.")
    qs = IndexValue.objects.filter(tier__code=tier).select_related("tier")
    if start:
        qs = qs.filter(day__gte=start)
    if end:
        qs = qs.filter(day__lte=end)
    return list(qs.order_by("day"))


# --- call auctions -----------------------------------------------------------------------------


@dataclass
class AuctionView:
    auction: CallAuction
    indicative: object | None = None  # pricing.auction.Clearing while collecting
    collected_orders: int = 0
    extra: dict = field(default_factory=dict)


def instrument_auction_get(*, instrument: Instrument, allocate: bool = False) -> AuctionView:
    """The instrument's call auction: the published result, or while collecting the indicative
    price and volume if it were cleared now (as exchanges publish during a call phase).

    With `allocate`, the indicative result also says what each order would trade (the full
    clearing, fills included), for showing a trader how their own orders stand."""
    auction = CallAuction.objects.filter(instrument=instrument).first()
    if auction is None:
        raise NotFound("no_call_auction", f"{instrument.symbol} has no day-ahead call auction.")
    if auction.status == CallAuction.Status.CLEARED:
        return AuctionView(auction)
    from . import book_rows
    from .auction import clear, clearing_price

    _, orders = book_rows.auction_orders(instrument_id=instrument.pk, hw=book_rows.hardware_codes())
    ref = book_rows.auction_reference_price(instrument=instrument, book_row=instrument.book)
    result = (clear if allocate else clearing_price)(orders, reference_price=ref, tick=instrument.tick_size)
    return AuctionView(auction, result, collected_orders=len(orders))


def trades_in_window(*, instrument: Instrument, since: dt.datetime) -> dict:
    """Aggressor volume by side since `since` (recent demand and supply)."""
    rows = (
        Trade.objects.filter(instrument=instrument, executed_at__gte=since)
        .values("aggressor_side")
        .annotate(q=Sum("quantity"))
    )
    out = {"buy": 0, "sell": 0}
    for r in rows:
        out[r["aggressor_side"]] = int(r["q"] or 0)
    return out


def resting_quantity(*, instrument: Instrument, side: str, low: Decimal, high: Decimal, hardware: str | None) -> int:
    """Resting quantity of one side within [low, high]; bids only those accepting `hardware`."""
    qs = Order.objects.filter(
        instrument=instrument, side=side, pending_match=False, status__in=LIVE_STATUSES, price__gte=low, price__lte=high
    )
    total = 0
    hardware_id = catalog_hardware_ids().get(hardware) if hardware else None
    for allowed, qty, filled in qs.values_list("allowed_hardware_ids", "quantity", "filled_quantity"):
        if side == "buy" and hardware and allowed and hardware_id not in allowed:
            continue
        total += qty - filled
    return total
