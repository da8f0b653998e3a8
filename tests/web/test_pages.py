"""View tests of every web page: what it shows, who may see it, CSRF, validation errors.

A user only ever sees their own account's orders, contracts, ledger and keys: each page is
checked with a second account's data present, through the page itself.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from marketplace.models import Account, ApiKey, Membership, Order, OrderStatus, Trade
from marketplace.web import queries
from metering.models import LedgerAccount, UsageEvent
from metering.selectors import balances_get
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants

from .conftest import PASSWORD, logged_in, member

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _match(instrument) -> None:
    instrument_match(instrument_id=instrument.pk)


def _trade(buyer, provider, instrument, mtok=10, price="2.00") -> Trade:
    """A resting buy crossed by a provider's sell: one contract."""
    factories.place(buyer, instrument, "buy", mtok, price)
    _match(instrument)
    factories.place(provider, instrument, "sell", mtok, price)
    _match(instrument)
    return Trade.objects.filter(buyer=buyer, seller=provider).latest("id")


# --- sign up, log in, log out -------------------------------------------------------------


def test_signup_creates_account_user_and_membership_and_logs_in(catalog):
    client = Client()
    response = client.post(
        reverse("web:signup"),
        {
            "account_name": "Moonshot Agents",
            "role": "both",
            "username": "moon",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    account = Account.objects.get(name="Moonshot Agents")
    assert account.is_buyer and account.is_provider
    user = get_user_model().objects.get(username="moon")
    assert Membership.objects.filter(account=account, user=user, role="owner").exists()
    assert LedgerAccount.objects.filter(owner=account).count() == 3
    page = client.get(reverse("web:balances"))
    assert page.status_code == 200
    assert "Moonshot Agents" in page.content.decode()
    assert "request a deposit" in page.content.decode()


@pytest.mark.parametrize(("role", "buyer", "provider"), [("buyer", True, False), ("provider", False, True)])
def test_signup_role_sets_account_kind(catalog, role, buyer, provider):
    Client().post(
        reverse("web:signup"),
        {
            "account_name": f"Acme {role}",
            "role": role,
            "username": f"acme-{role}",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    account = Account.objects.get(name=f"Acme {role}")
    assert (account.is_buyer, account.is_provider) == (buyer, provider)


def test_signup_shows_errors_beside_fields_and_creates_nothing(buyer):
    response = Client().post(
        reverse("web:signup"),
        {
            "account_name": buyer.name,
            "role": "buyer",
            "username": "newbie",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert "already exists" in form.errors["account_name"][0]
    assert not get_user_model().objects.filter(username="newbie").exists()

    response = Client().post(
        reverse("web:signup"),
        {"account_name": "Fresh Co", "role": "buyer", "username": "fresh", "password1": PASSWORD, "password2": "other"},
    )
    assert response.context["form"].errors["password2"] == ["The two passwords differ."]
    assert 'id="id_password2_errors"' in response.content.decode()
    assert not Account.objects.filter(name="Fresh Co").exists()


def test_signup_refuses_a_post_without_csrf_token(catalog):
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        reverse("web:signup"),
        {"account_name": "No Token", "role": "buyer", "username": "nt", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 403
    assert not Account.objects.filter(name="No Token").exists()


def test_login_and_logout(buyer):
    user = member(buyer, "alice")
    client = Client()
    page = client.get(reverse("web:login"))
    assert page.status_code == 200 and 'for="id_username"' in page.content.decode()
    bad = client.post(reverse("web:login"), {"username": "alice", "password": "wrong"})
    assert bad.status_code == 200 and "correct username and password" in bad.content.decode()
    ok = client.post(reverse("web:login"), {"username": "alice", "password": PASSWORD})
    assert ok.status_code == 302
    assert client.get(reverse("web:orders")).status_code == 200
    assert client.get(reverse("web:logout")).status_code == 405  # log out is a POST with CSRF
    session_key = client.session.session_key
    assert Session.objects.filter(session_key=session_key).exists()
    assert client.session.get("_auth_user_id") == str(user.pk)
    client.post(reverse("web:logout"))
    assert client.get(reverse("web:orders")).status_code == 302
    # Logging out ends the session on the server too: the old cookie opens nothing.
    assert not Session.objects.filter(session_key=session_key).exists()
    replay = Client()
    replay.cookies["sessionid"] = session_key
    assert replay.get(reverse("web:orders")).status_code == 302


@pytest.mark.parametrize("name", ["orders", "contracts", "balances", "statement_csv", "provider", "api_keys"])
def test_account_pages_require_login(db, name):
    response = Client().get(reverse(f"web:{name}"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("web:login"))


def test_user_without_account_is_told_how_to_get_one(db):
    staff = get_user_model().objects.create_user("staffer", password=PASSWORD, is_staff=True)
    response = logged_in(staff).get(reverse("web:orders"))
    assert response.status_code == 403
    assert "belongs to no trading account" in response.content.decode()


# --- markets ------------------------------------------------------------------------------


def test_markets_lists_open_instruments_with_prices_and_filters(instrument, buyer, provider):
    other = factories.open_instrument(tier="frontier", region="us-east-1")
    _trade(buyer, provider, instrument, mtok=3, price="2.10")
    factories.place(buyer, instrument, "buy", 2, "2.00")
    factories.place(provider, instrument, "sell", 5, "2.30")
    _match(instrument)

    page = Client().get(reverse("web:markets")).content.decode()
    assert instrument.symbol in page and other.symbol in page
    row = page[page.index(instrument.symbol) :]
    row = row[: row.index("</tr>")]
    assert "2.10" in row and "2.00" in row and "2.30" in row and ">3<" in row  # last, bid, ask, 24h Mtok

    filtered = Client().get(reverse("web:markets"), {"tier": "frontier"}).content.decode()
    assert other.symbol in filtered and instrument.symbol not in filtered
    by_day = Client().get(reverse("web:markets"), {"day": "2001-01-01"}).content.decode()
    assert "No open instrument matches" in by_day

    partial = Client().get(reverse("web:markets"), {"region": "cn-west-1"}, **HX)
    body = partial.content.decode()
    assert "<html" not in body and instrument.symbol in body and other.symbol not in body


def test_markets_shows_the_price_index_per_tier_once_published(instrument, buyer, provider):
    from pricing.index import index_publish

    _trade(buyer, provider, instrument, mtok=3, price="2.10")
    index_publish()
    response = Client().get(reverse("web:markets"))
    body = response.content.decode()
    assert "Token Price Index" in body
    assert [(s.tier, s.value) for s in response.context["index"]] == [("standard", Decimal("2.10"))]
    assert 'id="index-standard"' in body and 'data-series="index-standard"' in body


def test_markets_hides_the_price_index_when_none_is_published(instrument):
    response = Client().get(reverse("web:markets"))
    assert response.status_code == 200
    assert not response.context["index"]
    assert "Token Price Index" not in response.content.decode()


# --- instrument page and order entry ------------------------------------------------------


def test_instrument_page_shows_book_with_hardware_trades_and_login_prompt(instrument, buyer, provider):
    _trade(buyer, provider, instrument, mtok=2, price="2.05")
    factories.place(buyer, instrument, "buy", 7, "1.99")
    factories.place(provider, instrument, "sell", 4, "2.20", hardware="b200")
    _match(instrument)
    page = Client().get(instrument.get_absolute_url()).content.decode()
    assert "1.99" in page and "2.20" in page
    assert "b200 4" in page  # hardware on asks
    assert "2.05" in page  # last trade
    assert 'id="depth-data"' in page and 'id="candles-data"' in page
    assert "to trade this instrument" in page  # anonymous: log in to trade
    assert 'id="order-form"' not in page


def test_instrument_live_partial_is_out_of_band_parts_only(instrument, buyer_web):
    response = buyer_web.get(instrument.get_absolute_url(), {"interval": "1m"}, **HX)
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    for part in ("instrument-summary", "book", "trades", "my-orders", "chart-data"):
        assert f'id="{part}" hx-swap-oob="true"' in body
    assert '"interval": "1m"' in body


def test_unknown_instrument_is_404(db):
    assert Client().get(reverse("web:instrument", args=["nope:nowhere:2020-01-01"])).status_code == 404
    assert Client().get(reverse("web:instrument", args=["garbage"])).status_code == 404


def _order_post(client, instrument, htmx=False, **fields):
    data = {"side": "buy", "quantity_mtok": "10", "price": "2.00", "time_in_force": "gtc"}
    data.update(fields)
    return client.post(reverse("web:order_place", args=[instrument.symbol]), data, **(HX if htmx else {}))


def test_placing_a_buy_records_it_and_reserves_escrow(instrument, buyer, buyer_web):
    before = balances_get(account=buyer)
    response = _order_post(buyer_web, instrument, quantity_mtok="10", price="2.00", allowed_hardware=["h100", "h200"])
    assert response.status_code == 302
    order = Order.objects.get(account=buyer)
    assert (order.side, order.quantity, order.price) == ("buy", 10_000_000, Decimal("2.00"))
    assert order.allowed_hardware == ["h100", "h200"]
    after = balances_get(account=buyer)
    # 10 Mtok x 2.00 = 20.00, + the highest fee (10 bps) = 20.02, rounded up once
    assert after["escrow"] == before["escrow"] + Decimal("20.02")
    assert after["available"] == before["available"] - Decimal("20.02")
    page = buyer_web.get(instrument.get_absolute_url()).content.decode()
    assert f"Order #{order.pk} placed" in page
    assert_invariants()


def test_placing_by_htmx_returns_the_form_and_triggers_a_refresh(instrument, provider, provider_web):
    response = _order_post(
        provider_web, instrument, htmx=True, side="sell", quantity_mtok="5", price="2.50", hardware="h200"
    )
    assert response.status_code == 200
    assert response["HX-Trigger"] == "order-placed"
    body = response.content.decode()
    assert "<html" not in body and 'id="order-entry"' in body and "placed: sell 5 Mtok at 2.50." in body
    order = Order.objects.get(account=provider)
    assert order.hardware.code == "h200" and order.quantity == 5_000_000


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"quantity_mtok": "1.5"}, "quantity_mtok", "quantity must be a multiple of the lot size (1,000,000 tokens)."),
        ({"price": "2.005"}, "price", "price must be a multiple of the tick size (0.01)."),
        ({"quantity_mtok": "ten"}, "quantity_mtok", "quantity must be a positive whole number of tokens."),
        ({"price": "-1"}, "price", "price must be a positive number."),
        ({"side": "sell", "hardware": ""}, "hardware", "A sell order names its hardware (e.g. h100)."),
    ],
)
def test_order_form_shows_the_apis_words_beside_the_field(instrument, catalog, db, fields, field, message):
    acct = factories.AccountFactory(is_buyer=True, is_provider=True)
    factories.fund(acct, Decimal("1000"))
    client = logged_in(member(acct))
    response = _order_post(client, instrument, **fields)
    assert response.status_code == 400
    assert response.context["form"].errors[field] == [message]
    body = response.content.decode()
    assert f'id="id_{field}_errors"' in body and message.replace("'", "&#x27;") in body
    if field != "hardware":  # a text input names its error for screen readers
        assert f'aria-describedby="id_{field}_errors"' in body
    htmx = _order_post(client, instrument, htmx=True, **fields)
    assert htmx.status_code == 200 and message.replace("'", "&#x27;") in htmx.content.decode()
    assert not Order.objects.filter(account=acct).exists()


def test_insufficient_funds_says_how_to_get_a_deposit(instrument, catalog):
    poor = factories.AccountFactory(is_buyer=True)
    client = logged_in(member(poor))
    response = _order_post(client, instrument, quantity_mtok="100", price="5.00")
    assert response.status_code == 400
    errors = response.context["form"].non_field_errors()
    assert any("needs 500.50 CNY in escrow" in e for e in errors)  # 500.00 + 10 bps, rounded up once
    assert any("deposit" in e for e in errors)
    assert not Order.objects.filter(account=poor).exists()


def test_a_buyer_cannot_sell(instrument, buyer, buyer_web):
    response = _order_post(buyer_web, instrument, side="sell", hardware="h100")
    assert "Only provider accounts can list capacity (sell)." in response.context["form"].non_field_errors()
    assert not Order.objects.filter(account=buyer).exists()


def test_order_entry_needs_login_and_csrf(instrument, buyer):
    anon = _order_post(Client(), instrument)
    assert anon.status_code == 302 and reverse("web:login") in anon["Location"]
    client = Client(enforce_csrf_checks=True)
    client.force_login(member(buyer))
    assert _order_post(client, instrument).status_code == 403
    assert not Order.objects.exists()


def test_order_preview_shows_reserve_quote_and_floor(instrument, buyer, provider, buyer_web, provider_web):
    factories.place(provider, instrument, "sell", 4, "2.10", hardware="h100")
    factories.place(provider, instrument, "sell", 6, "2.30", hardware="b200")
    _match(instrument)
    url = reverse("web:order_preview", args=[instrument.symbol])
    body = buyer_web.get(url, {"side": "buy", "quantity_mtok": "10", "price": "2.40"}).content.decode()
    assert "24.03 CNY" in body  # 24.00 + the highest fee 0.024 = 24.024, rounded up once
    assert "10 Mtok at avg 2.22" in body  # (4 x 2.10 + 6 x 2.30) / 10
    only_h100 = buyer_web.get(url, {"side": "buy", "quantity_mtok": "10", "price": "2.40", "allowed_hardware": "h100"})
    assert (
        "4 Mtok at avg 2.10" in only_h100.content.decode() and "book has only that much" in only_h100.content.decode()
    )
    sell = provider_web.get(
        url, {"side": "sell", "quantity_mtok": "1", "price": "0.01", "hardware": "h100"}
    ).content.decode()
    assert 'id="preview-floor"' in sell and "below the energy-cost floor" in sell


# --- my orders ----------------------------------------------------------------------------


def test_my_orders_shows_only_my_orders_with_fills(instrument, buyer, other_buyer, provider, buyer_web):
    mine = factories.place(buyer, instrument, "buy", 10, "2.00")
    theirs = factories.place(other_buyer, instrument, "buy", 3, "1.90")
    _match(instrument)
    factories.place(provider, instrument, "sell", 4, "2.00")
    _match(instrument)
    page = buyer_web.get(reverse("web:orders")).content.decode()
    assert f'id="order-{mine.pk}"' in page and f'id="order-{theirs.pk}"' not in page
    assert "Partially Filled" in page
    assert 'data-confirm="Cancel order' in page  # asks before cancelling
    partial = buyer_web.get(reverse("web:orders"), **HX).content.decode()
    assert "<html" not in partial and 'id="open-orders" hx-swap-oob="true"' in partial


def test_cancel_releases_escrow_and_needs_post(instrument, buyer, buyer_web):
    order = factories.place(buyer, instrument, "buy", 10, "2.00")
    _match(instrument)
    url = reverse("web:order_cancel", args=[order.pk])
    assert buyer_web.get(url).status_code == 405
    response = buyer_web.post(url, {"next": instrument.get_absolute_url()})
    assert response.status_code == 302 and response["Location"] == instrument.get_absolute_url()
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert balances_get(account=buyer)["escrow"] == Decimal("0.00")
    again = buyer_web.post(url, follow=True)
    assert "only open orders can be cancelled" in again.content.decode()
    assert_invariants()


def test_cancel_ignores_an_offsite_next(instrument, buyer, buyer_web):
    order = factories.place(buyer, instrument, "buy", 1, "2.00")
    response = buyer_web.post(reverse("web:order_cancel", args=[order.pk]), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("web:orders")


def test_cannot_cancel_another_accounts_order(instrument, other_buyer, buyer_web):
    theirs = factories.place(other_buyer, instrument, "buy", 3, "1.90")
    assert buyer_web.post(reverse("web:order_cancel", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == OrderStatus.OPEN


def test_cancel_needs_csrf(instrument, buyer):
    order = factories.place(buyer, instrument, "buy", 1, "2.00")
    client = Client(enforce_csrf_checks=True)
    client.force_login(member(buyer))
    assert client.post(reverse("web:order_cancel", args=[order.pk])).status_code == 403
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN


# --- contracts ----------------------------------------------------------------------------


def _usage(trade: Trade, tokens: int, n: int = 1) -> None:
    for i in range(n):
        UsageEvent.objects.create(
            provider=trade.seller,
            buyer=trade.buyer,
            instrument=trade.instrument,
            event_id=f"ev-{trade.pk}-{i}",
            occurred_at=max(trade.executed_at, trade.instrument.delivery_start) + dt.timedelta(minutes=1),
            input_tokens=tokens,
            output_tokens=0,
            billable_tokens=tokens,
            payload_hash="x",
        )


def test_contracts_show_delivered_so_far_and_only_my_contracts(
    instrument, buyer, other_buyer, provider, buyer_web, provider_web
):
    mine = _trade(buyer, provider, instrument, mtok=10, price="2.00")
    theirs = _trade(other_buyer, provider, instrument, mtok=5, price="2.00")
    _usage(mine, 1_500_000, n=2)
    page = buyer_web.get(reverse("web:contracts")).content.decode()
    assert f"#{mine.pk}<" in page and f"#{theirs.pk}<" not in page
    assert ">3<" in page  # 3 Mtok delivered of 10
    assert 'aria-label="30% delivered"' in page
    assert 'id="usage-series"' in page
    provider_page = provider_web.get(reverse("web:contracts")).content.decode()
    assert f"#{mine.pk}<" in provider_page and f"#{theirs.pk}<" in provider_page


def test_settled_contracts_show_their_settlement_to_each_side(instrument, buyer, provider, buyer_web, provider_web):
    from django.conf import settings

    from metering.settlement import instrument_settle

    trade = _trade(buyer, provider, instrument, mtok=10, price="2.00")
    _usage(trade, 3_000_000)
    due = instrument.delivery_end + dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS, minutes=1)
    instrument_settle(instrument_id=instrument.pk, now=due)
    settlement = Trade.objects.get(pk=trade.pk).settlement
    assert settlement.delivered_tokens == 3_000_000
    buyer_page = buyer_web.get(reverse("web:contracts"))
    assert [r.trade.pk for r in buyer_page.context["settled_rows"]] == [trade.pk]
    assert not buyer_page.context["open_rows"]
    body = buyer_page.content.decode()
    assert f"refund {settlement.refund:,}" in body
    provider_body = provider_web.get(reverse("web:contracts")).content.decode()
    assert f"payout {settlement.provider_payout:,}" in provider_body
    # The provider page's revenue chart counts the payout on its settlement day.
    revenue = queries.provider_revenue_by_day(account=provider, now=due)
    assert Decimal(revenue["total_settled"]) == settlement.provider_payout
    assert_invariants()


def test_contracts_empty_state(buyer_web):
    assert (
        "A contract is made when one of your orders fills" in buyer_web.get(reverse("web:contracts")).content.decode()
    )


# --- balances and statement ---------------------------------------------------------------


def test_balances_and_statement_with_running_balance(instrument, buyer, other_buyer, buyer_web):
    factories.place(buyer, instrument, "buy", 10, "2.00")
    factories.place(other_buyer, instrument, "buy", 7, "3.00")
    response = buyer_web.get(reverse("web:balances"))
    page = response.content.decode()
    # 10 Mtok x 2.00 + 10 bps = 20.02 reserved (rounded up once)
    assert 'id="bal-available">99,979.98<' in page and 'id="bal-escrow">20.02<' in page
    assert "Escrow Reserve" in page and "Deposit" in page
    assert "100,000.00" in page and "99,979.98" in page  # running balance after deposit, then after the reserve
    assert "7,000,000" not in page and "@ 3.00" not in page  # the other account's order never shows
    entries = list(response.context["entries"])
    assert {e.account.owner_id for e in entries} == {buyer.pk}


def test_statement_filter_and_csv(instrument, buyer, buyer_web, other_buyer):
    order = factories.place(buyer, instrument, "buy", 10, "2.00")
    _match(instrument)
    buyer_web.post(reverse("web:order_cancel", args=[order.pk]))
    filtered = buyer_web.get(reverse("web:balances"), {"ledger_kind": "escrow"})
    kinds = [e.transaction.kind for e in filtered.context["entries"]]
    assert kinds == ["escrow_release", "escrow_reserve"]
    assert [e.balance_after for e in filtered.context["entries"]] == [Decimal("0.00"), Decimal("20.02")]
    response = buyer_web.get(reverse("web:statement_csv"), {"transaction_kind": "escrow_release"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:6] == ["time_utc", "transaction", "kind", "balance", "amount", "running_balance"]
    assert sorted((r[3], r[4]) for r in rows[1:]) == [("available", "20.02"), ("escrow", "-20.02")]
    everything = buyer_web.get(reverse("web:statement_csv"))
    text = b"".join(everything.streaming_content).decode()
    assert other_buyer.slug not in text and text.count("\n") == 1 + 5  # deposit + reserve (2) + release (2)


def test_balances_empty_state_tells_how_to_get_funds(catalog):
    poor = factories.AccountFactory(is_buyer=True, slug="penniless")
    page = logged_in(member(poor)).get(reverse("web:balances")).content.decode()
    assert "request a deposit" in page


# --- provider page ------------------------------------------------------------------------


def test_provider_page_listings_capacity_revenue_and_floor(instrument, buyer, provider, provider_web):
    _trade(buyer, provider, instrument, mtok=4, price="2.00")
    factories.place(provider, instrument, "sell", 6, "2.50", hardware="h200")
    _match(instrument)
    response = provider_web.get(reverse("web:provider"))
    page = response.content.decode()
    cap = response.context["capacity"][0]
    assert (cap.listed, cap.sold, cap.open) == (10_000_000, 4_000_000, 6_000_000)
    assert 'aria-label="40% sold"' in page
    assert response.context["revenue"]["total_sold"] == "8.00"
    assert 'id="revenue-series"' in page
    assert "Energy-cost floor per Mtok" in page and "ascend-910c" in page


def test_provider_page_for_a_buyer_says_it_is_for_providers(buyer_web):
    page = buyer_web.get(reverse("web:provider")).content.decode()
    assert "This account is a buyer only" in page


# --- API keys -----------------------------------------------------------------------------


def test_api_key_is_shown_once_and_then_only_its_prefix(buyer, buyer_web):
    response = buyer_web.post(reverse("web:api_keys"), {"name": "bot", "scopes": ["read", "trade"]})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    raw = response.context["created"]["raw"]
    key = ApiKey.objects.get(account=buyer, name="bot")
    assert raw.startswith(f"cy_{key.prefix}_") and key.scopes == ["read", "trade"]
    assert raw in response.content.decode()
    listing = buyer_web.get(reverse("web:api_keys")).content.decode()
    assert raw not in listing and f"cy_{key.prefix}_…" in listing


def test_api_key_scope_errors_beside_the_field(buyer, buyer_web):
    response = buyer_web.post(reverse("web:api_keys"), {"name": "meter", "scopes": ["meter"]})
    assert response.status_code == 400
    assert response.context["form"].errors["scopes"] == ["Only a provider account can have the meter scope."]
    assert not ApiKey.objects.filter(account=buyer).exists()


def test_revoke_my_key_but_not_anothers(buyer, other_buyer, buyer_web):
    mine, _ = factories.api_key(buyer)
    theirs, _ = factories.api_key(other_buyer)
    page = buyer_web.get(reverse("web:api_keys")).content.decode()
    assert mine.prefix in page and theirs.prefix not in page
    assert buyer_web.post(reverse("web:api_key_revoke", args=[theirs.pk])).status_code == 404
    assert buyer_web.post(reverse("web:api_key_revoke", args=[mine.pk])).status_code == 302
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None


def test_api_key_create_needs_csrf(buyer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member(buyer))
    assert client.post(reverse("web:api_keys"), {"scopes": ["read"]}).status_code == 403
    assert not ApiKey.objects.exists()


# --- assets -------------------------------------------------------------------------------


def test_pages_use_only_local_assets(instrument):
    page = Client().get(instrument.get_absolute_url()).content.decode()
    assert "/static/vendor/htmx/htmx.min.js" in page and "/static/vendor/chartjs/chart.umd.js" in page
    assert "cdn" not in page.lower() and "https://" not in page
    from django.contrib.staticfiles import finders

    for path in (
        "vendor/htmx/htmx.min.js",
        "vendor/htmx/LICENSE",
        "vendor/chartjs/chart.umd.js",
        "vendor/chartjs/LICENSE.md",
        "css/site.css",
        "js/site.js",
    ):
        assert finders.find(path), path
