"""REST API views: parse, call one service or selector, render."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace import selectors, services
from marketplace.catalog_cache import catalog_hardware, catalog_regions, catalog_tiers
from marketplace.market_snapshot import snapshot_get
from marketplace.models import Hardware, Instrument, Order, Region, Tier, Trade

from .auth import ReadScope, TradeScope, request_account
from .fields import price_str
from .idempotency import idempotent
from .pagination import DeliveryCursorPagination
from .serializers import (
    HardwareSerializer,
    InstrumentSerializer,
    OrderCreateSerializer,
    OrderSerializer,
    OwnTradeSerializer,
    PublicTradeSerializer,
    RegionSerializer,
    TierSerializer,
)


class PublicMixin:
    """Market data and the catalog are public, like a real exchange's."""

    permission_classes = [AllowAny]


class TierList(PublicMixin, generics.ListAPIView):
    queryset = Tier.objects.all()
    serializer_class = TierSerializer
    pagination_class = None

    def get_queryset(self):
        return catalog_tiers()  # per-process cache, invalidated by every catalog edit


class HardwareList(PublicMixin, generics.ListAPIView):
    queryset = Hardware.objects.prefetch_related("throughputs__tier")
    serializer_class = HardwareSerializer
    pagination_class = None

    def get_queryset(self):
        return catalog_hardware()  # per-process cache, invalidated by every catalog edit


class RegionList(PublicMixin, generics.ListAPIView):
    queryset = Region.objects.all()
    serializer_class = RegionSerializer
    pagination_class = None

    def get_queryset(self):
        return catalog_regions()  # per-process cache, invalidated by every catalog edit


class InstrumentFilter(django_filters.FilterSet):
    tier = django_filters.CharFilter(field_name="tier__code")
    region = django_filters.CharFilter(field_name="region__code")
    delivery_date = django_filters.DateFilter()
    status = django_filters.ChoiceFilter(choices=Instrument.Status.choices)

    class Meta:
        model = Instrument
        fields = ["tier", "region", "delivery_date", "status"]


class InstrumentList(PublicMixin, generics.ListAPIView):
    serializer_class = InstrumentSerializer
    filterset_class = InstrumentFilter
    pagination_class = DeliveryCursorPagination

    def get_queryset(self):
        return selectors.instrument_list()


class InstrumentDetail(PublicMixin, APIView):
    @extend_schema(responses=InstrumentSerializer)
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        return Response(InstrumentSerializer(inst).data)


_level = inline_serializer(
    "BookLevel",
    {
        "price": serializers.CharField(),
        "quantity": serializers.IntegerField(),
        "orders": serializers.IntegerField(),
        "hardware": serializers.DictField(child=serializers.IntegerField(), required=False),
    },
)


class InstrumentBookView(PublicMixin, APIView):
    @extend_schema(
        parameters=[OpenApiParameter("depth", int, description="Price levels per side (1-500, default 50)")],
        responses=inline_serializer(
            "Book",
            {
                "instrument": serializers.CharField(),
                "bids": _level.__class__(many=True),
                "asks": _level.__class__(many=True),
                "best_bid": serializers.CharField(allow_null=True),
                "best_ask": serializers.CharField(allow_null=True),
                "last_price": serializers.CharField(allow_null=True),
            },
        ),
    )
    def get(self, request, symbol: str):
        inst = services.instrument_get(symbol=symbol)
        depth = _int_param(request, "depth", default=50, low=1, high=500)
        snap = snapshot_get(instrument_id=inst.pk)  # published by the matcher; no aggregation here
        book = snap.depth(depth)
        return Response(
            {
                "instrument": inst.symbol,
                "bids": [{"price": price_str(lv.price), "quantity": lv.quantity, "orders": lv.orders} for lv in book.bids],
                "asks": [
                    {"price": price_str(lv.price), "quantity": lv.quantity, "orders": lv.orders, "hardware": lv.by_hardware}
                    for lv in book.asks
                ],
                "best_bid": price_str(snap.best_bid),
                "best_ask": price_str(snap.best_ask),
                "last_price": price_str(snap.last_price),
            }
        )


