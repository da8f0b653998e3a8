"""Operators run the market from here: catalog, accounts, funds, halts, orders and keys.

Admin is thin: every action that changes the market calls the same service as the API and
the web UI (marketplace.services, metering.services), and writes an entry in Django's admin
log (LogEntry). Orders, trades and books are read-only: they only change through services.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from marketplace import services
from marketplace.cache_generation import CATALOG, generation_bump
from marketplace.display import price_text
from marketplace.models import (
    Account,
    ApiKey,
    Hardware,
    HardwareThroughput,
    IdempotencyRecord,
    Instrument,
    InstrumentBook,
    Membership,
    Order,
    Region,
    Tier,
    Trade,
)
from marketplace.services import ServiceError

admin.site.site_header = "Ciyuan Exchange operations"
admin.site.site_title = "Ciyuan Exchange admin"
admin.site.index_title = "Run the market"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Browsable, never edited here: the rows change only through services."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def admin_link(obj, label: str | None = None):
    """A link to the admin change page of `obj` (or '-' when there is none)."""
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else str(obj))


# --- catalog ----------------------------------------------------------------------------



class CatalogAdminMixin:
    """Bumps the catalog generation in the transaction of every admin edit, so every process's
    catalog cache (marketplace.catalog_cache) sees the edit on its next read."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        generation_bump(name=CATALOG)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        generation_bump(name=CATALOG)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        generation_bump(name=CATALOG)

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        generation_bump(name=CATALOG)


@admin.register(Tier)
class TierAdmin(CatalogAdminMixin, admin.ModelAdmin):
    list_display = (
        "code",
        "name",
        "latency_slo_ms",
        "output_token_weight",
        "cached_input_weight",
        "unused_capacity_share",
        "sort_order",
    )
    search_fields = ("code", "name")
    ordering = ("sort_order", "code")


class ThroughputInline(admin.TabularInline):
    model = HardwareThroughput
    extra = 0
    autocomplete_fields = ("tier",)


@admin.register(Hardware)
class HardwareAdmin(CatalogAdminMixin, admin.ModelAdmin):
    list_display = ("code", "name", "watts_per_accelerator")
    search_fields = ("code", "name")
    inlines = (ThroughputInline,)


@admin.register(HardwareThroughput)
class HardwareThroughputAdmin(CatalogAdminMixin, admin.ModelAdmin):
    list_display = ("hardware", "tier", "tokens_per_second")
    list_filter = ("hardware", "tier")
    list_select_related = ("hardware", "tier")
    search_fields = ("hardware__code", "tier__code")


@admin.register(Region)
class RegionAdmin(CatalogAdminMixin, admin.ModelAdmin):
    list_display = ("code", "name", "electricity_price_per_kwh")
    search_fields = ("code", "name")


# --- instruments ------------------------------------------------------------------------


class InstrumentForm(forms.ModelForm):
    class Meta:
        model = Instrument
        fields = ("tier", "region", "delivery_date", "lot_size", "tick_size", "enforce_energy_floor")


