"""The money side in admin: the ledger, usage and settlements, all read-only, and the
settlement report with its reconciliation (a staff-only page under the Settlement admin).

Mistakes in the ledger are corrected by reversing transactions, never by editing rows, so
nothing here can add, change or delete a ledger entry, a usage event or a settlement.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from marketplace.admin import ReadOnlyAdmin, ReadOnlyInline, admin_link
from marketplace.models import Account, Instrument, Region, Tier
from marketplace.services import ServiceError, instrument_get

from . import funding, reports
from .models import FundingRequest, LedgerAccount, LedgerEntry, LedgerTransaction, Settlement, UsageEvent


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "owner", "kind", "currency", "is_system", "balance", "statement")
    list_filter = ("kind", "currency", "is_system")
    list_select_related = ("owner",)
    search_fields = ("owner__slug", "owner__name")

    @admin.display(description="statement")
    def statement(self, obj: LedgerAccount):
        from django.utils.html import format_html

        url = reverse("admin:metering_ledgerentry_changelist") + f"?account__id__exact={obj.pk}"
        return format_html('<a href="{}">entries</a>', url)


class LedgerEntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("account", "amount", "balance_after", "created_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("account__owner")


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ("id", "key", "kind", "memo", "created_at")
    list_filter = ("kind",)
    search_fields = ("key", "memo")
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = (LedgerEntryInline,)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "transaction_link", "kind", "account", "amount", "balance_after")
    list_filter = ("transaction__kind", "account__kind", "account__currency", "account__is_system")
    list_select_related = ("transaction", "account__owner")
    search_fields = ("transaction__key", "account__owner__slug")
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="transaction")
    def transaction_link(self, obj: LedgerEntry):
        return admin_link(obj.transaction, obj.transaction.key)

    @admin.display(description="kind", ordering="transaction__kind")
    def kind(self, obj: LedgerEntry) -> str:
        return obj.transaction.kind


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = (
        "event_id",
        "provider",
        "buyer",
        "instrument",
        "occurred_at",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "billable_tokens",
        "received_at",
    )
    list_filter = ("instrument__tier", "instrument__region")
    list_select_related = ("provider", "buyer", "instrument__tier", "instrument__region")
    search_fields = ("event_id", "provider__slug", "buyer__slug")
    date_hierarchy = "occurred_at"
    show_full_result_count = False


@admin.register(Settlement)
class SettlementAdmin(ReadOnlyAdmin):
    list_display = (
        "trade_link",
        "instrument",
        "buyer",
        "provider",
        "quantity",
        "delivered_tokens",
        "unused_tokens",
        "overage_tokens",
        "value",
        "buyer_fee",
        "seller_fee",
        "provider_payout",
        "refund",
        "settled_at",
    )
    list_filter = ("trade__instrument__tier", "trade__instrument__region")
    list_select_related = (
        "trade__instrument__tier",
        "trade__instrument__region",
        "trade__buyer",
        "trade__seller",
        "transaction",
    )
    search_fields = ("=trade__id", "trade__buyer__slug", "trade__seller__slug")
    date_hierarchy = "settled_at"
    show_full_result_count = False

    @admin.display(description="contract", ordering="trade_id")
    def trade_link(self, obj: Settlement):
        return admin_link(obj.trade, f"#{obj.trade_id}")

    @admin.display(description="instrument")
    def instrument(self, obj: Settlement):
        return obj.trade.instrument.symbol

    @admin.display(description="buyer")
    def buyer(self, obj: Settlement):
        return obj.trade.buyer.slug

    @admin.display(description="provider")
    def provider(self, obj: Settlement):
        return obj.trade.seller.slug

    @admin.display(description="traded tokens")
    def quantity(self, obj: Settlement):
        return obj.trade.quantity

    def get_urls(self):
        view = self.admin_site.admin_view(self.report_view)
        return [path("report/", view, name="metering_settlement_report"), *super().get_urls()]

    def report_view(self, request: HttpRequest) -> HttpResponse:
        # admin_view already requires an active staff user; the report also needs the right
        # to view settlements (a superuser has it; give other staff the view permission).
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = ReportForm(request.GET or None)
        report = reconciliation = None
        if form.is_bound and form.is_valid():
            filters, group_by = form.filters(), form.cleaned_data["group_by"]
            export = request.GET.get("export")
            if export in ("csv", "xlsx"):
                return self._export(filters, group_by, export)
            report = reports.settlement_report_get(filters=filters, group_by=group_by)
            reconciliation = reports.reconciliation_get(filters=filters)
        elif not form.is_bound:
            form = ReportForm(initial=ReportForm.default_initial())
        query = request.GET.copy()
        query.pop("export", None)
        context = {
            **self.admin_site.each_context(request),
            "title": "Settlement report",
            "opts": self.model._meta,
            "form": form,
            "report": report,
            "reconciliation": reconciliation,
            "group_label": dict(reports.GroupBy.CHOICES).get(form.data.get("group_by", ""), "Group"),
            "chart": _chart_data(report) if report else None,
            "query": query.urlencode(),
            "currency": _currency(),
        }
        return TemplateResponse(request, "admin/metering/settlement/report.html", context)

    def _export(self, filters: reports.ReportFilters, group_by: str, fmt: str) -> HttpResponse:
        report = reports.settlement_report_get(filters=filters, group_by=group_by)
        data = reports.settlement_report_dataset(group_by=group_by, rows=report.rows, totals=report.totals)
        content_type = {
            "csv": "text/csv; charset=utf-8",
            "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }[fmt]
        response = HttpResponse(data.export(fmt), content_type=content_type)
        span = f"{filters.date_from or 'start'}_{filters.date_to or 'end'}"
        response["Content-Disposition"] = f'attachment; filename="settlements-by-{group_by}-{span}.{fmt}"'
        return response


def _currency() -> str:
    from django.conf import settings

    return settings.EXCHANGE_CURRENCY


def _chart_data(report: reports.SettlementReport) -> dict:
    return {
        "labels": [p.day.isoformat() for p in report.daily],
        "value": [str(p.gross_value) for p in report.daily],
        "fees": [str(p.fees) for p in report.daily],
    }


class ReportForm(forms.Form):
    date_from = forms.DateField(label="Delivery from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="to", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    provider = forms.ModelChoiceField(queryset=Account.objects.filter(is_provider=True), required=False)
    buyer = forms.ModelChoiceField(queryset=Account.objects.filter(is_buyer=True), required=False)
    tier = forms.ModelChoiceField(queryset=Tier.objects.all(), required=False)
    region = forms.ModelChoiceField(queryset=Region.objects.all(), required=False)
    instrument = forms.CharField(required=False, help_text="symbol, e.g. standard:cn-west-1:2026-11-26")
    group_by = forms.ChoiceField(choices=reports.GroupBy.CHOICES, initial=reports.GroupBy.DAY)

    @staticmethod
    def default_initial() -> dict:
        today = timezone.now().date()
        return {"date_from": today - dt.timedelta(days=30), "date_to": today, "group_by": reports.GroupBy.DAY}

    def clean_instrument(self) -> Instrument | None:
        symbol = self.cleaned_data["instrument"].strip()
        if not symbol:
            return None
        try:
            return instrument_get(symbol=symbol)
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def filters(self) -> reports.ReportFilters:
        d = self.cleaned_data
        return reports.ReportFilters(
            date_from=d.get("date_from"),
            date_to=d.get("date_to"),
            provider_id=d["provider"].pk if d.get("provider") else None,
            buyer_id=d["buyer"].pk if d.get("buyer") else None,
            tier_id=d["tier"].pk if d.get("tier") else None,
            region_id=d["region"].pk if d.get("region") else None,
            instrument_id=d["instrument"].pk if d.get("instrument") else None,
        )


class PendingFirst(admin.SimpleListFilter):
    """The queue: pending requests unless staff ask for another status."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [*FundingRequest.Status.choices, ("all", "All")]

    def choices(self, changelist):
        value = self.value() or FundingRequest.Status.PENDING
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or FundingRequest.Status.PENDING
        return queryset if value == "all" else queryset.filter(status=value)


