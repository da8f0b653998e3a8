"""Web pages: parse the request, call one service or selector, render a template.

Pages under "my ..." act for the signed-in user's account (their first membership); a user
only ever sees that account's orders, contracts, ledger and keys. Live parts of a page are
htmx partials polled every couple of seconds (the same view renders page and partial).
"""

from __future__ import annotations

import csv
from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from marketplace import order_terms, roles, selectors, services, two_factor
from marketplace.market_snapshot import snapshot_get
from marketplace.models import Instrument, Region, Side, Tier
from marketplace.services import NotFound, ServiceError
from metering.selectors import balances_get
from pricing import selectors as pricing_selectors

from . import queries
from .forms import ApiKeyForm, MarketFilterForm, OrderForm, SignupForm, StatementFilterForm, add_service_error
from .pages import account_required
from .pages import page as _page
from .templatetags.web_tags import price as price_text


def _partial(request: HttpRequest) -> bool:
    """An htmx request for a page's live part (a history restore wants the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def _instrument_or_404(symbol: str) -> Instrument:
    try:
        return services.instrument_get(symbol=symbol)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _safe_next(request: HttpRequest, default: str) -> str:
    nxt = request.POST.get("next") or request.GET.get("next") or ""
    if nxt and url_has_allowed_host_and_scheme(
        nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return nxt
    return default


# --- sign up ------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    # Bound on every POST, an empty one too (`request.POST or None` left an empty POST unbound,
    # with no cleaned_data to read below: a 500 the URL fuzz found).
    form = SignupForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        form.is_valid()
        # Every field's problem at once, the names' too (taken username, taken organization).
        refusals = services.account_signup_refusals(
            username=form.cleaned_data.get("username") or "",
            account_name=form.cleaned_data.get("account_name") or "",
        )
        for exc in refusals:
            add_service_error(form, exc, SignupForm.field_map)
    if request.method == "POST" and form.is_valid():
        is_buyer, is_provider = form.roles
        try:
            user, account = services.account_signup(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password1"],
                account_name=form.cleaned_data["account_name"],
                is_buyer=is_buyer,
                is_provider=is_provider,
                email=form.cleaned_data.get("email") or "",
            )
        except ServiceError as exc:
            add_service_error(form, exc, SignupForm.field_map)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome to Ciyuan Exchange. Your account {account.name} is ready.")
            return redirect("web:balances" if is_buyer else "web:provider")
    return _page(request, "web/signup.html", {"form": form}, status=400 if form.errors else 200)


# --- markets ------------------------------------------------------------------------------


@require_GET
def markets(request: HttpRequest) -> HttpResponse:
    form = MarketFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    rows = queries.market_overview(
        tier=filters.get("tier") or "", region=filters.get("region") or "", day=filters.get("day")
    )
    context = {"form": form, "rows": rows}
    if _partial(request):
        return _page(request, "web/partials/market_rows.html", context)
    context["index"] = queries.price_index()
    context["board"] = queries.market_board()
    return _page(request, "web/markets.html", context)


# --- one instrument -----------------------------------------------------------------------


def _live_context(request: HttpRequest, inst: Instrument) -> dict[str, Any]:
    interval = request.GET.get("interval", "1h")
    if interval not in queries.INTERVALS:
        interval = "1h"
    book = snapshot_get(instrument_id=inst.pk).depth(20)  # published by the matcher
    stats = pricing_selectors.instrument_stats(instrument=inst)
    account = getattr(request, "account", None) or queries.account_for_user(user=request.user)
    return {
        "instrument": inst,
        "book": book,
        "stats": stats,
        "trades": list(selectors.instrument_trades(instrument=inst).order_by("-match_sequence")[:25]),
        "interval": interval,
        "intervals": list(queries.INTERVALS),
        "depth": queries.depth_series(book=book),
        "candles": queries.candle_series(instrument=inst, interval=interval),
        "my_orders": queries.orders_page(account=account, live=True, instrument=inst) if account else [],
        "my_recent": queries.orders_page(account=account, live=False, instrument=inst, limit=10) if account else [],
        "account": account,
        "auction": queries.auction_panel(instrument=inst, account=account),
    }


def _order_entry_context(request: HttpRequest, inst: Instrument, form: OrderForm | None = None) -> dict[str, Any]:
    account = getattr(request, "account", None) or queries.account_for_user(user=request.user)
    if form is None:
        initial = {"side": Side.SELL if account and account.is_provider and not account.is_buyer else Side.BUY}
        form = OrderForm(instrument=inst, initial=initial)
    return {
        "instrument": inst,
        "form": form,
        "account": account,
        "balances": balances_get(account=account) if account else None,
        "floors": queries.floors_for_instrument(instrument=inst) if account and account.is_provider else [],
    }


@require_GET
def instrument(request: HttpRequest, symbol: str) -> HttpResponse:
    inst = _instrument_or_404(symbol)
    context = _live_context(request, inst)
    if _partial(request):
        return _page(request, "web/partials/instrument_live.html", context)
    context.update(_order_entry_context(request, inst))
    return _page(request, "web/instrument.html", context)


@require_GET
def order_preview(request: HttpRequest, symbol: str) -> HttpResponse:
    """What the order being typed would do: reserve, quote for its size, floor and suggestion."""
    inst = _instrument_or_404(symbol)
    account = queries.account_for_user(user=request.user)
    form = OrderForm(request.GET, instrument=inst)
    form.is_valid()
    data = form.cleaned_data
    side = data.get("side") or Side.BUY
    quantity = data.get("quantity_mtok")
    price = data.get("price")
    preview: dict[str, Any] = {"side": side, "quantity": quantity, "price": price}
    hardware = data.get("hardware") or None
    if quantity and quantity % inst.lot_size == 0 and (side == Side.BUY or hardware):
        preview["quote"] = queries.quote_get(
            instrument=inst,
            side=side,
            quantity=quantity,
            allowed_hardware=tuple(data.get("allowed_hardware") or ()),
            hardware=hardware,
            account=account,
        )
    if side == Side.BUY and quantity and price and quantity % inst.lot_size == 0:
        preview["reserve"] = queries.order_reserve(instrument=inst, price=price, quantity=quantity)
        preview["unused"] = queries.unused_capacity_charge(instrument=inst, price=price, quantity=quantity)
    if side == Side.SELL and getattr(preview.get("quote"), "notional", None):
        q = preview["quote"]  # the quote's own taker fee: what a sell filling now would pay
        preview["proceeds"] = {"notional": q.notional, "fee": q.taker_fee, "net": q.notional - q.taker_fee}
    if side == Side.SELL and hardware:
        suggestion = queries.suggested_price_get(instrument=inst, hardware=hardware)
        preview["suggestion"] = suggestion
        preview["below_floor"] = bool(
            suggestion and suggestion.floor is not None and price is not None and price < suggestion.floor
        )
    context = {
        "instrument": inst,
        "preview": preview,
        "account": account,
        "balances": balances_get(account=account) if account else None,
    }
    return _page(request, "web/partials/order_preview.html", context)


@require_POST
@account_required
def order_place(request: HttpRequest, symbol: str) -> HttpResponse:
    inst = _instrument_or_404(symbol)
    form = OrderForm(request.POST, instrument=inst)
    placed = None
    band_confirm = None
    if form.is_valid():
        kwargs = form.service_kwargs()
        try:
            placed = services.order_place(account=request.account, instrument=inst, **kwargs)
        except ServiceError as exc:
            placed = _resent_form_order(request, exc, kwargs["client_order_id"], form.token_client_order_id())
            if placed is None and exc.code == "price_out_of_band":
                band_confirm = _band_confirmation(exc, kwargs["price"])
            elif placed is None:
                add_service_error(form, exc, OrderForm.field_map)
            if placed is None and exc.code == "insufficient_funds":
                form.add_error(None, "Request a deposit on the Funding page to fund your account.")
    if placed is not None:
        note = f"Order #{placed.pk} placed: {placed.side} {placed.quantity / queries.TOKENS_PER_PRICE_UNIT:g} Mtok at {price_text(placed.price)}."
        auction = queries.auction_panel(instrument=inst, account=None)
        if auction is not None and auction.collecting:
            note += (
                f" It joins the day-ahead call auction: every order collected until gate closure at "
                f"{auction.gate_closure_at:%Y-%m-%d %H:%M} UTC clears at one price, so it is not matched before then."
                " See the auction panel above for the indicative price."
            )
        else:
            note += " It is matched within seconds."
        if placed.below_energy_floor:
            note += " Note: this price is below the energy-cost floor for its hardware."
        if not request.htmx:
            messages.success(request, note)
            return redirect(inst.get_absolute_url())
        keep = {k: form.cleaned_data.get(k) for k in ("side", "time_in_force", "hardware", "allowed_hardware")}
        keep.update(price=request.POST.get("price", ""), quantity_mtok=request.POST.get("quantity_mtok", ""))
        context = _order_entry_context(request, inst, OrderForm(instrument=inst, initial=keep))
        context["placed_note"] = note
        response = _page(request, "web/partials/order_entry.html", context)
        response["HX-Trigger"] = "order-placed"
        return response
    context = _order_entry_context(request, inst, form)
    context["band_confirm"] = band_confirm
    if _partial(request):
        # htmx swaps 2xx only; the form with its errors is the answer, so 200 here.
        return _page(request, "web/partials/order_entry.html", context)
    context.update(_live_context(request, inst))
    return _page(request, "web/instrument.html", context, status=400)


def _band_confirmation(exc: ServiceError, price) -> dict[str, str]:
    """Price protection in the form: the refusal becomes a question. The same form (same
    token, so a double click still places once) comes back with a button that resends it
    with confirm_price, which the service takes as the trader's override."""
    message = exc.message.removesuffix(order_terms.PRICE_BAND_REMEDY).strip()
    return {"message": message, "price": price_text(price)}


