"""Read-only queries the web pages need that no app selector provides (yet).

Everything here only reads. Where the pricing or metering app offers a selector for the same
thing, the web uses theirs (see the `_optional` look-ups); these are the fall-backs and the
page-shaped aggregates (chart series, running balances) that only the web UI wants.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, Q, QuerySet, Sum, Window
from django.utils import timezone

from marketplace import selectors
from marketplace.models import (
    LIVE_STATUSES,
    TOKENS_PER_PRICE_UNIT,
    Account,
    ApiKey,
    Hardware,
    Instrument,
    Order,
    OrderStatus,
    Side,
    Trade,
)
from metering import money
from metering.models import LedgerEntry, Settlement, UsageEvent
from pricing.floor import energy_floor

MTOK = Decimal(TOKENS_PER_PRICE_UNIT)


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    """A selector another app may provide; None while it does not exist."""
    try:
        return getattr(import_module(module), name, None)
    except ImportError:
        return None


# --- who is asking ------------------------------------------------------------------------


def account_for_user(*, user: AbstractBaseUser) -> Account | None:
    """The user's first account (by membership age), or None (e.g. a staff-only user)."""
    if not user.is_authenticated:
        return None
    return Account.objects.filter(memberships__user=user).order_by("memberships__id").first()


def api_keys_for_account(*, account: Account) -> list[ApiKey]:
    return list(ApiKey.objects.filter(account=account).select_related("created_by").order_by("-created_at"))


def api_key_for_account(*, account: Account, key_id: int) -> ApiKey | None:
    return ApiKey.objects.filter(pk=key_id, account=account).first()


# --- markets ------------------------------------------------------------------------------


@dataclass
class MarketRow:
    instrument: Instrument
    last: Decimal | None
    reference: Decimal | None  # the price 24 h ago (or the first trade since)
    volume_24h: int
    best_bid: Decimal | None
    best_ask: Decimal | None

    @property
    def change(self) -> Decimal | None:
        if self.last is None or self.reference is None:
            return None
        return self.last - self.reference

    @property
    def change_pct(self) -> Decimal | None:
        if self.change is None or not self.reference:
            return None
        return (self.change / self.reference * 100).quantize(Decimal("0.1"))


def market_overview(
    *, tier: str = "", region: str = "", day: dt.date | None = None, now: dt.datetime | None = None
) -> list[MarketRow]:
    """Open instruments with last price, 24 h change and volume, best bid and ask."""
    now = now or timezone.now()
    qs = selectors.instrument_list(now=now).filter(status=Instrument.Status.OPEN, delivery_end__gt=now)
    if tier:
        qs = qs.filter(tier__code=tier)
    if region:
        qs = qs.filter(region__code=region)
    if day:
        qs = qs.filter(delivery_date=day)
    instruments = list(qs)
    ids = [i.pk for i in instruments]
    since = now - dt.timedelta(hours=24)
    # Reference price: the last trade before the window, else the first one inside it.
    before: dict[int, Decimal] = {}
    for inst_id, price in (
        Trade.objects.filter(instrument_id__in=ids, executed_at__lt=since)
        .order_by("instrument_id", "-match_sequence")
        .values_list("instrument_id", "price")
    ):
        before.setdefault(inst_id, price)
    first_in_window: dict[int, Decimal] = {}
    for inst_id, price in (
        Trade.objects.filter(instrument_id__in=ids, executed_at__gte=since)
        .exclude(instrument_id__in=list(before))
        .order_by("instrument_id", "match_sequence")
        .values_list("instrument_id", "price")
    ):
        first_in_window.setdefault(inst_id, price)
    rows = []
    for inst in instruments:
        book = getattr(inst, "book", None)
        rows.append(
            MarketRow(
                instrument=inst,
                last=book.last_price if book else None,
                reference=before.get(inst.pk, first_in_window.get(inst.pk)),
                volume_24h=inst.volume_24h,
                best_bid=book.best_bid if book else None,
                best_ask=book.best_ask if book else None,
            )
        )
    return rows


@dataclass
class IndexSeries:
    tier: str
    value: Decimal | None
    points: list[tuple[str, str]] = field(default_factory=list)  # (ISO time, value)

    @property
    def chart_id(self) -> str:
        return f"index-{self.tier}"

    @property
    def chart(self) -> dict[str, Any]:
        return {
            "labels": [t[:16].replace("T", " ") for t, _ in self.points],
            "datasets": [{"label": self.tier, "data": [v for _, v in self.points]}],
        }