@admin.register(FundingRequest)
class FundingRequestAdmin(ReadOnlyAdmin):
    """Deposit and withdrawal requests; staff decide them with the approve/reject actions."""

    list_display = (
        "id", "requested_at", "account", "kind", "amount", "currency", "reference", "status", "sandbox",
        "decided_by", "decided_at",
    )
    list_filter = (PendingFirst, "kind", "sandbox")
    list_select_related = ("account", "decided_by")
    search_fields = ("account__slug", "account__name", "reference")
    date_hierarchy = "requested_at"
    actions = ("approve", "reject")

    def has_decide_permission(self, request: HttpRequest) -> bool:
        # Deciding posts ledger transactions, like the deposit/withdraw actions on accounts.
        return request.user.has_perm("metering.add_ledgertransaction")

    def _decide(self, request: HttpRequest, queryset, *, service, verb: str) -> None:
        done = 0
        for request_id in queryset.values_list("pk", flat=True):
            try:
                decided = service(request_id=request_id, staff=request.user, note=f"{verb} in admin")
            except ServiceError as exc:
                self.message_user(request, f"#{request_id}: {exc.message}", messages.WARNING)
                continue
            txn = decided.decision_transaction.key if decided.decision_transaction_id else "no money moved"
            self.log_change(request, decided, f"{verb} {decided.kind} of {decided.amount} ({txn})")
            done += 1
        if done:
            self.message_user(request, f"{verb.capitalize()} {done} request(s).", messages.SUCCESS)

    @admin.action(description="Approve the selected requests (credit deposits, pay out withdrawals)", permissions=["decide"])
    def approve(self, request: HttpRequest, queryset) -> None:
        self._decide(request, queryset, service=funding.funding_request_approve, verb="approved")

    @admin.action(description="Reject the selected requests (withdrawals: held funds back to available)", permissions=["decide"])
    def reject(self, request: HttpRequest, queryset) -> None:
        self._decide(request, queryset, service=funding.funding_request_reject, verb="rejected")
