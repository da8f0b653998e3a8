"""REST API of the pricing engine: candles, stats, floors, quotes, suggested price, index, auction.

Market data is public like a real exchange's; a quote made with an API key applies self-trade
prevention for that key's account, as the matcher would.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace import services, timeparse
from marketplace.api.fields import price_str
from marketplace.errors import ServiceError

from . import quote, selectors


class PublicView(APIView):
    permission_classes = [AllowAny]


def _dt_param(request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return timeparse.parse_datetime(raw, naive="utc", dates="start")
    except timeparse.TimeParseError as exc:
        raise ServiceError("invalid_parameter", f"{name} {exc.message}", field=name) from None


def _date_param(request, name: str) -> dt.date | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return timeparse.parse_date(raw)
    except timeparse.TimeParseError as exc:
        raise ServiceError("invalid_parameter", f"{name} {exc.message}", field=name) from None


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _account_id(request) -> int | None:
    key = getattr(request, "auth", None)
    account = getattr(key, "account", None)
    return account.pk if account is not None else None


_candle = inline_serializer(
    "Candle",
    {
        "start": serializers.DateTimeField(),
        "open": serializers.CharField(),
        "high": serializers.CharField(),
        "low": serializers.CharField(),
        "close": serializers.CharField(),
        "volume": serializers.IntegerField(),
        "trades": serializers.IntegerField(),
        "vwap": serializers.CharField(allow_null=True),
    },
)


class CandlesView(PublicView):
    @extend_schema(
        parameters=[
            OpenApiParameter("interval", str, enum=["1m", "1h", "1d"], description="Bucket size (default 1h)"),
            OpenApiParameter("from", str, description="ISO-8601 UTC start (default: 500 buckets before `to`)"),
            OpenApiParameter("to", str, description="ISO-8601 UTC end, exclusive (default: now)"),
        ],
        responses=inline_serializer(
            "Candles",
            {
                "instrument": serializers.CharField(),
                "interval": serializers.CharField(),
                "candles": _candle.__class__(many=True),
            },
        ),
    )
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        interval = request.query_params.get("interval", "1h")
        candles = selectors.instrument_candles(
            instrument=inst, interval=interval, start=_dt_param(request, "from"), end=_dt_param(request, "to")
        )
        return Response(
            {
                "instrument": inst.symbol,
                "interval": interval,
                "candles": [
                    {
                        "start": _iso(c.start),
                        "open": price_str(c.open),
                        "high": price_str(c.high),
                        "low": price_str(c.low),
                        "close": price_str(c.close),
                        "volume": c.volume,
                        "trades": c.trades,
                        "vwap": price_str(c.vwap),
                    }
                    for c in candles
                ],
            }
        )


class StatsView(PublicView):
    @extend_schema(
        responses=inline_serializer(
            "InstrumentStats",
            {
                "instrument": serializers.CharField(),
                **{
                    k: serializers.CharField(allow_null=True)
                    for k in (
                        "last_price",
                        "best_bid",
                        "best_ask",
                        "spread",
                        "mid",
                        "open_24h",
                        "high_24h",
                        "low_24h",
                        "change_24h",
                        "vwap_24h",
                    )
                },
                "last_trade_at": serializers.DateTimeField(allow_null=True),
                "volume_24h": serializers.IntegerField(),
                "trades_24h": serializers.IntegerField(),
                "in_call_auction": serializers.BooleanField(),
            },
        )
    )
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        s = selectors.instrument_stats(instrument=inst)
        return Response(
            {
                "instrument": inst.symbol,
                "last_price": price_str(s.last_price),
                "last_trade_at": _iso(s.last_trade_at),
                "best_bid": price_str(s.best_bid),
                "best_ask": price_str(s.best_ask),
                "spread": price_str(s.spread),
                "mid": price_str(s.mid),
                "open_24h": price_str(s.open_24h),
                "high_24h": price_str(s.high_24h),
                "low_24h": price_str(s.low_24h),
                "change_24h": price_str(s.change_24h),
                "volume_24h": s.volume_24h,
                "trades_24h": s.trades_24h,
                "vwap_24h": price_str(s.vwap_24h),
                "in_call_auction": s.in_call_auction,
            }
        )


class FloorsView(PublicView):
    @extend_schema(
        parameters=[
            OpenApiParameter("tier", str, description="Tier code, e.g. frontier"),
            OpenApiParameter("region", str, description="Region code, e.g. cn-west-1"),
            OpenApiParameter("hardware", str, description="Hardware code, e.g. h100"),
        ],
        responses=inline_serializer(
            "EnergyFloors",
            {
                "energy_share_of_cost": serializers.CharField(),
                "floors": inline_serializer(
                    "EnergyFloor",
                    {
                        "tier": serializers.CharField(),
                        "hardware": serializers.CharField(),
                        "region": serializers.CharField(),
                        "watts": serializers.IntegerField(),
                        "tokens_per_second": serializers.IntegerField(),
                        "electricity_price_per_kwh": serializers.CharField(),
                        "energy_kwh_per_mtok": serializers.CharField(),
                        "energy_cost_per_mtok": serializers.CharField(),
                        "floor": serializers.CharField(),
                    },
                    many=True,
                ),
            },
        ),
    )
    def get(self, request):
        q = request.query_params
        rows = selectors.energy_floor_list(
            tier=q.get("tier") or None, region=q.get("region") or None, hardware=q.get("hardware") or None
        )
        from django.conf import settings

        return Response(
            {
                "energy_share_of_cost": str(settings.ENERGY_SHARE_OF_COST),
                "floors": [
                    {
                        "tier": r.tier,
                        "hardware": r.hardware,
                        "region": r.region,
                        "watts": r.watts,
                        "tokens_per_second": r.tokens_per_second,
                        "electricity_price_per_kwh": str(r.electricity_price_per_kwh),
                        "energy_kwh_per_mtok": str(r.energy_kwh_per_mtok),
                        "energy_cost_per_mtok": str(r.energy_cost_per_mtok),
                        "floor": price_str(r.floor),
                    }
                    for r in rows
                ],
            }
        )


def _quantity_param(request) -> int:
    raw = request.query_params.get("quantity")
    if raw is None:
        raise ServiceError(
            "invalid_parameter", "quantity is required (tokens, a multiple of the lot size).", field="quantity"
        )
    try:
        value = int(raw)
    except ValueError:
        raise ServiceError(
            "invalid_parameter", "quantity must be a whole number of tokens.", field="quantity"
        ) from None
    if not 0 < value <= 10**15:
        raise ServiceError("invalid_parameter", "quantity must be between 1 and 10^15 tokens.", field="quantity")
    return value


def _price_param(request, name: str) -> Decimal | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ServiceError("invalid_parameter", f"{name} must be a decimal number.", field=name) from None
    if not value.is_finite() or value <= 0 or value >= Decimal("1000000"):
        raise ServiceError("invalid_parameter", f"{name} must be a positive price.", field=name)
    return value


class QuoteView(PublicView):
    @extend_schema(
        parameters=[
            OpenApiParameter("side", str, enum=["buy", "sell"], required=True),
            OpenApiParameter("quantity", int, required=True, description="Tokens, a multiple of the lot size"),
            OpenApiParameter("allowed_hardware", str, description="Buys: comma-separated hardware codes (empty = any)"),
            OpenApiParameter("hardware", str, description="Sells: the hardware you would sell"),
            OpenApiParameter("price", str, description="Optional limit price"),
        ],
        responses=inline_serializer(
            "Quote",
            {
                "instrument": serializers.CharField(),
                "side": serializers.CharField(),
                "quantity": serializers.IntegerField(),
                "fillable_quantity": serializers.IntegerField(),
                "complete": serializers.BooleanField(),
                "average_price": serializers.CharField(allow_null=True),
                "best_price": serializers.CharField(allow_null=True),
                "worst_price": serializers.CharField(allow_null=True),
                "notional": serializers.CharField(),
                "taker_fee": serializers.CharField(),
                "stopped_by": serializers.CharField(),
                "levels": inline_serializer(
                    "QuoteLevel",
                    {
                        "price": serializers.CharField(),
                        "quantity": serializers.IntegerField(),
                        "hardware": serializers.CharField(),
                    },
                    many=True,
                ),
            },
        ),
    )
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        q = request.query_params
        allowed = [h.strip() for h in (q.get("allowed_hardware") or "").split(",") if h.strip()]
        result = quote.instrument_quote(
            instrument=inst,
            side=q.get("side", ""),
            quantity=_quantity_param(request),
            allowed_hardware=allowed,
            hardware=q.get("hardware") or None,
            limit=_price_param(request, "price"),
            account_id=_account_id(request),
        )
        return Response(
            {
                "instrument": inst.symbol,
                "side": result.side,
                "quantity": result.quantity,
                "fillable_quantity": result.fillable_quantity,
                "complete": result.complete,
                "average_price": price_str(result.average_price),
                "best_price": price_str(result.best_price),
                "worst_price": price_str(result.worst_price),
                "notional": str(result.notional),
                "taker_fee": str(result.taker_fee),
                "stopped_by": result.stopped_by,
                "levels": [
                    {"price": price_str(lv.price), "quantity": lv.quantity, "hardware": lv.hardware}
                    for lv in result.levels
                ],
            }
        )


class SuggestedPriceView(PublicView):
    @extend_schema(
        parameters=[OpenApiParameter("hardware", str, required=True, description="The hardware you would sell")],
        responses=inline_serializer(
            "SuggestedPrice",
            {
                "instrument": serializers.CharField(),
                "hardware": serializers.CharField(),
                "suggested_price": serializers.CharField(),
                "floor": serializers.CharField(allow_null=True),
                "reference_price": serializers.CharField(allow_null=True),
                "reference_source": serializers.CharField(),
                "demand": serializers.IntegerField(),
                "supply": serializers.IntegerField(),
                "imbalance": serializers.CharField(),
                "adjustment": serializers.CharField(),
                "best_bid_for_hardware": serializers.CharField(allow_null=True),
                "reasoning": serializers.ListField(child=serializers.CharField()),
            },
        ),
    )
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        hardware = request.query_params.get("hardware")
        if not hardware:
            raise ServiceError(
                "hardware_required", "Name the hardware you would sell, e.g. ?hardware=h100.", field="hardware"
            )
        s = quote.instrument_suggested_price(instrument=inst, hardware=hardware)
        return Response(
            {
                "instrument": inst.symbol,
                "hardware": s.hardware,
                "suggested_price": price_str(s.suggested_price),
                "floor": price_str(s.floor),
                "reference_price": price_str(s.reference_price),
                "reference_source": s.reference_source,
                "demand": s.demand,
                "supply": s.supply,
                "imbalance": str(s.imbalance),
                "adjustment": str(s.adjustment),
                "best_bid_for_hardware": price_str(s.best_bid_for_hardware),
                "reasoning": s.reasoning,
            }
        )


def _index_row(v) -> dict:
    return {
        "tier": v.tier.code,
        "day": v.day.isoformat(),
        "value": price_str(v.value),
        "volume": v.volume,
        "trades": v.trades,
        "instruments": v.instruments,
        "final": v.is_final,
        "published_at": _iso(v.published_at),
    }


_index_value = inline_serializer(
    "IndexValue",
    {
        "tier": serializers.CharField(),
        "day": serializers.DateField(),
        "value": serializers.CharField(),
        "volume": serializers.IntegerField(),
        "trades": serializers.IntegerField(),
        "instruments": serializers.IntegerField(),
        "final": serializers.BooleanField(),
        "published_at": serializers.DateTimeField(),
    },
)


class IndexView(PublicView):
    @extend_schema(
        parameters=[
            OpenApiParameter("tier", str, description="With a tier: also its history"),
            OpenApiParameter("from", str, description="History from this date (YYYY-MM-DD; default 90 days ago)"),
            OpenApiParameter("to", str, description="History up to this date, inclusive (default today)"),
        ],
        responses=inline_serializer(
            "TokenPriceIndex",
            {
                "methodology": serializers.CharField(),
                "latest": _index_value.__class__(many=True),
                "history": _index_value.__class__(many=True, required=False),
            },
        ),
    )
    def get(self, request):
        body = {
            "methodology": "Per tier and UTC trade date: sum(price x quantity) / sum(quantity) over every trade of the "
            "tier (all regions, hardware and delivery dates), rounded half-even to 4 places; no trades, no value.",
            "latest": [_index_row(v) for v in selectors.index_latest()],
        }
        tier = request.query_params.get("tier")
        start, end = _date_param(request, "from"), _date_param(request, "to")
        if tier:
            end = end or dt.datetime.now(dt.UTC).date()
            start = start or end - dt.timedelta(days=90)
            if start > end:
                raise ServiceError("invalid_range", "from must not be after to.", field="from")
            if (end - start).days > 3660:
                raise ServiceError("range_too_large", "At most ten years of history per request.", field="from")
            body["history"] = [_index_row(v) for v in selectors.index_history(tier=tier, start=start, end=end)]
        elif start or end:
            raise ServiceError("invalid_parameter", "from/to select a tier's history: add ?tier=.", field="tier")
        return Response(body)


class AuctionView(PublicView):
    @extend_schema(
        responses=inline_serializer(
            "CallAuction",
            {
                "instrument": serializers.CharField(),
                "status": serializers.CharField(),
                "gate_closure_at": serializers.DateTimeField(),
                "cleared_at": serializers.DateTimeField(allow_null=True),
                "reference_price": serializers.CharField(allow_null=True),
                "clearing_price": serializers.CharField(allow_null=True),
                "volume": serializers.IntegerField(),
                "demand": serializers.IntegerField(),
                "supply": serializers.IntegerField(),
                "imbalance": serializers.IntegerField(),
                "orders": serializers.IntegerField(),
                "trades": serializers.IntegerField(),
                "indicative": serializers.BooleanField(),
            },
        )
    )
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        view = selectors.instrument_auction_get(instrument=inst)
        a = view.auction
        body = {
            "instrument": inst.symbol,
            "status": a.status,
            "gate_closure_at": _iso(a.gate_closure_at),
            "cleared_at": _iso(a.cleared_at),
        }
        if view.indicative is not None:
            c = view.indicative
            body.update(
                reference_price=price_str(c.reference_price),
                clearing_price=price_str(c.price),
                volume=c.volume,
                demand=c.demand,
                supply=c.supply,
                imbalance=c.imbalance,
                orders=view.collected_orders,
                trades=0,
                indicative=True,
            )
        else:
            body.update(
                reference_price=price_str(a.reference_price),
                clearing_price=price_str(a.clearing_price),
                volume=a.volume,
                demand=a.demand,
                supply=a.supply,
                imbalance=a.imbalance,
                orders=a.orders_count,
                trades=a.trades_count,
                indicative=False,
            )
        return Response(body)