def price_index(*, days: int = 7) -> list[IndexSeries] | None:
    """The Token Price Index per tier from the pricing app, or None when it does not exist.

    Accepts the pricing app's `index_history` (tier code -> [(time, value), ...]) if present,
    else `index_latest` (tier code -> value); the markets page hides the section on None.
    """
    history = _optional("pricing.selectors", "index_history")
    latest = _optional("pricing.selectors", "index_latest")
    if history is None and latest is None:
        return None
    try:
        series: list[IndexSeries] = []
        if history is not None:
            data = history(since=timezone.now() - dt.timedelta(days=days))
            for tier, points in _items(data):
                pts = [(_iso(t), str(v)) for t, v in _pairs(points)]
                series.append(IndexSeries(tier=str(tier), value=Decimal(pts[-1][1]) if pts else None, points=pts))
        else:
            for tier, value in _items(latest()):
                series.append(IndexSeries(tier=str(tier), value=_value(value)))
    except Exception:  # another app's data shape changed: hide the section rather than fail the page
        return None
    return series or None


def _items(data: Any) -> list[tuple[Any, Any]]:
    if isinstance(data, dict):
        return list(data.items())
    out = []
    for row in data:
        tier = getattr(row, "tier", None) or (row.get("tier") if isinstance(row, dict) else None)
        out.append((getattr(tier, "code", tier), row))
    return out


def _pairs(points: Any) -> list[tuple[Any, Any]]:
    out = []
    for p in points:
        if isinstance(p, (tuple, list)):
            out.append((p[0], p[1]))
        elif isinstance(p, dict):
            out.append((p.get("at") or p.get("published_at") or p.get("time"), p.get("value")))
        else:
            out.append((getattr(p, "published_at", None) or getattr(p, "at", None), getattr(p, "value", None)))
    return out


def _value(v: Any) -> Decimal | None:
    if isinstance(v, dict):
        v = v.get("value")
    elif not isinstance(v, (Decimal, int, str, float)) and v is not None:
        v = getattr(v, "value", None)
    return None if v is None else Decimal(str(v))


def _iso(t: Any) -> str:
    return t.isoformat() if hasattr(t, "isoformat") else str(t)


# --- one instrument -----------------------------------------------------------------------

INTERVALS: dict[str, tuple[dt.timedelta, int]] = {
    # interval -> (bucket length, how many buckets the chart shows)
    "1m": (dt.timedelta(minutes=1), 120),
    "1h": (dt.timedelta(hours=1), 72),
    "1d": (dt.timedelta(days=1), 30),
}


@dataclass
class Candle:
    start: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int