@admin.register(Instrument)
class InstrumentAdmin(CatalogAdminMixin, admin.ModelAdmin):
    form = InstrumentForm
    list_display = (
        "symbol",
        "delivery_date",
        "status",
        "lot_size",
        "tick_size",
        "enforce_energy_floor",
        "last_price",
        "best_bid",
        "best_ask",
    )
    list_filter = ("status", "tier", "region", "enforce_energy_floor")
    list_select_related = ("tier", "region", "book")
    search_fields = ("tier__code", "region__code", "delivery_date")
    date_hierarchy = "delivery_date"
    actions = ("halt", "resume")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # A live book's period, lot and tick are fixed: orders were sized against them.
        if obj is None:
            return ("status",)
        return ("tier", "region", "delivery_date", "lot_size", "tick_size", "status")

    def save_model(self, request: HttpRequest, obj: Instrument, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = services.instrument_create(
            tier=obj.tier,
            region=obj.region,
            day=obj.delivery_date,
            lot_size=obj.lot_size,
            tick_size=obj.tick_size,
            enforce_energy_floor=obj.enforce_energy_floor,
        )
        obj.pk = created.pk
        obj._state.adding = False
        obj._state.db = created._state.db

    @admin.display(description="last", ordering="book__last_price")
    def last_price(self, obj: Instrument):
        return price_text(obj.book.last_price) if getattr(obj, "book", None) else "–"

    @admin.display(description="bid")
    def best_bid(self, obj: Instrument):
        return price_text(obj.book.best_bid) if getattr(obj, "book", None) else "–"

    @admin.display(description="ask")
    def best_ask(self, obj: Instrument):
        return price_text(obj.book.best_ask) if getattr(obj, "book", None) else "–"

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Instrument], status: str, verb: str) -> None:
        done = 0
        for inst in queryset.select_related("tier", "region"):
            try:
                services.instrument_set_status(instrument=inst, status=status)
            except ServiceError as exc:
                self.message_user(request, f"{inst.symbol}: {exc.message}", messages.ERROR)
                continue
            self.log_change(request, inst, f"{verb} trading (status {status})")
            done += 1
        if done:
            self.message_user(request, f"{verb} {done} instrument(s).", messages.SUCCESS)

    @admin.action(description="Halt trading on the selected instruments", permissions=["change"])
    def halt(self, request: HttpRequest, queryset: QuerySet[Instrument]) -> None:
        self._set_status(request, queryset, Instrument.Status.HALTED, "Halted")

    @admin.action(description="Resume trading on the selected instruments", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Instrument]) -> None:
        self._set_status(request, queryset, Instrument.Status.OPEN, "Resumed")


@admin.register(InstrumentBook)
class InstrumentBookAdmin(ReadOnlyAdmin):
    list_display = (
        "instrument",
        "last_price",
        "best_bid",
        "best_ask",
        "last_matched_sequence",
        "batches",
        "last_trade_at",
    )
    list_select_related = ("instrument__tier", "instrument__region")
    list_filter = ("instrument__status", "instrument__tier", "instrument__region")
    search_fields = ("instrument__tier__code", "instrument__region__code")


# --- accounts, funds, keys --------------------------------------------------------------


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


class AccountAddForm(forms.ModelForm):
    class Meta:
        model = Account
        fields = ("name", "is_buyer", "is_provider")


class FundsForm(forms.Form):
    """The intermediate page of the deposit and withdraw actions."""

    amount = forms.DecimalField(max_digits=15, decimal_places=2, min_value=Decimal("0.01"))
    reason = forms.CharField(max_length=200, help_text="Kept as the memo of the ledger transaction.")
    # Makes the post idempotent: a double submit finds the ledger key already posted.
    token = forms.UUIDField(widget=forms.HiddenInput)


def _cents(value) -> Decimal | None:
    """A balance as the ledger holds it, to the cent: SQLite hands a subquery's NUMERIC back as
    a float-like decimal (495806.800000000)."""
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.01"))


