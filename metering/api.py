"""REST API of the money side: contracts, usage ingestion, balances, ledger statement.

Thin views: parse, call one service or selector, render. Money is rendered as decimal strings,
times as ISO-8601 UTC, lists are cursor-paginated (newest first).
"""

from __future__ import annotations

import datetime as dt

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace import timeparse
from marketplace.api.auth import FundingScope, MeterScope, ReadScope, request_account
from marketplace.api.fields import PriceField
from marketplace.models import Trade
from marketplace.services import ServiceError

from . import funding, selectors, usage
from .models import FundingRequest, LedgerEntry, LedgerTransaction, Settlement

# --- contracts ------------------------------------------------------------------------------


class SettlementSerializer(serializers.ModelSerializer):
    class Meta:
        model = Settlement
        fields = [
            "delivered_tokens", "unused_tokens", "overage_tokens", "value", "buyer_fee", "seller_fee",
            "provider_payout", "refund", "settled_at",
        ]  # fmt: skip


class ContractSerializer(serializers.ModelSerializer):
    instrument = serializers.CharField(source="instrument.symbol")
    role = serializers.SerializerMethodField()
    buyer = serializers.CharField(source="buyer.slug")
    provider = serializers.CharField(source="seller.slug")
    hardware = serializers.CharField(source="hardware.code")
    price = PriceField()
    fee_bps = serializers.SerializerMethodField()
    escrow = serializers.DecimalField(source="buyer_escrow", max_digits=20, decimal_places=2)
    delivery_start = serializers.DateTimeField(source="instrument.delivery_start")
    delivery_end = serializers.DateTimeField(source="instrument.delivery_end")
    delivered_tokens = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    settlement = serializers.SerializerMethodField()

    class Meta:
        model = Trade
        fields = [
            "id", "instrument", "role", "buyer", "provider", "hardware", "quantity", "price", "fee_bps", "escrow",
            "executed_at", "delivery_start", "delivery_end", "delivered_tokens", "status", "settlement",
        ]  # fmt: skip

    def _is_buyer(self, obj: Trade) -> bool:
        return obj.buyer_id == self.context["account"].pk

    def get_role(self, obj: Trade) -> str:
        return "buyer" if self._is_buyer(obj) else "provider"

    def get_fee_bps(self, obj: Trade) -> int:
        return obj.buyer_fee_bps if self._is_buyer(obj) else obj.seller_fee_bps

    def get_delivered_tokens(self, obj: Trade) -> int:
        return self.context["delivered"].get(obj.pk, 0)

    def get_status(self, obj: Trade) -> str:
        return selectors.contract_status(trade=obj, now=self.context["now"])

    @extend_schema_field(SettlementSerializer(allow_null=True))
    def get_settlement(self, obj: Trade) -> dict | None:
        s = getattr(obj, "settlement", None)
        return None if s is None else SettlementSerializer(s).data