def _resent_form_order(request: HttpRequest, exc: ServiceError, client_order_id: str | None, token_id: str | None):
    """The order a double click or a resent form already placed, or None.

    Only for the form's own token: a client order id the trader typed and reused is an error.
    """
    if exc.code != "duplicate_client_order_id" or token_id is None or client_order_id != token_id:
        return None
    return selectors.orders_for_account(account=request.account).filter(client_order_id=token_id).first()


# --- my orders ----------------------------------------------------------------------------


@require_GET
@account_required
def orders(request: HttpRequest) -> HttpResponse:
    context = {
        "open_orders": queries.orders_page(account=request.account, live=True),
        "past_orders": queries.orders_page(account=request.account, live=False, limit=100),
        "fills": list(
            selectors.trades_for_account(account=request.account).select_related("buy_order", "sell_order")[:50]
        ),
    }
    if _partial(request):
        return _page(request, "web/partials/orders_live.html", context)
    return _page(request, "web/orders.html", context)


@require_POST
@account_required
def order_cancel(request: HttpRequest, order_id: int) -> HttpResponse:
    try:
        order = services.order_cancel(account=request.account, order_id=order_id)
    except NotFound as exc:
        raise Http404(exc.message) from None
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Order #{order.pk} cancelled; its unfilled escrow is back in available.")
    return redirect(_safe_next(request, reverse("web:orders")))