def _balance_subquery(kind: str) -> Subquery:
    from metering.models import LedgerAccount

    return Subquery(LedgerAccount.objects.filter(owner_id=OuterRef("pk"), kind=kind).order_by().values("balance")[:1])


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "is_buyer", "is_provider", "available", "escrow", "owed", "created_at")
    list_filter = ("is_buyer", "is_provider")
    search_fields = ("name", "slug")
    readonly_fields = ("slug", "created_at", "ledger_accounts")
    inlines = (MembershipInline,)
    actions = ("deposit", "withdraw")

    def get_form(self, request: HttpRequest, obj=None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = AccountAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj=None):
        if obj is None:
            return ("name", "is_buyer", "is_provider")
        return ("name", "slug", "is_buyer", "is_provider", "created_at", "ledger_accounts")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Account]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                available_balance=_balance_subquery("available"),
                escrow_balance=_balance_subquery("escrow"),
                owed_balance=_balance_subquery("owed"),
            )
        )

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # accounts hold money and history

    def save_model(self, request: HttpRequest, obj: Account, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # New accounts through the service: slug and ledger accounts come with them.
        created = services.account_create(name=obj.name, is_buyer=obj.is_buyer, is_provider=obj.is_provider)
        for f in ("pk", "slug", "created_at"):
            setattr(obj, f, getattr(created, f))
        obj._state.adding = False
        obj._state.db = created._state.db

    @admin.display(description="available", ordering="available_balance")
    def available(self, obj: Account):
        return _cents(obj.available_balance)

    @admin.display(description="escrow", ordering="escrow_balance")
    def escrow(self, obj: Account):
        return _cents(obj.escrow_balance)

    @admin.display(description="owed", ordering="owed_balance")
    def owed(self, obj: Account):
        return _cents(obj.owed_balance)

    @admin.display(description="ledger accounts")
    def ledger_accounts(self, obj: Account):
        url = reverse("admin:metering_ledgeraccount_changelist") + f"?owner__id__exact={obj.pk}"
        return format_html('<a href="{}">balances and statements</a>', url)

    def has_funds_permission(self, request: HttpRequest) -> bool:
        # Moving money is posting ledger transactions.
        return request.user.has_perm("metering.add_ledgertransaction")

    def _funds_action(self, request: HttpRequest, queryset: QuerySet[Account], *, kind: str):
        from metering import services as funds
        from metering.ledger import AlreadyPosted

        service = funds.funds_deposit if kind == "deposit" else funds.funds_withdraw
        if "apply" in request.POST:
            form = FundsForm(request.POST)
            if form.is_valid():
                amount, reason, token = (
                    form.cleaned_data["amount"],
                    form.cleaned_data["reason"],
                    form.cleaned_data["token"],
                )
                done = 0
                for account in queryset:
                    try:
                        txn = service(
                            account=account, amount=amount, reason=reason, key=f"{kind}:admin:{token}:{account.pk}"
                        )
                    except ServiceError as exc:
                        self.message_user(request, f"{account.slug}: {exc.message}", messages.ERROR)
                        continue
                    except AlreadyPosted:
                        self.message_user(request, f"{account.slug}: this {kind} was already posted.", messages.WARNING)
                        continue
                    self.log_change(request, account, f"{kind} {amount} ({reason}) - ledger transaction {txn.key}")
                    done += 1
                if done:
                    self.message_user(
                        request, f"{kind.capitalize()} of {amount} posted to {done} account(s).", messages.SUCCESS
                    )
                return None
        else:
            form = FundsForm(initial={"token": uuid.uuid4()})
        context = {
            **self.admin_site.each_context(request),
            "title": f"{kind.capitalize()} funds",
            "kind": kind,
            "form": form,
            "accounts": list(queryset),
            "opts": self.model._meta,
            "action_name": kind,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "currency": _currency(),
        }
        return TemplateResponse(request, "admin/marketplace/account/funds_form.html", context)

    @admin.action(description="Deposit funds to the selected accounts", permissions=["funds"])
    def deposit(self, request: HttpRequest, queryset: QuerySet[Account]):
        return self._funds_action(request, queryset, kind="deposit")

    @admin.action(description="Withdraw funds from the selected accounts", permissions=["funds"])
    def withdraw(self, request: HttpRequest, queryset: QuerySet[Account]):
        return self._funds_action(request, queryset, kind="withdraw")


def _currency() -> str:
    from django.conf import settings

    return settings.EXCHANGE_CURRENCY


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "account", "role")
    list_filter = ("role",)
    list_select_related = ("user", "account")
    search_fields = ("user__username", "user__email", "account__slug", "account__name")
    autocomplete_fields = ("user", "account")


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ("account", "name", "scopes")

    def clean(self):
        data = super().clean()
        account, scopes = data.get("account"), data.get("scopes") or []
        # The same rule api_key_create enforces, shown on the form instead of as an error page.
        if account is not None and "meter" in scopes and not account.is_provider:
            self.add_error("scopes", "Only a provider account can have the meter scope.")
        return data


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("active", "active"), ("revoked", "revoked"))

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "account", "name", "scope_list", "is_active", "created_at", "last_used_at", "revoked_at")
    list_filter = (RevokedFilter, "account__is_provider")
    list_select_related = ("account",)
    search_fields = ("prefix", "name", "account__slug", "account__name")
    autocomplete_fields = ("account",)
    actions = ("revoke",)

    def get_form(self, request: HttpRequest, obj=None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj=None):
        if obj is None:
            return ("account", "name", "scopes")
        return ("account", "name", "prefix", "scopes", "created_by", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        if obj is None:
            return ()
        return ("account", "prefix", "scopes", "created_by", "created_at", "last_used_at", "revoked_at")

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # revoke instead: the key's history stays

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = services.api_key_create(
            account=obj.account, scopes=form.cleaned_data["scopes"], name=obj.name, created_by=request.user
        )
        obj.pk, obj.prefix, obj.key_hash, obj.scopes, obj.created_at = (
            key.pk,
            key.prefix,
            key.key_hash,
            key.scopes,
            key.created_at,
        )
        obj._state.adding = False
        obj._state.db = key._state.db
        self.message_user(
            request,
            f"API key created. Copy it now, it is not shown again: {raw}",
            messages.WARNING,
        )

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="active", boolean=True)
    def is_active(self, obj: ApiKey) -> bool:
        return obj.revoked_at is None

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        done = 0
        for key in queryset.select_related("account").filter(revoked_at__isnull=True):
            services.api_key_revoke(key=key)
            self.log_change(request, key, "Revoked API key")
            done += 1
        self.message_user(request, f"Revoked {done} key(s).", messages.SUCCESS)