class ContractList(generics.ListAPIView):
    """Own delivery contracts, as buyer or provider (filter role=buyer|provider, instrument)."""

    permission_classes = [ReadScope]
    serializer_class = ContractSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Trade.objects.none()
        role = self.request.query_params.get("role")
        if role not in (None, "buyer", "provider"):
            raise ServiceError("invalid_parameter", "role is buyer or provider.", field="role")
        qs = selectors.contracts_for_account(account=request_account(self.request), role=role)
        symbol = self.request.query_params.get("instrument")
        if symbol:
            from marketplace.services import instrument_symbol_parse

            tier, region, day = instrument_symbol_parse(symbol)
            qs = qs.filter(instrument__tier__code=tier, instrument__region__code=region, instrument__delivery_date=day)
        return qs

    @extend_schema(
        parameters=[
            OpenApiParameter("role", str, enum=["buyer", "provider"]),
            OpenApiParameter("instrument", str, description="Instrument symbol tier:region:YYYY-MM-DD"),
        ]
    )
    def get(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        from django.utils import timezone

        ctx = {
            "account": request_account(request),
            "delivered": selectors.contracts_delivered(trades=page),
            "now": timezone.now(),
        }
        return self.get_paginated_response(ContractSerializer(page, many=True, context=ctx).data)


# --- usage ----------------------------------------------------------------------------------

_usage_event = inline_serializer(
    "UsageEvent",
    {
        "event_id": serializers.CharField(),
        "buyer": serializers.CharField(help_text="The buyer's account slug"),
        "instrument": serializers.CharField(required=False, help_text="tier:region:YYYY-MM-DD"),
        "contract": serializers.IntegerField(required=False, help_text="A contract (trade) id, instead of instrument"),
        "timestamp": serializers.DateTimeField(),
        "usage": inline_serializer(
            "OpenAIUsage",
            {
                "prompt_tokens": serializers.IntegerField(),
                "completion_tokens": serializers.IntegerField(),
                "prompt_tokens_details": inline_serializer(
                    "PromptTokensDetails", {"cached_tokens": serializers.IntegerField()}, required=False
                ),
            },
        ),
    },
)
_usage_result = inline_serializer(
    "UsageEventResult",
    {
        "index": serializers.IntegerField(),
        "event_id": serializers.CharField(allow_null=True),
        "status": serializers.ChoiceField(choices=["accepted", "duplicate", "conflict", "rejected"]),
        "reason": serializers.CharField(required=False),
        "message": serializers.CharField(required=False),
        "billable_tokens": serializers.IntegerField(required=False),
    },
)


class UsageIngest(APIView):
    """Report a batch of usage events (provider accounts, meter scope): a result per event."""

    permission_classes = [MeterScope]

    @extend_schema(
        request=inline_serializer("UsageBatch", {"events": _usage_event.__class__(many=True)}),
        responses=inline_serializer(
            "UsageBatchResult",
            {
                "accepted": serializers.IntegerField(),
                "duplicate": serializers.IntegerField(),
                "conflict": serializers.IntegerField(),
                "rejected": serializers.IntegerField(),
                "results": _usage_result.__class__(many=True),
            },
        ),
    )
    def post(self, request):
        data = request.data
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"events"})
            if unknown or "events" not in data:
                raise ServiceError("invalid_batch", 'The body is {"events": [...]}: a list of usage events.', field="events")
            data = data["events"]
        report = usage.usage_ingest(provider=request_account(request), events=data)
        return Response(report.as_dict())


# --- balances and ledger --------------------------------------------------------------------


class Balances(APIView):
    permission_classes = [ReadScope]

    @extend_schema(
        responses=inline_serializer(
            "Balances",
            {
                "account": serializers.CharField(),
                "balances": inline_serializer(
                    "CurrencyBalance",
                    {
                        "currency": serializers.CharField(),
                        "available": serializers.DecimalField(max_digits=20, decimal_places=2),
                        "escrow": serializers.DecimalField(max_digits=20, decimal_places=2),
                        "owed": serializers.DecimalField(max_digits=20, decimal_places=2),
                        "pending_withdrawal": serializers.DecimalField(max_digits=20, decimal_places=2),
                    },
                    many=True,
                ),
            },
        )
    )
    def get(self, request):
        account = request_account(request)
        rows = selectors.balances_by_currency(account=account)
        return Response(
            {
                "account": account.slug,
                "balances": [{k: (str(v) if k != "currency" else v) for k, v in row.items()} for row in rows],
            }
        )


class LedgerEntrySerializer(serializers.ModelSerializer):
    account = serializers.CharField(source="account.kind")
    currency = serializers.CharField(source="account.currency")
    kind = serializers.CharField(source="transaction.kind")
    key = serializers.CharField(source="transaction.key")
    memo = serializers.CharField(source="transaction.memo")
    balance = serializers.DecimalField(source="balance_after", max_digits=20, decimal_places=2)

    class Meta:
        model = LedgerEntry
        fields = ["id", "created_at", "account", "currency", "kind", "amount", "balance", "key", "memo", "transaction"]


def _when(request, name: str, *, end_of_day: bool) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return timeparse.parse_datetime(raw, dates="end" if end_of_day else "start")
    except timeparse.TimeParseError as exc:
        raise ServiceError("invalid_parameter", f"{name} {exc.message}", field=name) from None