# --- contracts and deliveries -------------------------------------------------------------


@require_GET
@account_required
def contracts(request: HttpRequest) -> HttpResponse:
    rows = queries.contracts_for_account(account=request.account)
    return _page(
        request,
        "web/contracts.html",
        {
            "open_rows": [r for r in rows if r.settlement is None],
            "settled_rows": [r for r in rows if r.settlement is not None],
            "usage": queries.usage_by_day(account=request.account),
        },
    )


# --- balances and statement ---------------------------------------------------------------


@require_GET
@account_required
def balances(request: HttpRequest) -> HttpResponse:
    form = StatementFilterForm(request.GET or None)
    entries = queries.statement_entries(account=request.account, **form.filters())
    return _page(
        request,
        "web/balances.html",
        {
            "balances": balances_get(account=request.account),
            "form": form,
            "entries": entries[:200],
            "query": request.GET.urlencode(),
        },
    )


class _Echo:
    def write(self, value: str) -> str:
        return value


@require_GET
@account_required
def statement_csv(request: HttpRequest) -> StreamingHttpResponse:
    form = StatementFilterForm(request.GET or None)
    entries = queries.statement_entries(account=request.account, **form.filters())
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(
            ["time_utc", "transaction", "kind", "balance", "amount", "running_balance", "currency", "memo"]
        )
        for e in entries.iterator(chunk_size=1000):
            yield writer.writerow(
                [
                    e.created_at.isoformat(),
                    e.transaction.key,
                    e.transaction.kind,
                    e.account.kind,
                    str(e.amount),
                    "" if e.balance_after is None else str(e.balance_after),
                    e.account.currency,
                    e.transaction.memo,
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="statement-{request.account.slug}.csv"'
    return response


# --- provider -----------------------------------------------------------------------------


@require_GET
@account_required
def provider(request: HttpRequest) -> HttpResponse:
    account = request.account
    listings = list(selectors.orders_for_account(account=account).filter(side=Side.SELL).order_by("-id")[:200])
    tier = request.GET.get("tier") or "standard"
    contracts = queries.provider_contracts(account=account)
    return _page(
        request,
        "web/provider.html",
        {
            "contracts": contracts,
            "usage_example": queries.usage_example(rows=contracts),
            "base_url": request.build_absolute_uri("/").rstrip("/"),
            "listings": listings,
            "capacity": queries.provider_capacity(account=account),
            "revenue": queries.provider_revenue_by_day(account=account),
            "floor_table": queries.provider_floor_table(tier_code=tier),
            "floor_tier": tier,
            "tiers": list(Tier.objects.all()),
            "regions": list(Region.objects.all()),
        },
    )


# --- API keys -----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@account_required
def api_keys(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            roles.account_permission_check(user=request.user, account=request.account, action="api_key_manage")
            two_factor.two_factor_required(request=request, action="create API keys")
            key, raw = services.api_key_create(
                account=request.account,
                scopes=form.cleaned_data["scopes"],
                name=form.cleaned_data["name"],
                created_by=request.user,
            )
        except ServiceError as exc:
            add_service_error(form, exc)
            status = exc.status
        else:
            # Shown once, in this response only; the database keeps a hash.
            created = {"key": key, "raw": raw}
            form = ApiKeyForm()
    keys = queries.api_keys_for_account(account=request.account)
    response = _page(request, "web/api_keys.html", {"form": form, "keys": keys, "created": created}, status=status)
    if created:
        response["Cache-Control"] = "no-store"
    return response


@require_POST
@account_required
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = queries.api_key_for_account(account=request.account, key_id=key_id)
    if key is None:
        raise Http404("No such key in your account.")
    try:
        roles.account_permission_check(user=request.user, account=request.account, action="api_key_manage")
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("web:api_keys")
    services.api_key_revoke(key=key)
    messages.success(request, f"Key {key.prefix}… revoked; requests with it are refused from now on.")
    return redirect("web:api_keys")
