"""Quotes: what filling a quantity now would cost, and a suggested listing price for providers.

The quote walks the book with the matching engine itself: the resting orders are loaded into an
engine.OrderBook exactly as the matcher loads them, the orders still pending are submitted first
(the matcher would process them before a new order), and then an immediate-or-cancel order of
the requested size. So the hardware rule, price-time priority and self-trade prevention are the
matcher's, by construction, not a second implementation of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from django.utils import timezone

from marketplace.display import price_text
from marketplace.errors import ServiceError
from marketplace.models import Hardware, Instrument
from metering import money
from metering.money import fee_bps

from . import engine, selectors

_NO_LIMIT_BUY = Decimal("1e12")
_NO_LIMIT_SELL = Decimal("0")
_QUOTE_ID = -1


@dataclass
class QuoteLevel:
    price: Decimal
    quantity: int
    hardware: str


@dataclass
class Quote:
    side: str
    quantity: int
    fillable_quantity: int
    average_price: Decimal | None
    best_price: Decimal | None
    worst_price: Decimal | None
    notional: Decimal  # value of the fillable part, rounded to the cent
    taker_fee: Decimal
    stopped_by: str  # "" (filled), "book_exhausted", "limit", "self_trade_prevented"
    levels: list[QuoteLevel] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.fillable_quantity == self.quantity


def _validate(
    *, instrument: Instrument, side: str, quantity: int, allowed_hardware: Sequence[str], hardware: str | None
) -> None:
    if side not in ("buy", "sell"):
        raise ServiceError("invalid_side", "side must be buy or sell.", field="side")
    if quantity <= 0 or quantity % instrument.lot_size:
        raise ServiceError(
            "invalid_lot",
            f"quantity must be a positive multiple of the lot size ({instrument.lot_size:,} tokens).",
            field="quantity",
        )
    known = set(Hardware.objects.values_list("code", flat=True))
    if side == "buy":
        if hardware:
            raise ServiceError(
                "invalid_hardware", "hardware is for sell quotes; a buy lists allowed_hardware.", field="hardware"
            )
        unknown = sorted(set(allowed_hardware) - known)
        if unknown:
            raise ServiceError("unknown_hardware", f"Unknown hardware {', '.join(unknown)}.", field="allowed_hardware")
    else:
        if allowed_hardware:
            raise ServiceError("invalid_hardware", "allowed_hardware is for buy quotes.", field="allowed_hardware")
        if not hardware:
            raise ServiceError("hardware_required", "A sell quote names the hardware (e.g. h100).", field="hardware")
        if hardware not in known:
            raise ServiceError("unknown_hardware", f"Unknown hardware {hardware!r}.", field="hardware")


def instrument_quote(
    *,
    instrument: Instrument,
    side: str,
    quantity: int,
    allowed_hardware: Sequence[str] = (),
    hardware: str | None = None,
    limit: Decimal | None = None,
    account_id: int | None = None,
) -> Quote:
    """Walk the current book as an IOC order of `quantity` would (read-only).

    `account_id` applies self-trade prevention as the matcher would for that account; without
    it (an anonymous quote) no order in the book is the quoter's own.
    """
    _validate(instrument=instrument, side=side, quantity=quantity, allowed_hardware=allowed_hardware, hardware=hardware)
    if selectors.instrument_in_call_auction(instrument=instrument):
        raise ServiceError(
            "instrument_in_call_auction",
            f"{instrument.symbol} is collecting orders for its day-ahead call auction; nothing fills now. "
            "See its /auction for the indicative price.",
            status=409,
        )
    book, pending = selectors.instrument_engine_book(instrument=instrument)
    for order in pending:
        book.submit(order)
    if limit is None:
        limit = _NO_LIMIT_BUY if side == "buy" else _NO_LIMIT_SELL
    taker = engine.BookOrder(
        id=_QUOTE_ID,
        seq=2**62,
        account_id=account_id if account_id is not None else -1,
        side=side,  # type: ignore[arg-type]
        price=limit,
        remaining=quantity,
        tif=engine.IOC,
        hardware=hardware,
        allowed=frozenset(allowed_hardware),
    )
    result = book.submit(taker)
    filled = result.filled
    value = sum((f.price * f.quantity for f in result.fills), Decimal(0))
    notional = money.round_charge(value / money.TOKENS_PER_PRICE_UNIT)
    prices = [f.price for f in result.fills]
    stopped_by = ""
    if filled < quantity:
        if result.reason == engine.REASON_SELF_TRADE:
            stopped_by = "self_trade_prevented"
        elif book._best_maker(taker) is not None:
            stopped_by = "limit"
        else:
            stopped_by = "book_exhausted"
    levels: list[QuoteLevel] = []
    for f in result.fills:
        if levels and levels[-1].price == f.price and levels[-1].hardware == f.hardware:
            levels[-1].quantity += f.quantity
        else:
            levels.append(QuoteLevel(f.price, f.quantity, f.hardware))
    return Quote(
        side=side,
        quantity=quantity,
        fillable_quantity=filled,
        average_price=(value / filled).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN) if filled else None,
        best_price=(min(prices) if side == "buy" else max(prices)) if prices else None,
        worst_price=(max(prices) if side == "buy" else min(prices)) if prices else None,
        notional=notional,
        taker_fee=money.fee(notional, fee_bps(maker=False)),
        stopped_by=stopped_by,
        levels=levels,
    )


# --- suggested listing price --------------------------------------------------------------------

MAX_ADJUSTMENT = Decimal("0.05")  # at most 5% above or below the reference
BAND = Decimal("0.10")  # resting orders within 10% of the reference count as near demand/supply


@dataclass
class SuggestedPrice:
    hardware: str
    suggested_price: Decimal
    floor: Decimal | None
    reference_price: Decimal | None
    reference_source: str
    demand: int
    supply: int
    imbalance: Decimal
    adjustment: Decimal
    best_bid_for_hardware: Decimal | None
    reasoning: list[str]


def _tick_round(value: Decimal, tick: Decimal) -> Decimal:
    return (value / tick).to_integral_value(rounding=ROUND_HALF_EVEN) * tick


def instrument_suggested_price(
    *, instrument: Instrument, hardware: str, now: dt.datetime | None = None
) -> SuggestedPrice:
    """A listing price for a provider selling on `hardware`, with the reasons.

    reference = 24h VWAP, else the mid of best bid and ask, else the last price, else the tier's
    latest index, else the energy floor. Demand = resting bids accepting the hardware within 10%
    of the reference plus buy-initiated volume in 24h; supply = resting asks within 10% plus
    sell-initiated volume. The reference moves by up to 5% toward the imbalance
    (demand - supply) / (demand + supply), then never below the energy floor.
    """
    now = now or timezone.now()
    if not Hardware.objects.filter(code=hardware).exists():
        raise ServiceError("unknown_hardware", f"Unknown hardware {hardware!r}.", field="hardware")
    tick = instrument.tick_size
    floor = selectors.instrument_floors(instrument=instrument).get(hardware)
    stats = selectors.instrument_stats(instrument=instrument, now=now)
    reasoning: list[str] = []
    ref, source = None, "none"
    if stats.vwap_24h is not None:
        ref, source = stats.vwap_24h, "vwap_24h"
        reasoning.append(f"Reference: the 24h VWAP {price_text(stats.vwap_24h)} over {stats.volume_24h:,} tokens traded.")
    elif stats.mid is not None:
        ref, source = stats.mid, "mid"
        reasoning.append(f"Reference: no trades in 24h; the mid of best bid {price_text(stats.best_bid)} and ask {price_text(stats.best_ask)}.")
    elif stats.last_price is not None:
        ref, source = stats.last_price, "last_price"
        reasoning.append(f"Reference: the last traded price {price_text(stats.last_price)} (older than 24h).")
    else:
        idx = selectors.IndexValue.objects.filter(tier_id=instrument.tier_id).order_by("-day").first()
        if idx is not None:
            ref, source = idx.value, "index"
            reasoning.append(
                f"Reference: no market in this book; the {instrument.tier.code} Token Price Index of {idx.day}, {idx.value}."
            )
        elif floor is not None:
            ref, source = floor, "floor"
            reasoning.append("Reference: no market information at all; starting from the energy floor.")
    demand = supply = 0
    imbalance = adjustment = Decimal(0)
    if ref is not None:
        low, high = ref * (1 - BAND), ref * (1 + BAND)
        flow = selectors.trades_in_window(instrument=instrument, since=now - dt.timedelta(hours=24))
        demand = (
            selectors.resting_quantity(instrument=instrument, side="buy", low=low, high=high, hardware=hardware)
            + flow["buy"]
        )
        supply = (
            selectors.resting_quantity(instrument=instrument, side="sell", low=low, high=high, hardware=None)
            + flow["sell"]
        )
        if demand + supply:
            imbalance = (Decimal(demand - supply) / Decimal(demand + supply)).quantize(Decimal("0.0001"))
            adjustment = (imbalance * MAX_ADJUSTMENT).quantize(Decimal("0.0001"))
        reasoning.append(
            f"Demand {demand:,} tokens (bids accepting {hardware} within 10% of the reference plus buy-initiated "
            f"volume in 24h) vs supply {supply:,} (asks within 10% plus sell-initiated volume): imbalance "
            f"{imbalance}, so the price moves {adjustment * 100:+.2f}% (at most 5%)."
        )
        price = _tick_round(ref * (1 + adjustment), tick)
    else:
        price = None
    if floor is not None and (price is None or price < floor):
        reasoning.append(
            f"Raised to the energy-cost floor {price_text(floor)} for {hardware} in {instrument.region.code}: below it the "
            "power bill alone is not covered."
            if price is not None
            else f"No reference; the energy-cost floor {price_text(floor)} for {hardware} in {instrument.region.code}."
        )
        price = floor
    elif floor is not None:
        reasoning.append(f"Above the energy-cost floor {price_text(floor)} for {hardware} in {instrument.region.code}.")
    if price is None:
        raise ServiceError(
            "no_price_information", "No market data, index or energy floor to suggest a price from.", status=409
        )
    price = max(price, tick)
    book, _ = selectors.instrument_engine_book(instrument=instrument)
    bids = [q.best().price for allowed, q in book.bids.items() if len(q) and (not allowed or hardware in allowed)]
    best_bid = max(bids) if bids else None
    if best_bid is not None and best_bid >= price:
        reasoning.append(
            f"A sell at {price_text(price)} would trade at once against the best bid {price_text(best_bid)} that accepts {hardware}."
        )
    return SuggestedPrice(
        hardware=hardware,
        suggested_price=price,
        floor=floor,
        reference_price=ref,
        reference_source=source,
        demand=demand,
        supply=supply,
        imbalance=imbalance,
        adjustment=adjustment,
        best_bid_for_hardware=best_bid,
        reasoning=reasoning,
    )