def _choices(request, name: str, allowed: list[str]) -> list[str]:
    values = [v for raw in request.query_params.getlist(name) for v in raw.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ServiceError("invalid_parameter", f"{name} is one of {', '.join(allowed)}.", field=name)
    return values


class LedgerList(generics.ListAPIView):
    """Own ledger entries, newest first, each with the account's balance after it."""

    permission_classes = [ReadScope]
    serializer_class = LedgerEntrySerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("since", str, description="From this date or time (inclusive), ISO-8601"),
            OpenApiParameter("until", str, description="Until this time (exclusive) or through this date, ISO-8601"),
            OpenApiParameter("kind", str, description="Transaction kinds, comma-separated: " + ", ".join(LedgerTransaction.Kind.values)),
            OpenApiParameter("account", str, description="available, escrow or owed (comma-separated)"),
        ]
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return LedgerEntry.objects.none()
        r = self.request
        return selectors.ledger_entries_for_account(
            account=request_account(r),
            since=_when(r, "since", end_of_day=False),
            until=_when(r, "until", end_of_day=True),
            kinds=_choices(r, "kind", list(LedgerTransaction.Kind.values)),
            ledger_kinds=_choices(r, "account", ["available", "escrow", "owed"]),
        )


# --- funding requests -------------------------------------------------------------------------


class FundingRequestSerializer(serializers.ModelSerializer):
    class Meta:
        model = FundingRequest
        fields = [
            "id", "kind", "amount", "currency", "reference", "status", "sandbox",
            "requested_at", "decided_at", "decision_note",
        ]


class FundingRequestInput(serializers.Serializer):
    amount = serializers.CharField(help_text='decimal string with at most 2 places, e.g. "500.00"')
    reference = serializers.CharField(
        required=False, allow_blank=True, max_length=funding.REFERENCE_MAX * 2,
        help_text="deposit: your payment reference; withdrawal: where to pay (e.g. an account)",
    )


class FundingList(generics.ListAPIView):
    """Own deposit and withdrawal requests, newest first (read scope). ?status=pending|approved|..."""

    permission_classes = [ReadScope]
    serializer_class = FundingRequestSerializer

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=FundingRequest.Status.values)])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        qs = FundingRequest.objects.filter(account=request_account(self.request))
        status = self.request.query_params.get("status")
        if status:
            if status not in FundingRequest.Status.values:
                raise ServiceError(
                    "invalid_filter", f"status is one of {', '.join(FundingRequest.Status.values)}.", field="status"
                )
            qs = qs.filter(status=status)
        return qs


class _FundingCreate(APIView):
    permission_classes = [FundingScope]
    service = None

    def post(self, request):
        data = FundingRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        created = type(self).service(
            account=request_account(request),
            amount=data.validated_data["amount"],
            reference=data.validated_data.get("reference", ""),
        )
        return Response(FundingRequestSerializer(created).data, status=201)


@extend_schema(request=FundingRequestInput, responses={201: FundingRequestSerializer})
class FundingDepositCreate(_FundingCreate):
    """Ask for a deposit (funding scope): staff credit it once the money has arrived."""

    service = staticmethod(funding.funding_deposit_request)


@extend_schema(request=FundingRequestInput, responses={201: FundingRequestSerializer})
class FundingWithdrawalCreate(_FundingCreate):
    """Ask to withdraw (funding scope): the amount is held at once, paid out when staff approve."""

    service = staticmethod(funding.funding_withdrawal_request)


class FundingCancel(APIView):
    """Cancel one of your own pending requests; a withdrawal's held funds return to available."""

    permission_classes = [FundingScope]

    @extend_schema(request=None, responses=FundingRequestSerializer)
    def post(self, request, request_id: int):
        done = funding.funding_request_cancel(account=request_account(request), request_id=request_id)
        return Response(FundingRequestSerializer(done).data)


class SandboxCredit(APIView):
    """Sandbox demo only: credit yourself labelled test funds (403 sandbox_disabled elsewhere)."""

    permission_classes = [FundingScope]

    @extend_schema(
        request=inline_serializer("SandboxCreditInput", {"amount": serializers.CharField()}),
        responses={201: FundingRequestSerializer},
    )
    def post(self, request):
        data = FundingRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        done = funding.funding_sandbox_credit(account=request_account(request), amount=data.validated_data["amount"])
        return Response(FundingRequestSerializer(done).data, status=201)
