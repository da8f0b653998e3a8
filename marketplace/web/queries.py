"""Read-only, page-shaped queries of the web UI.

Everything here only reads. Market data, quotes, floors, the index, statements and contract
delivery come from the pricing and metering selectors; this module only shapes them for
pages (chart series, table rows) and adds the few aggregates no other interface needs
(the batched markets overview, capacity sold vs listed, revenue by day).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import models
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from marketplace import selectors
from marketplace.market_snapshot import snapshot_get_many
from marketplace.models import (
    LIVE_STATUSES,
    TOKENS_PER_PRICE_UNIT,
    Account,
    ApiKey,
    Hardware,
    Instrument,
    Order,
    OrderStatus,
    Region,
    Side,
    Tier,
    Trade,
)
from marketplace.services import ServiceError
from metering import money
from metering import selectors as metering_selectors
from metering.models import LedgerEntry, Settlement, UsageEvent
from pricing import selectors as pricing_selectors
from pricing.quote import Quote, instrument_quote, instrument_suggested_price

MTOK = Decimal(TOKENS_PER_PRICE_UNIT)


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
    reference: Decimal | None  # the first trade of the last 24 h
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
    """Open instruments with last price, 24 h change and volume, best bid and ask.

    Two queries and one read of the published market snapshots for any number of instruments
    (the table polls every few seconds, so not pricing's per-instrument instrument_stats)."""
    now = now or timezone.now()
    qs = selectors.instrument_list().filter(status=Instrument.Status.OPEN, delivery_end__gt=now)
    if tier:
        qs = qs.filter(tier__code=tier)
    if region:
        qs = qs.filter(region__code=region)
    if day:
        qs = qs.filter(delivery_date=day)
    instruments = list(qs)
    ids = [i.pk for i in instruments]
    # Change over 24 h: last price against the first trade of the window (the definition of
    # pricing.selectors.instrument_stats, batched here for the whole table).
    first_in_window: dict[int, Decimal] = {}
    for inst_id, price in (
        Trade.objects.filter(instrument_id__in=ids, executed_at__gte=now - dt.timedelta(hours=24))
        .order_by("instrument_id", "match_sequence")
        .values_list("instrument_id", "price")
    ):
        first_in_window.setdefault(inst_id, price)
    snapshots = snapshot_get_many(instrument_ids=ids)  # published by the matcher
    rows = []
    for inst in instruments:
        snap = snapshots[inst.pk]
        rows.append(
            MarketRow(
                instrument=inst,
                last=snap.last_price,
                reference=first_in_window.get(inst.pk),
                volume_24h=snap.volume_24h,
                best_bid=snap.best_bid,
                best_ask=snap.best_ask,
            )
        )
    return rows


@dataclass
class BoardCell:
    row: MarketRow
    spark: str  # SVG polyline points of hourly closes over 24 h ("" without trades)


@dataclass
class MarketBoard:
    day: dt.date
    tiers: list[str]
    regions: list[str]
    cells: dict[tuple[str, str], BoardCell]
    curve: dict[str, Any]  # Chart.js series: labels = delivery days, one line per tier

    def grid(self) -> list[tuple[str, list[BoardCell | None]]]:
        return [(t, [self.cells.get((t, r)) for r in self.regions]) for t in self.tiers]


def sparkline_points(prices: list[Decimal], width: int = 90, height: int = 24) -> str:
    if len(prices) < 2:
        return ""
    low, high = min(prices), max(prices)
    span = (high - low) or Decimal(1)
    step = Decimal(width) / (len(prices) - 1)
    return " ".join(
        f"{float(i * step):.1f},{float(height - (p - low) / span * height):.1f}" for i, p in enumerate(prices)
    )


def market_board(*, now: dt.datetime | None = None) -> MarketBoard:
    """The markets page's board: every tier x region for today's (spot) delivery with a 24 h
    sparkline, and the forward curve (mean last price over regions per tier and delivery day)."""
    now = now or timezone.now()
    today = now.astimezone(dt.UTC).date()
    rows = market_overview(now=now)
    spot = [r for r in rows if r.instrument.delivery_date == today]
    closes: dict[int, dict[int, Decimal]] = defaultdict(dict)
    since = now - dt.timedelta(hours=24)
    for inst_id, at, price in (
        Trade.objects.filter(instrument_id__in=[r.instrument.pk for r in spot], executed_at__gte=since)
        .order_by("instrument_id", "match_sequence")
        .values_list("instrument_id", "executed_at", "price")
    ):
        closes[inst_id][int((at - since).total_seconds() // 3600)] = price
    cells = {}
    for r in spot:
        hourly = [closes[r.instrument.pk][h] for h in sorted(closes[r.instrument.pk])]
        cells[(r.instrument.tier.code, r.instrument.region.code)] = BoardCell(row=r, spark=sparkline_points(hourly))
    days = sorted({r.instrument.delivery_date for r in rows})
    tiers = [t.code for t in Tier.objects.order_by("id")]
    by: dict[tuple[str, dt.date], list[Decimal]] = defaultdict(list)
    for r in rows:
        price = r.last if r.last is not None else (
            (r.best_bid + r.best_ask) / 2 if r.best_bid is not None and r.best_ask is not None else None
        )
        if price is not None:
            by[(r.instrument.tier.code, r.instrument.delivery_date)].append(price)
    curve = {
        "labels": [d.isoformat() for d in days],
        "datasets": [
            {
                "label": t,
                "data": [
                    str((sum(by[(t, d)]) / len(by[(t, d)])).quantize(Decimal("0.01"))) if by[(t, d)] else None
                    for d in days
                ],
            }
            for t in tiers
        ],
    }
    return MarketBoard(
        day=today, tiers=tiers, regions=[rg.code for rg in Region.objects.order_by("id")], cells=cells, curve=curve
    )


@dataclass
class IndexSeries:
    tier: str
    value: Decimal
    day: dt.date
    points: list[tuple[str, str]] = field(default_factory=list)  # (day, value)

    @property
    def chart_id(self) -> str:
        return f"index-{self.tier}"

    @property
    def chart(self) -> dict[str, Any]:
        return {
            "labels": [d for d, _ in self.points],
            "datasets": [{"label": self.tier, "data": [v for _, v in self.points]}],
        }


def price_index(*, days: int = 30, today: dt.date | None = None) -> list[IndexSeries]:
    """The Token Price Index per tier (latest value and its daily history); empty if none
    has been published yet, and the markets page then leaves the section out."""
    today = today or timezone.now().date()
    out = []
    for latest in pricing_selectors.index_latest():
        history = pricing_selectors.index_history(tier=latest.tier.code, start=today - dt.timedelta(days=days))
        out.append(
            IndexSeries(
                tier=latest.tier.code,
                value=latest.value,
                day=latest.day,
                points=[(v.day.isoformat(), str(v.value)) for v in history],
            )
        )
    return out


# --- one instrument -----------------------------------------------------------------------

INTERVALS: dict[str, tuple[dt.timedelta, int]] = {
    # interval -> (bucket length, how many buckets the chart shows)
    "1m": (dt.timedelta(minutes=1), 120),
    "1h": (dt.timedelta(hours=1), 72),
    "1d": (dt.timedelta(days=1), 30),
}


def instrument_candles(*, instrument: Instrument, interval: str, now: dt.datetime | None = None) -> list:
    """The chart's window of pricing's OHLCV candles for `interval` (1m, 1h or 1d)."""
    now = now or timezone.now()
    size, count = INTERVALS[interval]
    return pricing_selectors.instrument_candles(
        instrument=instrument, interval=interval, start=now - size * count, now=now
    )


def candle_series(*, instrument: Instrument, interval: str) -> dict[str, Any]:
    """The price chart's data: candle starts, open/high/low/close as strings, volume in Mtok."""
    candles = instrument_candles(instrument=instrument, interval=interval)
    return {
        "interval": interval,
        "labels": [c.start.isoformat() for c in candles],
        "open": [str(c.open) for c in candles],
        "close": [str(c.close) for c in candles],
        "high": [str(c.high) for c in candles],
        "low": [str(c.low) for c in candles],
        "volume": [c.volume / TOKENS_PER_PRICE_UNIT for c in candles],
    }


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


def quote_get(
    *,
    instrument: Instrument,
    side: str,
    quantity: int,
    allowed_hardware: tuple[str, ...] = (),
    hardware: str | None = None,
    account: Account | None = None,
) -> Quote | str:
    """Pricing's quote for the order being typed, or the reason there is none (its message)."""
    try:
        return instrument_quote(
            instrument=instrument,
            side=side,
            quantity=quantity,
            allowed_hardware=allowed_hardware if side == Side.BUY else (),
            hardware=hardware if side == Side.SELL else None,
            account_id=account.pk if account else None,
        )
    except ServiceError as exc:
        return exc.message


def order_reserve(*, instrument: Instrument, price: Decimal, quantity: int) -> Decimal:
    """What a buy order would move into escrow: the same formula order_place uses."""
    return money.reserve(quantity=quantity, price=price, max_fee_bps=money.max_fee_bps())


@dataclass
class UnusedCharge:
    share: Decimal  # the tier's share of unused capacity the buyer still pays
    amount: Decimal  # what the contract value alone costs if nothing is delivered (fees aside)


def unused_capacity_charge(*, instrument: Instrument, price: Decimal, quantity: int) -> UnusedCharge:
    """What a buyer pays if none of the capacity is used: the tier's settlement policy."""
    share = instrument.tier.unused_capacity_share
    return UnusedCharge(share=share, amount=money.round_charge(money.notional(quantity, price) * share))


def floors_for_instrument(*, instrument: Instrument) -> list[tuple[Hardware, Decimal | None]]:
    """Energy floor per hardware for this book's tier and region (pricing's figures)."""
    floors = pricing_selectors.instrument_floors(instrument=instrument)
    return [(hw, floors.get(hw.code)) for hw in Hardware.objects.all()]


def suggested_price_get(*, instrument: Instrument, hardware: str):
    """Pricing's suggested listing price for `hardware` (with its floor and reasons)."""
    try:
        return instrument_suggested_price(instrument=instrument, hardware=hardware)
    except ServiceError:
        return None


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
    status: str

    @property
    def value(self) -> Decimal:
        return money.round_charge(self.trade.notional)

    @property
    def delivered_pct(self) -> int:
        return min(100, round(100 * self.delivered / self.trade.quantity)) if self.trade.quantity else 0


def contracts_for_account(*, account: Account, limit: int = 500) -> list[ContractRow]:
    """The account's contracts (as buyer or provider), newest first, with tokens delivered so
    far (metering allocates each pair's usage to its contracts oldest first, as settlement will)."""
    trades = list(metering_selectors.contracts_for_account(account=account).order_by("-id")[:limit])
    delivered = metering_selectors.contracts_delivered(trades=trades)
    return [
        ContractRow(
            trade=t,
            role="buyer" if t.buyer_id == account.pk else "provider",
            delivered=delivered.get(t.pk, 0),
            settlement=_settlement(t),
            status=metering_selectors.contract_status(trade=t),
        )
        for t in trades
    ]


def provider_contracts(*, account: Account, limit: int = 50) -> list[ContractRow]:
    """The provider's sold contracts, newest first, with what its usage reports delivered."""
    trades = list(
        metering_selectors.contracts_for_account(account=account, role="provider").order_by("-id")[:limit]
    )
    delivered = metering_selectors.contracts_delivered(trades=trades)
    return [
        ContractRow(
            trade=t, role="provider", delivered=delivered.get(t.pk, 0), settlement=_settlement(t),
            status=metering_selectors.contract_status(trade=t),
        )
        for t in trades
    ]


def usage_example(*, rows: list[ContractRow], now: dt.datetime | None = None) -> dict[str, Any] | None:
    """A usage report a provider can paste: its newest unsettled contract, a time inside it."""
    now = now or timezone.now()
    unsettled = [r for r in rows if r.settlement is None]
    row = next((r for r in unsettled if r.status == "delivering"), None) or next(iter(unsettled), None)
    if row is None:
        return None
    t = row.trade
    start = max(t.instrument.delivery_start, t.executed_at)
    # Full precision: a timestamp cut to the second could fall before a trade made this second.
    when = min(max(now, start), t.instrument.delivery_end - dt.timedelta(microseconds=1))
    # Usage can only be reported once delivery has begun (timestamps are never in the future).
    return {
        "contract": t.pk, "buyer": t.buyer.slug, "timestamp": when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "from": None if start <= now else start,
    }


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
    events = (
        UsageEvent.objects.filter(occurred_at__date__gte=start)
        .filter(models.Q(buyer=account) | models.Q(provider=account))
        .values_list("occurred_at", "billable_tokens", "buyer_id")
    )
    for at, tokens, buyer_id in events:
        day = at.astimezone(dt.UTC).date().isoformat()
        if day in consumed:
            (consumed if buyer_id == account.pk else delivered)[day] += tokens
    datasets = []
    if account.is_buyer:
        datasets.append({"label": "Consumed (as buyer)", "data": [consumed[d] / TOKENS_PER_PRICE_UNIT for d in labels]})
    if account.is_provider:
        datasets.append(
            {"label": "Delivered (as provider)", "data": [delivered[d] / TOKENS_PER_PRICE_UNIT for d in labels]}
        )
    total = sum(consumed.values()) + sum(delivered.values())
    return {"labels": labels, "datasets": datasets, "total": total}


# --- balances and statement ---------------------------------------------------------------


def statement_entries(
    *,
    account: Account,
    ledger_kind: str = "",
    transaction_kind: str = "",
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> QuerySet[LedgerEntry]:
    """The account's ledger entries, newest first; each carries `balance_after`, the running
    balance of its ledger account (kept by the ledger, so filters do not change it)."""
    midnight = dt.time.min.replace(tzinfo=dt.UTC)
    return metering_selectors.ledger_entries_for_account(
        account=account,
        since=dt.datetime.combine(date_from, midnight) if date_from else None,
        until=dt.datetime.combine(date_to + dt.timedelta(days=1), midnight) if date_to else None,
        kinds=[transaction_kind] if transaction_kind else [],
        ledger_kinds=[ledger_kind] if ledger_kind else [],
    ).order_by("-id")


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


def provider_floor_table(*, tier_code: str) -> list[dict[str, Any]]:
    """Energy floor per hardware (rows) x region (columns) for one tier, from pricing."""
    from marketplace.models import Region

    regions = list(Region.objects.values_list("code", flat=True))
    try:
        rows = pricing_selectors.energy_floor_list(tier=tier_code)
    except ServiceError:
        return []
    by_hw: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for r in rows:
        by_hw[r.hardware][r.region] = r.floor
    return [
        {
            "hardware": hw,
            "floors": [floors.get(code) for code in regions],
            "cells": [(code, floors.get(code)) for code in regions],  # labelled, for stacked rows on a phone
        }
        for hw, floors in sorted(by_hw.items())
    ]


@dataclass
class AuctionPanel:
    """What a trader needs to see on a book in its day-ahead call auction."""

    status: str  # collecting | cleared
    gate_closure_at: dt.datetime
    price: Decimal | None  # indicative while collecting, the clearing price once cleared
    volume: int
    demand: int
    supply: int
    imbalance: int
    collected_orders: int
    cleared_at: dt.datetime | None = None
    # The viewer's own auction orders: (order, tokens it would trade at the indicative price).
    mine: list[tuple[Order, int]] = field(default_factory=list)

    @property
    def collecting(self) -> bool:
        return self.status == "collecting"


def auction_panel(*, instrument: Instrument, account: Account | None) -> AuctionPanel | None:
    """The instrument's call auction as the instrument page shows it, or None without one."""
    try:
        view = pricing_selectors.instrument_auction_get(instrument=instrument, allocate=account is not None)
    except ServiceError:
        return None
    a = view.auction
    if a.status != "collecting":
        return AuctionPanel(
            status=a.status, gate_closure_at=a.gate_closure_at, price=a.clearing_price, volume=a.volume,
            demand=a.demand, supply=a.supply, imbalance=a.imbalance, collected_orders=a.orders_count,
            cleared_at=a.cleared_at,
        )
    c = view.indicative
    panel = AuctionPanel(
        status=a.status, gate_closure_at=a.gate_closure_at, price=c.price, volume=c.volume, demand=c.demand,
        supply=c.supply, imbalance=c.imbalance, collected_orders=view.collected_orders,
    )
    if account is not None:
        own = Order.objects.filter(instrument=instrument, account=account, status__in=LIVE_STATUSES).order_by("id")
        panel.mine = [(o, c.filled.get(o.pk, 0)) for o in own]
    return panel