# --- orders and trades (read-only) ------------------------------------------------------


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "account",
        "instrument",
        "side",
        "quantity",
        "filled_quantity",
        "price_shown",
        "time_in_force",
        "hardware",
        "status",
        "status_reason",
        "created_at",
    )
    list_filter = ("status", "side", "time_in_force", "instrument__tier", "instrument__region", "below_energy_floor")
    list_select_related = ("account", "instrument__tier", "instrument__region", "hardware")
    search_fields = ("=id", "account__slug", "client_order_id")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("cancel",)

    @admin.display(description="price", ordering="price")
    def price_shown(self, obj) -> str:
        return price_text(obj.price)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("marketplace.change_order")

    @admin.action(description="Cancel the selected orders (releases their escrow)", permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        done = 0
        for order in queryset.select_related("account"):
            try:
                # An operator's cancel is applied at once (in sequence, under the book lock).
                services.order_cancel(account=order.account, order_id=order.pk, wait_ms=0)
            except ServiceError as exc:
                self.message_user(request, f"Order {order.pk}: {exc.message}", messages.ERROR)
                continue
            self.log_change(request, order, "Cancelled order (by operator)")
            done += 1
        if done:
            self.message_user(request, f"Cancelled {done} order(s).", messages.SUCCESS)


class SettledFilter(admin.SimpleListFilter):
    title = "settlement"
    parameter_name = "settled"

    def lookups(self, request, model_admin):
        return (("yes", "settled"), ("no", "not settled"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(settlement__isnull=False)
        if self.value() == "no":
            return queryset.filter(settlement__isnull=True)
        return queryset


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    """Trades are the delivery contracts: the list shows both the fill and how it settled."""

    list_display = (
        "id",
        "instrument",
        "buyer",
        "seller",
        "hardware",
        "quantity",
        "price_shown",
        "aggressor_side",
        "buyer_escrow",
        "executed_at",
        "delivered",
        "settlement_link",
    )
    list_filter = (SettledFilter, "aggressor_side", "instrument__tier", "instrument__region", "hardware")
    list_select_related = ("instrument__tier", "instrument__region", "buyer", "seller", "hardware", "settlement")
    search_fields = ("=id", "buyer__slug", "seller__slug")
    date_hierarchy = "executed_at"
    show_full_result_count = False

    @admin.display(description="price", ordering="price")
    def price_shown(self, obj) -> str:
        return price_text(obj.price)

    @admin.display(description="delivered tokens")
    def delivered(self, obj: Trade):
        settlement = getattr(obj, "settlement", None)
        return settlement.delivered_tokens if settlement else "-"

    @admin.display(description="settlement")
    def settlement_link(self, obj: Trade):
        settlement = getattr(obj, "settlement", None)
        return admin_link(settlement, f"{settlement.value}") if settlement else "open"


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("account", "key", "response_status", "created_at")
    list_select_related = ("account",)
    list_filter = ("response_status",)
    search_fields = ("key", "account__slug")