def _int_param(request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise services.ServiceError("invalid_parameter", f"{name} must be a whole number.", field=name) from None
    if not low <= value <= high:
        raise services.ServiceError("invalid_parameter", f"{name} must be between {low} and {high}.", field=name)
    return value


class InstrumentTradeList(PublicMixin, generics.ListAPIView):
    serializer_class = PublicTradeSerializer
    queryset = Trade.objects.none()  # for the schema; get_queryset picks the instrument

    def get_queryset(self):
        inst = services.instrument_get(symbol=self.kwargs["symbol"])
        return selectors.instrument_trades(instrument=inst)


class OrderFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Order._meta.get_field("status").choices)
    side = django_filters.ChoiceFilter(choices=Order._meta.get_field("side").choices)
    instrument = django_filters.CharFilter(method="filter_instrument")

    class Meta:
        model = Order
        fields = ["status", "side", "instrument"]

    def filter_instrument(self, queryset, name, value):
        try:
            tier, region, day = services.instrument_symbol_parse(value)
        except services.NotFound as exc:
            # A filter that is not a symbol is a malformed request, not a missing object.
            raise services.ServiceError("invalid_parameter", exc.message, field="instrument") from None
        return queryset.filter(instrument__tier__code=tier, instrument__region__code=region, instrument__delivery_date=day)


class OrderListCreate(generics.ListAPIView):
    serializer_class = OrderSerializer
    filterset_class = OrderFilter
    queryset = Order.objects.none()  # for the schema; get_queryset picks the account

    def get_permissions(self):
        return [TradeScope()] if self.request.method == "POST" else [ReadScope()]

    def get_queryset(self):
        return selectors.orders_for_account(account=request_account(self.request))

    @extend_schema(
        request=OrderCreateSerializer,
        responses={201: OrderSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
    )
    def post(self, request):
        account = request_account(request)
        ser = OrderCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data

        try:
            instrument = services.instrument_get(symbol=data["instrument"])
        except services.NotFound as exc:
            raise services.ServiceError(exc.code, exc.message, field="instrument") from None

        idempotency_key = request.headers.get("Idempotency-Key")

        def place() -> Response:
            order = services.order_place(
                # With a key, idempotent() runs this in its own transaction and rolls all of
                # it back on any exception: the order needs no savepoint of its own.
                savepoint=idempotency_key is None,
                account=account,
                instrument=instrument,
                side=data["side"],
                quantity=data["quantity"],
                price=data["price"],
                time_in_force=data["time_in_force"],
                hardware=data.get("hardware"),
                allowed_hardware=data.get("allowed_hardware") or (),
                client_order_id=data.get("client_order_id"),
                price_band_override=data["price_band_override"],
            )
            # Rendered from the row just written, with the instrument already loaded (tier,
            # region): re-reading it cost a query on the API's hottest write (bench/api.py).
            order.instrument = instrument
            return Response(OrderSerializer(order).data, status=status.HTTP_201_CREATED)

        return idempotent(key=idempotency_key, account=account, data=request.data, run=place)


class OrderDetail(APIView):
    permission_classes = [ReadScope]

    @extend_schema(responses=OrderSerializer)
    def get(self, request, order_id: int):
        order = selectors.orders_for_account(account=request_account(request)).filter(pk=order_id).first()
        if order is None:
            raise services.NotFound("order_not_found", f"No order {order_id} in your account.")
        return Response(OrderSerializer(order).data)


class OrderCancel(APIView):
    permission_classes = [TradeScope]

    @extend_schema(request=None, responses=OrderSerializer)
    def post(self, request, order_id: int):
        account = request_account(request)
        services.order_cancel(account=account, order_id=order_id)
        order = selectors.orders_for_account(account=account).get(pk=order_id)
        return Response(OrderSerializer(order).data)


class OwnTradeList(generics.ListAPIView):
    permission_classes = [ReadScope]
    serializer_class = OwnTradeSerializer
    queryset = Trade.objects.none()  # for the schema; get_queryset picks the account

    def get_queryset(self):
        return selectors.trades_for_account(account=request_account(self.request))

    def get_serializer_context(self):
        ctx = super().get_serializer_context()
        ctx["account"] = request_account(self.request)
        return ctx
