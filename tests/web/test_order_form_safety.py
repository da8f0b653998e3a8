"""The web order form refuses ambiguous numbers and places a double-clicked order once."""

from __future__ import annotations

import pytest
from django.urls import reverse

from marketplace.models import Order
from metering.models import LedgerEntry
from tests.web.conftest import logged_in, member

pytestmark = pytest.mark.django_db


def _post(web, inst, **fields):
    data = {"side": "buy", "quantity_mtok": "2", "price": "1.50", "time_in_force": "gtc", **fields}
    return web.post(reverse("web:order_place", args=[inst.symbol]), data)


@pytest.mark.parametrize(
    "field, value",
    [("price", "7,50"), ("price", "2,00"), ("price", "1 000"), ("price", "1_000"), ("quantity_mtok", "1,5"),
     ("quantity_mtok", "1,000"), ("quantity_mtok", "1'000"), ("price", "7\u00a050")],
)
def test_a_comma_or_separator_is_a_field_error_and_places_nothing(instrument, buyer, field, value):
    web = logged_in(member(buyer))
    entries = LedgerEntry.objects.count()
    r = _post(web, instrument, **{field: value})
    assert r.status_code == 400
    errors = r.context["form"].errors
    assert "point for decimals and no thousands separator" in errors[field][0]
    assert not Order.objects.exists() and LedgerEntry.objects.count() == entries


def test_each_render_has_a_fresh_token_and_a_resent_form_places_once(instrument, buyer):
    web = logged_in(member(buyer))
    page = web.get(instrument.get_absolute_url())
    token = page.context["form"].initial["form_token"]
    assert token and token != web.get(instrument.get_absolute_url()).context["form"].initial["form_token"]
    assert f'name="form_token" value="{token}"' in page.content.decode()

    first = _post(web, instrument, form_token=token)
    second = _post(web, instrument, form_token=token)  # the double click
    assert first.status_code == second.status_code == 302
    order = Order.objects.get()
    assert order.client_order_id == f"web-{token}"
    assert LedgerEntry.objects.filter(transaction__key=f"reserve:{order.pk}").count() == 2  # one posting, 2 legs

    # A new render is a new order, even with the same values.
    _post(web, instrument, form_token=web.get(instrument.get_absolute_url()).context["form"].initial["form_token"])
    assert Order.objects.count() == 2


def test_a_typed_client_order_id_reused_is_still_an_error(instrument, buyer):
    web = logged_in(member(buyer))
    _post(web, instrument, client_order_id="bot-1", form_token="a" * 32)
    r = _post(web, instrument, client_order_id="bot-1", form_token="b" * 32)
    assert r.status_code == 400
    assert "already used" in str(r.context["form"].errors)
    assert Order.objects.count() == 1


def _traded_at(instrument, buyer, price: str) -> None:
    from marketplace.market_snapshot import snapshot_publish
    from pricing.services import instrument_match
    from tests import factories

    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.place(provider, instrument, "sell", 1, price)
    factories.place(buyer, instrument, "buy", 1, price)
    instrument_match(instrument_id=instrument.pk)
    snapshot_publish(instrument_id=instrument.pk)


def test_a_price_far_from_the_market_asks_for_confirmation_then_places_once(instrument, buyer):
    _traded_at(instrument, buyer, "2.00")
    web = logged_in(member(buyer))
    before, entries = Order.objects.count(), LedgerEntry.objects.count()
    r = _post(web, instrument, price="20.00", form_token="c" * 32)
    assert r.status_code == 400
    page = r.content.decode()
    assert 'id="band-confirm"' in page and "1.50 to 2.50" in page and "Place at 20.00 anyway" in page
    assert f'value="{"c" * 32}"' in page  # the same token: a confirmed double click still places once
    assert (Order.objects.count(), LedgerEntry.objects.count()) == (before, entries)

    confirmed = _post(web, instrument, price="20.00", form_token="c" * 32, confirm_price="1")
    again = _post(web, instrument, price="20.00", form_token="c" * 32, confirm_price="1")
    assert confirmed.status_code == again.status_code == 302
    assert Order.objects.filter(price="20.00", client_order_id=f"web-{'c' * 32}").count() == 1


def test_a_price_inside_the_band_asks_nothing(instrument, buyer):
    _traded_at(instrument, buyer, "2.00")
    web = logged_in(member(buyer))
    r = _post(web, instrument, price="2.20")
    assert r.status_code == 302
    assert Order.objects.filter(price="2.20").count() == 1
