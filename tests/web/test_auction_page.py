"""An instrument in its day-ahead call auction says so: phase, gate closure, indicative price
and volume, and how the viewer's own orders stand in it; the order confirmation says when the
order will trade."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from pricing.services import auction_clear, auction_open, instrument_match
from tests import factories
from tests.web.conftest import logged_in, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def auction_book(catalog):
    # Two days ahead: the gate (12:00 UTC the day before delivery) is always still in the future.
    inst = factories.open_instrument(day=timezone.now().date() + dt.timedelta(days=2))
    auction_open(instrument=inst)
    return inst


def test_auction_book_shows_phase_gate_indicative_price_and_own_orders(auction_book, buyer, provider):
    web = logged_in(member(buyer))
    page = web.get(auction_book.get_absolute_url()).content.decode()
    assert "Day-ahead call auction: collecting orders" in page
    assert "not matched one by one" in page
    gate = auction_book.call_auction.gate_closure_at
    assert f'data-countdown-to="{gate.isoformat()}"' in page

    factories.place(provider, auction_book, "sell", 5, "1.00")
    mine = factories.place(buyer, auction_book, "buy", 3, "1.20")
    unmatched = factories.place(buyer, auction_book, "buy", 2, "0.50")
    instrument_match(instrument_id=auction_book.pk)  # collecting: the matcher leaves them pending
    page = web.get(auction_book.get_absolute_url()).content.decode()
    # One uniform price: 3 Mtok clear between 1.00 and 1.20; the buy at 0.50 trades nothing.
    assert 'id="auction-volume">3 <span' in page
    assert f'id="auction-order-{mine.pk}"' in page and f'id="auction-order-{unmatched.pk}"' in page
    row = page.split(f'id="auction-order-{mine.pk}"')[1].split("</tr>")[0]
    assert "3 Mtok" in row
    row = page.split(f'id="auction-order-{unmatched.pk}"')[1].split("</tr>")[0]
    assert "nothing at this price" in row
    # Another buyer sees the auction but not our orders.
    other = logged_in(member(factories.AccountFactory(is_buyer=True), username="someone-else")).get(
        auction_book.get_absolute_url()
    ).content.decode()
    assert "Indicative price" in other and f"auction-order-{mine.pk}" not in other


def test_auction_order_confirmation_says_when_it_trades(auction_book, buyer):
    web = logged_in(member(buyer))
    r = web.post(
        reverse("web:order_place", args=[auction_book.symbol]),
        {"side": "buy", "quantity_mtok": "2", "price": "1.50", "time_in_force": "gtc"},
        HTTP_HX_REQUEST="true",
    )
    text = r.content.decode()
    assert "joins the day-ahead call auction" in text
    assert "matched within seconds" not in text


def test_cleared_auction_shows_the_result(auction_book, buyer, provider):
    factories.place(provider, auction_book, "sell", 4, "1.00")
    factories.place(buyer, auction_book, "buy", 4, "1.10")
    auction_clear(instrument_id=auction_book.pk, now=auction_book.call_auction.gate_closure_at)
    page = logged_in(member(buyer)).get(auction_book.get_absolute_url()).content.decode()
    assert "Day-ahead call auction: cleared" in page
    auction_book.call_auction.refresh_from_db()
    assert auction_book.call_auction.clearing_price in (Decimal("1.00"), Decimal("1.05"), Decimal("1.10"))
    assert 'id="auction-volume">4</strong>' in page


def test_continuous_book_has_no_auction_panel(instrument, buyer):
    page = logged_in(member(buyer)).get(instrument.get_absolute_url()).content.decode()
    assert "auction-panel" not in page
