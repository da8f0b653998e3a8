"""Forms of the web UI: they parse what a browser sends; the services decide what is valid.

Field errors raised by a service (ServiceError.field) are put beside the form field that
carries that API field, in the service's own words, so the page says what the API would.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import UsernameField

from marketplace import order_terms, timeparse
from marketplace.models import ApiKey, Hardware, Instrument, Region, Side, Tier, TimeInForce
from marketplace.order_terms import MAX_ORDER_QUANTITY
from marketplace.services import ServiceError
from metering.models import LedgerAccount, LedgerTransaction

from .queries import MTOK


def add_service_error(form: forms.Form, exc: ServiceError, field_map: dict[str, str] | None = None) -> None:
    """Show a service refusal beside its field (API field name mapped to the form's)."""
    name = (field_map or {}).get(exc.field or "", exc.field)
    form.add_error(name if name in form.fields else None, exc.message)


class CheckedDateField(forms.DateField):
    """A date through the one range-checked parser (marketplace/timeparse.py): a date the
    queries can add a day to without overflowing, or a field error."""

    def to_python(self, value):
        if value in self.empty_values:
            return None
        if isinstance(value, dt.date):
            return value
        try:
            return timeparse.parse_date(value)
        except timeparse.TimeParseError as exc:
            raise forms.ValidationError(f"The date {exc.message}", code="invalid") from None


class SignupForm(forms.Form):
    ROLE_CHOICES = [
        ("buyer", "Buyer — I buy token capacity"),
        ("provider", "Provider — I sell capacity"),
        ("both", "Both"),
    ]

    account_name = forms.CharField(
        label="Organization name", max_length=120, help_text="Your company or team; it names your trading account."
    )
    role = forms.ChoiceField(label="I am a", choices=ROLE_CHOICES, widget=forms.RadioSelect, initial="buyer")
    username = UsernameField(label="Username", max_length=150)
    email = forms.EmailField(
        label="E-mail (optional)", required=False, help_text="Where a password-reset link is sent if you forget it."
    )
    password1 = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    password2 = forms.CharField(
        label="Password again", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    field_map = {"name": "account_name", "roles": "role", "username": "username"}

    def clean(self):
        data = super().clean()
        p1, p2 = data.get("password1"), data.get("password2")
        # Both checks, so a short password typed twice differently shows both problems.
        if p1:
            try:
                password_validation.validate_password(p1)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "The two passwords differ.")
        return data

    @property
    def roles(self) -> tuple[bool, bool]:
        role = self.cleaned_data["role"]
        return role in ("buyer", "both"), role in ("provider", "both")


def _no_separator(raw: str, *, example: str) -> str:
    """Refuse a comma, space or underscore in a number: "7,50" is 7.50 to half the world and
    750 to the other half, so guessing could place an order a hundred times off."""
    raw = raw.strip()
    if any(c in raw for c in ", _'\u00a0"):
        raise forms.ValidationError(
            f"Write numbers with a point for decimals and no thousands separator, e.g. {example}."
        )
    return raw


class OrderForm(forms.Form):
    """Order entry. Quantity is entered in Mtok (millions of tokens), as prices are quoted.

    `form_token` is new on every render of an empty form: a double click or a resent form
    carries the same token, and the view places it once (the token becomes the order's client
    order id when the trader gave none).
    """

    side = forms.ChoiceField(choices=Side.choices, widget=forms.RadioSelect, initial=Side.BUY)
    quantity_mtok = forms.CharField(
        label="Quantity (Mtok)", widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"})
    )
    price = forms.CharField(
        label="Limit price per Mtok", widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"})
    )
    time_in_force = forms.ChoiceField(label="Time in force", choices=TimeInForce.choices, initial=TimeInForce.GTC)
    hardware = forms.ChoiceField(label="Hardware (sell)", required=False)
    allowed_hardware = forms.MultipleChoiceField(
        label="Allowed hardware (buy; none ticked = any)", required=False, widget=forms.CheckboxSelectMultiple
    )
    client_order_id = forms.CharField(label="Client order id (optional)", required=False, max_length=64)
    form_token = forms.CharField(widget=forms.HiddenInput, required=False, max_length=40)
    # Set by the "place it anyway" button of the price-protection confirmation (views.order_place).
    confirm_price = forms.BooleanField(widget=forms.HiddenInput, required=False)
    # API field -> form field, for ServiceError.field
    field_map = {"quantity": "quantity_mtok"}

    def __init__(self, *args, instrument: Instrument, **kwargs):
        super().__init__(*args, **kwargs)
        self.instrument = instrument
        if not self.is_bound:
            self.initial.setdefault("form_token", uuid.uuid4().hex)
        codes = [(h.code, f"{h.code} — {h.name}") for h in Hardware.objects.all()]
        self.fields["hardware"].choices = [("", "choose hardware")] + codes
        self.fields["allowed_hardware"].choices = codes

    def clean_quantity_mtok(self) -> int:
        """Mtok as typed -> integer tokens; the lot-size rule is the service's to apply."""
        raw = _no_separator(self.cleaned_data["quantity_mtok"], example="1.5")
        try:
            mtok = Decimal(raw)
        except InvalidOperation:
            raise forms.ValidationError("quantity must be a positive whole number of tokens.") from None
        if mtok.is_finite() and mtok > MAX_ORDER_QUANTITY // MTOK:
            # Compared before multiplying: 1e999999999 x 1e6 would overflow the decimal context.
            raise forms.ValidationError(f"quantity is at most {MAX_ORDER_QUANTITY // MTOK:,} Mtok per order.")
        if not mtok.is_finite() or mtok <= 0:
            raise forms.ValidationError("quantity must be a positive whole number of tokens.")
        tokens = mtok * MTOK
        if not tokens.is_finite() or tokens <= 0 or tokens != tokens.to_integral_value():
            raise forms.ValidationError("quantity must be a positive whole number of tokens.")
        # The service's own check, here too so the live preview never computes with it.
        try:
            return order_terms.quantity_check(quantity=int(tokens), lot_size=self.instrument.lot_size)
        except order_terms.OrderTermsError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_price(self) -> Decimal:
        raw = _no_separator(self.cleaned_data["price"], example="7.50")
        try:
            price = Decimal(raw)
        except InvalidOperation:
            raise forms.ValidationError("price must be a positive number.") from None
        try:
            return order_terms.price_check(price=price, tick_size=self.instrument.tick_size)
        except order_terms.OrderTermsError as exc:
            raise forms.ValidationError(exc.message) from None

    def service_kwargs(self) -> dict:
        d = self.cleaned_data
        return {
            "side": d["side"],
            "quantity": d["quantity_mtok"],
            "price": d["price"],
            "time_in_force": d["time_in_force"],
            "hardware": (d.get("hardware") or None) if d["side"] == Side.SELL else None,
            "allowed_hardware": tuple(d.get("allowed_hardware") or ()) if d["side"] == Side.BUY else (),
            "client_order_id": d.get("client_order_id") or self.token_client_order_id(),
            "price_band_override": bool(d.get("confirm_price")),
        }

    def token_client_order_id(self) -> str | None:
        token = (self.cleaned_data.get("form_token") or "").strip()
        return f"web-{token}" if token.isalnum() else None


class EmailForm(forms.Form):
    email = forms.EmailField(
        label="E-mail", required=False, help_text="Password-reset links go here. Leave empty for none."
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(label="Name (what uses this key)", max_length=120, required=False)
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        initial=["read"],
    )


class MarketFilterForm(forms.Form):
    tier = forms.ChoiceField(label="Tier", required=False)
    region = forms.ChoiceField(label="Region", required=False)
    day = CheckedDateField(label="Delivery day", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tier"].choices = [("", "all tiers")] + [(t.code, t.name) for t in Tier.objects.all()]
        self.fields["region"].choices = [("", "all regions")] + [(r.code, r.code) for r in Region.objects.all()]


class StatementFilterForm(forms.Form):
    ledger_kind = forms.ChoiceField(
        label="Balance",
        required=False,
        choices=[("", "all")]
        + [(k, k) for k in (LedgerAccount.Kind.AVAILABLE, LedgerAccount.Kind.ESCROW, LedgerAccount.Kind.OWED)],
    )
    transaction_kind = forms.ChoiceField(
        label="Kind", required=False, choices=[("", "all")] + list(LedgerTransaction.Kind.choices)
    )
    date_from = CheckedDateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = CheckedDateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def filters(self) -> dict:
        if not self.is_valid():
            return {}
        return {k: v for k, v in self.cleaned_data.items() if v}