def instrument_candles(*, instrument: Instrument, interval: str, now: dt.datetime | None = None) -> list[Candle]:
    """OHLCV candles of the instrument's trades; the pricing app's `candles_get` when present."""
    pricing_candles = _optional("pricing.selectors", "candles_get")
    if pricing_candles is not None:
        try:
            return [
                Candle(
                    start=_attr(c, "start", "bucket", "time"),
                    open=Decimal(str(_attr(c, "open"))),
                    high=Decimal(str(_attr(c, "high"))),
                    low=Decimal(str(_attr(c, "low"))),
                    close=Decimal(str(_attr(c, "close"))),
                    volume=int(_attr(c, "volume")),
                )
                for c in pricing_candles(instrument=instrument, interval=interval)
            ]
        except Exception:  # their shape differs: fall back to computing from trades
            pass
    now = now or timezone.now()
    size, count = INTERVALS[interval]
    since = now - size * count
    candles: dict[dt.datetime, Candle] = {}
    trades = (
        Trade.objects.filter(instrument=instrument, executed_at__gte=since)
        .order_by("match_sequence")
        .values_list("executed_at", "price", "quantity")
    )
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    for at, price, qty in trades:
        start = epoch + size * ((at - epoch) // size)
        c = candles.get(start)
        if c is None:
            candles[start] = Candle(start, price, price, price, price, qty)
        else:
            c.high, c.low, c.close, c.volume = max(c.high, price), min(c.low, price), price, c.volume + qty
    return sorted(candles.values(), key=lambda c: c.start)


def _attr(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    raise KeyError(names[0])


def depth_series(*, book: selectors.BookDepth) -> dict[str, list[list[float]]]:
    """Cumulative depth per side as step-line points [[price, cumulative Mtok], ...].

    Each side starts at zero at its best price and steps up at every level, then runs on a
    little past its last level, so even a one-level book draws. Floats only here, for the
    chart's axes; every figure shown as text stays Decimal.
    """

    def side(levels: list, direction: int) -> list[list[float]]:
        if not levels:
            return []
        points, cum = [[float(levels[0].price), 0.0]], 0
        for lv in levels:
            if cum:
                points.append([float(lv.price), cum / TOKENS_PER_PRICE_UNIT])
            cum += lv.quantity
            points.append([float(lv.price), cum / TOKENS_PER_PRICE_UNIT])
        last = float(levels[-1].price)
        points.append([last * (1 + direction * 0.02), cum / TOKENS_PER_PRICE_UNIT])
        return points

    return {"bids": side(book.bids, -1), "asks": side(book.asks, +1)}


@dataclass
class Quote:
    side: str
    requested: int
    available: int
    average_price: Decimal | None
    worst_price: Decimal | None

    @property
    def complete(self) -> bool:
        return self.available >= self.requested


def quote_get(
    *, instrument: Instrument, side: str, quantity: int, allowed_hardware: tuple[str, ...] = ()
) -> Quote:
    """Expected average price to buy or sell `quantity` now, walking the resting book.

    A buy restricted to some hardware only counts asks on that hardware. Uses the pricing
    app's `quote_get` when it exists.
    """
    theirs = _optional("pricing.selectors", "quote_get")
    if theirs is not None:
        try:
            q = theirs(instrument=instrument, side=side, quantity=quantity)
            avg = _attr(q, "average_price", "price")
            return Quote(
                side=side,
                requested=quantity,
                available=int(_attr(q, "available", "filled", "quantity_available")),
                average_price=None if avg is None else Decimal(str(avg)),
                worst_price=None if _attr(q, "worst_price") is None else Decimal(str(_attr(q, "worst_price"))),
            )
        except Exception:  # their shape differs: walk the book here
            pass
    book = selectors.instrument_book_get(instrument=instrument, depth=500)
    levels = book.asks if side == Side.BUY else book.bids
    left, value, worst = quantity, Decimal(0), None
    for lv in levels:
        if left <= 0:
            break
        size = lv.quantity
        if side == Side.BUY and allowed_hardware:
            size = sum(q for hw, q in lv.by_hardware.items() if hw in allowed_hardware)
        take = min(size, left)
        if take <= 0:
            continue
        value += lv.price * take
        left -= take
        worst = lv.price
    got = quantity - left
    return Quote(
        side=side,
        requested=quantity,
        available=got,
        average_price=(value / got).quantize(instrument.tick_size / 100) if got else None,
        worst_price=worst,
    )


def order_reserve(*, instrument: Instrument, price: Decimal, quantity: int) -> Decimal:
    """What a buy order would move into escrow: the same formula order_place uses."""
    from pricing.services import max_fee_bps

    per_lot = money.reserve_per_lot(lot_size=instrument.lot_size, price=price, max_fee_bps=max_fee_bps())
    return per_lot * (quantity // instrument.lot_size)


@dataclass
class FloorRow:
    hardware: Hardware
    floor: Decimal | None
    suggested: Decimal | None


def floors_for_instrument(*, instrument: Instrument) -> list[FloorRow]:
    """Energy floor and a suggested listing price per hardware for this book."""
    suggest = _optional("pricing.selectors", "suggested_price_get")
    ref = _reference_price(instrument)
    rows = []
    for hw in Hardware.objects.all():
        floor = energy_floor(tier=instrument.tier, hardware=hw, region=instrument.region, tick=instrument.tick_size)
        suggested = None
        if suggest is not None:
            try:
                value = suggest(instrument=instrument, hardware=hw)
                suggested = _value(value)
            except Exception:
                suggested = None
        if suggested is None:
            candidates = [p for p in (ref, floor) if p is not None]
            suggested = max(candidates) if candidates else None
        rows.append(FloorRow(hardware=hw, floor=floor, suggested=suggested))
    return rows


def _reference_price(instrument: Instrument) -> Decimal | None:
    """Mid of the book, else the best ask less a tick, else the last trade."""
    book = getattr(instrument, "book", None)
    if book is None:
        return None
    if book.best_bid is not None and book.best_ask is not None:
        mid = (book.best_bid + book.best_ask) / 2
        return (mid / instrument.tick_size).to_integral_value() * instrument.tick_size
    if book.best_ask is not None:
        return max(book.best_ask - instrument.tick_size, instrument.tick_size)
    return book.last_price


# --- my orders ----------------------------------------------------------------------------


def orders_page(*, account: Account, live: bool, instrument: Instrument | None = None, limit: int = 200) -> list[Order]:
    qs = selectors.orders_for_account(account=account)
    qs = qs.filter(status__in=LIVE_STATUSES) if live else qs.exclude(status__in=LIVE_STATUSES)
    if instrument is not None:
        qs = qs.filter(instrument=instrument)
    return list(qs.order_by("-id")[:limit])


# --- contracts and deliveries -------------------------------------------------------------


@dataclass
class ContractRow:
    trade: Trade
    role: str  # "buyer" or "provider"
    delivered: int
    settlement: Settlement | None

    @property
    def value(self) -> Decimal:
        return money.round_charge(self.trade.notional)

    @property
    def delivered_pct(self) -> int:
        return min(100, round(100 * self.delivered / self.trade.quantity)) if self.trade.quantity else 0


def contracts_for_account(*, account: Account, limit: int = 500) -> list[ContractRow]:
    """The account's contracts (as buyer or provider) with tokens delivered so far.

    Delivered so far: each (instrument, buyer, provider) pair's billable usage is allocated to
    their contracts oldest first, as settlement will; settled contracts show their settlement.
    """
    trades = list(
        selectors.trades_for_account(account=account)
        .select_related("buyer", "seller", "settlement")
        .order_by("-id")[:limit]
    )
    keys = {(t.instrument_id, t.buyer_id, t.seller_id) for t in trades}
    usage: dict[tuple[int, int, int], int] = defaultdict(int)
    if keys:
        rows = (
            UsageEvent.objects.filter(instrument_id__in={k[0] for k in keys})
            .filter(Q(buyer=account) | Q(provider=account))
            .values("instrument_id", "buyer_id", "provider_id")
            .annotate(t=Sum("billable_tokens"))
        )
        for r in rows:
            usage[(r["instrument_id"], r["buyer_id"], r["provider_id"])] = r["t"] or 0
    # All contracts of each pair (not just the page) take part in the oldest-first allocation.
    pair_trades: dict[tuple[int, int, int], list[Trade]] = defaultdict(list)
    for t in sorted(trades, key=lambda t: t.pk):
        pair_trades[(t.instrument_id, t.buyer_id, t.seller_id)].append(t)
    delivered: dict[int, int] = {}
    for key, ts in pair_trades.items():
        left = usage.get(key, 0)
        for t in ts:
            settled = _settlement(t)
            take = settled.delivered_tokens if settled else min(left, t.quantity)
            delivered[t.pk] = take
            left = max(0, left - take)
    return [
        ContractRow(
            trade=t,
            role="buyer" if t.buyer_id == account.pk else "provider",
            delivered=delivered.get(t.pk, 0),
            settlement=_settlement(t),
        )
        for t in trades
    ]


def _settlement(trade: Trade) -> Settlement | None:
    try:
        return trade.settlement
    except Settlement.DoesNotExist:
        return None


def usage_by_day(*, account: Account, days: int = 14, now: dt.datetime | None = None) -> dict[str, list]:
    """Billable tokens per UTC day (in Mtok) consumed as buyer and delivered as provider."""
    now = now or timezone.now()
    start = (now - dt.timedelta(days=days - 1)).date()
    labels = [(start + dt.timedelta(days=i)).isoformat() for i in range(days)]
    consumed = dict.fromkeys(labels, 0)
    delivered = dict.fromkeys(labels, 0)
    events = UsageEvent.objects.filter(
        Q(buyer=account) | Q(provider=account), occurred_at__date__gte=start
    ).values_list("occurred_at", "billable_tokens", "buyer_id")
    for at, tokens, buyer_id in events:
        day = at.astimezone(dt.UTC).date().isoformat()
        if day in consumed:
            (consumed if buyer_id == account.pk else delivered)[day] += tokens
    datasets = []
    if account.is_buyer:
        datasets.append({"label": "Consumed (as buyer)", "data": [consumed[d] / TOKENS_PER_PRICE_UNIT for d in labels]})
    if account.is_provider:
        datasets.append({"label": "Delivered (as provider)", "data": [delivered[d] / TOKENS_PER_PRICE_UNIT for d in labels]})
    return {"labels": labels, "datasets": datasets}


# --- balances and statement ---------------------------------------------------------------


def statement_entries(
    *,
    account: Account,
    ledger_kind: str = "",
    transaction_kind: str = "",
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> QuerySet[LedgerEntry]:
    """The account's ledger entries, newest first, each with the running balance of its
    ledger account after it (computed over the whole history, before any filter)."""
    running = Window(Sum("amount"), partition_by=[F("account_id")], order_by=F("id").asc())
    qs = (
        LedgerEntry.objects.filter(account__owner=account)
        .select_related("transaction", "account")
        .annotate(running_balance=running)
    )
    if ledger_kind:
        qs = qs.filter(account__kind=ledger_kind)
    if transaction_kind:
        qs = qs.filter(transaction__kind=transaction_kind)
    if date_from:
        qs = qs.filter(created_at__date__gte=date_from)
    if date_to:
        qs = qs.filter(created_at__date__lte=date_to)
    return qs.order_by("-id")


# --- provider -----------------------------------------------------------------------------


@dataclass
class CapacityRow:
    instrument: Instrument
    listed: int
    sold: int
    open: int

    @property
    def sold_pct(self) -> int:
        return round(100 * self.sold / self.listed) if self.listed else 0


def provider_capacity(*, account: Account) -> list[CapacityRow]:
    """Per instrument: tokens listed (sell orders not rejected), sold (filled), still open."""
    rows = (
        Order.objects.filter(account=account, side=Side.SELL)
        .exclude(status=OrderStatus.REJECTED)
        .values("instrument_id")
        .annotate(listed=Sum("quantity"), sold=Sum("filled_quantity"))
    )
    live = dict(
        Order.objects.filter(account=account, side=Side.SELL, status__in=LIVE_STATUSES)
        .values("instrument_id")
        .annotate(o=Sum(F("quantity") - F("filled_quantity")))
        .values_list("instrument_id", "o")
    )
    instruments = Instrument.objects.select_related("tier", "region").in_bulk([r["instrument_id"] for r in rows])
    out = [
        CapacityRow(
            instrument=instruments[r["instrument_id"]],
            listed=r["listed"] or 0,
            sold=r["sold"] or 0,
            open=live.get(r["instrument_id"], 0) or 0,
        )
        for r in rows
    ]
    return sorted(out, key=lambda c: (c.instrument.delivery_date, c.instrument.symbol), reverse=True)


def provider_revenue_by_day(*, account: Account, days: int = 14, now: dt.datetime | None = None) -> dict[str, list]:
    """Per UTC day: value of capacity sold (trades by execution day) and payouts settled."""
    now = now or timezone.now()
    start = (now - dt.timedelta(days=days - 1)).date()
    labels = [(start + dt.timedelta(days=i)).isoformat() for i in range(days)]
    sold = dict.fromkeys(labels, Decimal(0))
    for at, price, qty in Trade.objects.filter(seller=account, executed_at__date__gte=start).values_list(
        "executed_at", "price", "quantity"
    ):
        day = at.astimezone(dt.UTC).date().isoformat()
        if day in sold:
            sold[day] += money.notional(qty, price)
    paid = dict.fromkeys(labels, Decimal(0))
    for at, payout in Settlement.objects.filter(trade__seller=account, settled_at__date__gte=start).values_list(
        "settled_at", "provider_payout"
    ):
        day = at.astimezone(dt.UTC).date().isoformat()
        if day in paid:
            paid[day] += payout
    cur = settings.EXCHANGE_CURRENCY
    return {
        "labels": labels,
        "datasets": [
            {"label": f"Sold (contract value, {cur})", "data": [str(money.round_charge(sold[d])) for d in labels]},
            {"label": f"Settled payout ({cur})", "data": [str(paid[d]) for d in labels]},
        ],
        "total_sold": str(money.round_charge(sum(sold.values(), Decimal(0)))),
        "total_settled": str(sum(paid.values(), Decimal(0))),
    }


def provider_floor_table(*, tier_code: str | None = None) -> list[dict[str, Any]]:
    """Energy floor per hardware x region for one tier (the provider page's reference table)."""
    from marketplace.models import Region, Tier

    tier = Tier.objects.filter(code=tier_code).first() if tier_code else Tier.objects.first()
    if tier is None:
        return []
    regions = list(Region.objects.all())
    table = []
    for hw in Hardware.objects.all():
        table.append(
            {
                "hardware": hw,
                "floors": [energy_floor(tier=tier, hardware=hw, region=r) for r in regions],
            }
        )
    return table
