from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from marketplace.market_snapshot import snapshot_get_many
from marketplace.models import (
    Hardware,
    HardwareThroughput,
    Instrument,
    Order,
    Region,
    Side,
    Tier,
    TimeInForce,
    Trade,
)

from .fields import PriceField, StrictSerializer, price_str


class TierSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tier
        fields = ["code", "name", "latency_slo_ms", "output_token_weight", "cached_input_weight", "unused_capacity_share"]


class ThroughputSerializer(serializers.ModelSerializer):
    tier = serializers.CharField(source="tier.code")

    class Meta:
        model = HardwareThroughput
        fields = ["tier", "tokens_per_second"]


class HardwareSerializer(serializers.ModelSerializer):
    throughputs = ThroughputSerializer(many=True, read_only=True)

    class Meta:
        model = Hardware
        fields = ["code", "name", "watts_per_accelerator", "throughputs"]


class RegionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Region
        fields = ["code", "name", "electricity_price_per_kwh"]


class InstrumentSerializer(serializers.ModelSerializer):
    symbol = serializers.CharField(read_only=True)
    tier = serializers.CharField(source="tier.code")
    region = serializers.CharField(source="region.code")
    tick_size = PriceField()
    last_price = serializers.SerializerMethodField()
    best_bid = serializers.SerializerMethodField()
    best_ask = serializers.SerializerMethodField()
    volume_24h = serializers.SerializerMethodField()
    spot = serializers.SerializerMethodField()

    class Meta:
        model = Instrument
        fields = [
            "symbol", "tier", "region", "delivery_date", "delivery_start", "delivery_end", "lot_size", "tick_size",
            "status", "spot", "enforce_energy_floor", "last_price", "best_bid", "best_ask", "volume_24h",
        ]

    # Market figures come from the instrument's published snapshot (marketplace.market_snapshot):
    # a list page reads them in one cache round trip, without aggregating orders or trades.
    def to_representation(self, instance):
        snapshots = self.context.setdefault("market_snapshots", {})
        if instance.pk not in snapshots:
            page = self.parent.instance if isinstance(self.parent, serializers.ListSerializer) else None
            ids = [i.pk for i in page] if page is not None else [instance.pk]
            snapshots.update(snapshot_get_many(instrument_ids=[i for i in ids if i not in snapshots]))
        return super().to_representation(instance)

    def _snapshot(self, obj):
        return self.context["market_snapshots"][obj.pk]

    def get_last_price(self, obj) -> str | None:
        return price_str(self._snapshot(obj).last_price)

    def get_best_bid(self, obj) -> str | None:
        return price_str(self._snapshot(obj).best_bid)

    def get_best_ask(self, obj) -> str | None:
        return price_str(self._snapshot(obj).best_ask)

    def get_volume_24h(self, obj) -> int:
        return self._snapshot(obj).volume_24h

    def get_spot(self, obj) -> bool:
        return obj.is_spot()


class OrderCreateSerializer(StrictSerializer):
    instrument = serializers.CharField(max_length=80, help_text="Symbol, e.g. frontier:cn-west-1:2026-11-26")
    side = serializers.ChoiceField(choices=Side.choices)
    quantity = serializers.IntegerField(min_value=1, max_value=10**15, help_text="Tokens; a multiple of the lot size")
    price = PriceField(min_value=0, help_text="Limit price per 1M tokens; a multiple of the tick")
    time_in_force = serializers.ChoiceField(choices=TimeInForce.choices, default=TimeInForce.GTC)
    hardware = serializers.CharField(max_length=32, required=False, allow_null=True, help_text="Sell orders")
    allowed_hardware = serializers.ListField(
        child=serializers.CharField(max_length=32), required=False, max_length=32, help_text="Buy orders; empty = any"
    )
    client_order_id = serializers.CharField(max_length=64, required=False, allow_null=True)
    price_band_override = serializers.BooleanField(
        default=False,
        help_text="Place the order even if its price is outside the price band around the last trade "
        "(refused with price_out_of_band otherwise)",
    )


class OrderSerializer(serializers.ModelSerializer):
    instrument = serializers.CharField(source="instrument.symbol")
    hardware = serializers.SerializerMethodField()
    price = PriceField()
    remaining_quantity = serializers.IntegerField(source="remaining")

    class Meta:
        model = Order
        fields = [
            "id", "client_order_id", "instrument", "side", "quantity", "price", "time_in_force", "hardware",
            "allowed_hardware", "status", "status_reason", "filled_quantity", "remaining_quantity", "sequence",
            "below_energy_floor", "created_at", "updated_at",
        ]

    def get_hardware(self, obj) -> str | None:
        return obj.hardware.code if obj.hardware_id else None

    def to_representation(self, instance):
        # The same dict as the declared fields give (tests/marketplace/test_order_representation.py
        # checks it against ModelSerializer's), built without instantiating them: binding a
        # ModelSerializer's fields deep-copies and rebuilds them per instance, a large share of
        # a POST /orders that otherwise runs two statements.
        o = instance
        dt_repr = _DATETIME.to_representation
        return {
            "id": o.pk,
            "client_order_id": o.client_order_id,
            "instrument": o.instrument.symbol,
            "side": o.side,
            "quantity": o.quantity,
            "price": price_str(Decimal(o.price)),
            "time_in_force": o.time_in_force,
            "hardware": self.get_hardware(o),
            "allowed_hardware": o.allowed_hardware,
            "status": o.status,
            "status_reason": o.status_reason,
            "filled_quantity": o.filled_quantity,
            "remaining_quantity": o.remaining,
            "sequence": o.sequence,
            "below_energy_floor": o.below_energy_floor,
            "created_at": dt_repr(o.created_at),
            "updated_at": dt_repr(o.updated_at),
        }

    def to_representation_by_fields(self, instance):
        """DRF's generic rendering through the declared fields (what to_representation equals)."""
        return super().to_representation(instance)


_DATETIME = serializers.DateTimeField()


class PublicTradeSerializer(serializers.ModelSerializer):
    price = PriceField()
    hardware = serializers.CharField(source="hardware.code")

    class Meta:
        model = Trade
        fields = ["id", "price", "quantity", "hardware", "aggressor_side", "executed_at"]


class OwnTradeSerializer(serializers.ModelSerializer):
    instrument = serializers.CharField(source="instrument.symbol")
    price = PriceField()
    hardware = serializers.CharField(source="hardware.code")
    side = serializers.SerializerMethodField()
    order_id = serializers.SerializerMethodField()
    liquidity = serializers.SerializerMethodField()
    fee_bps = serializers.SerializerMethodField()

    class Meta:
        model = Trade
        fields = [
            "id", "instrument", "side", "order_id", "price", "quantity", "hardware", "liquidity", "fee_bps", "executed_at",
        ]

    def _is_buyer(self, obj) -> bool:
        return obj.buyer_id == self.context["account"].pk

    def get_side(self, obj) -> str:
        return "buy" if self._is_buyer(obj) else "sell"

    def get_order_id(self, obj) -> int:
        return obj.buy_order_id if self._is_buyer(obj) else obj.sell_order_id

    def get_liquidity(self, obj) -> str:
        mine = "buy" if self._is_buyer(obj) else "sell"
        return "taker" if obj.aggressor_side == mine else "maker"

    def get_fee_bps(self, obj) -> int:
        return obj.buyer_fee_bps if self._is_buyer(obj) else obj.seller_fee_bps
