"""One price format, whatever way the price came in: "2", "2.00" and a stored 1.9000 read the
same on every page, in the API's price strings and in statement memos (marketplace/display.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.template import Context, Template

from marketplace import display
from marketplace.api.fields import price_str
from metering.models import LedgerTransaction
from tests import factories


@pytest.mark.parametrize(
    "value, text",
    [
        (Decimal("2"), "2.00"),
        (Decimal("2.00"), "2.00"),
        (Decimal("1.9000"), "1.90"),
        (Decimal("0.1234"), "0.1234"),
        (Decimal("0.1230"), "0.123"),
        (Decimal("1234.5"), "1234.50"),  # no separator: a price shown can be typed back
        (Decimal("-0.05"), "-0.05"),
        (Decimal("1E+1"), "10.00"),
    ],
)
def test_a_price_reads_the_same_in_templates_and_the_api(value, text):
    assert display.price_text(value) == text
    assert price_str(value) == text
    assert Template("{% load web_tags %}{{ p|price }}").render(Context({"p": value})) == text


@pytest.mark.parametrize(
    "value, text",
    [(Decimal("495806.800000000"), "495,806.80"), (Decimal("-1234.5"), "-1,234.50"), (Decimal("0"), "0.00")],
)
def test_money_has_two_decimals_and_thousands_separators(value, text):
    assert display.money_text(value) == text
    assert Template("{% load web_tags %}{{ m|money }}").render(Context({"m": value})) == text


def test_no_price_is_a_dash_on_pages_and_null_in_the_api():
    assert display.price_text(None) == display.money_text(None) == "–"
    assert price_str(None) is None


@pytest.mark.django_db
@pytest.mark.parametrize("typed", ["2", "2.0", "2.0000"])
def test_the_escrow_memo_shows_the_price_in_the_one_format(instrument, buyer, typed):
    order = factories.place(buyer, instrument, "buy", 1, typed)
    memo = LedgerTransaction.objects.get(key=f"reserve:{order.pk}").memo
    assert "@ 2.00 on" in memo, memo


@pytest.mark.django_db
def test_the_api_and_the_page_show_a_stored_price_alike(instrument, buyer, buyer_api):
    from marketplace.models import Order
    from tests.web.conftest import logged_in, member

    order = factories.place(buyer, instrument, "buy", 1, "1.9")
    assert Order.objects.get(pk=order.pk).price == Decimal("1.9")  # stored as 1.9000
    assert buyer_api.get(f"/api/v1/orders/{order.pk}").json()["price"] == "1.90"
    page = logged_in(member(buyer)).get("/orders/").content.decode()
    assert ">1.90<" in page and "1.9000" not in page
