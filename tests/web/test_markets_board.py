"""The markets page is a board (tier x region for the spot day) and a forward curve."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Region, Tier
from marketplace.web import queries
from pricing.services import instrument_match
from tests import factories

pytestmark = pytest.mark.django_db


def _trade(buyer, seller, inst, price: str) -> None:
    factories.place(seller, inst, "sell", 1, price)
    factories.place(buyer, inst, "buy", 1, price)
    instrument_match(instrument_id=inst.pk)


def test_board_has_a_cell_per_tier_and_region_with_last_price_andsparkline_points(client, catalog, buyer, provider):
    today = timezone.now().date()
    spot = factories.open_instrument(tier="standard", region="cn-west-1", day=today)
    for tier in Tier.objects.all():
        for region in Region.objects.all():
            factories.open_instrument(tier=tier.code, region=region.code, day=today)
    _trade(buyer, provider, spot, "1.00")
    _trade(buyer, provider, spot, "1.30")
    page = client.get(reverse("web:markets")).content.decode()
    board = page.split('id="spot-board"')[1].split("</table>")[0]
    assert board.count('class="board-cell"') == Tier.objects.count() * Region.objects.count()
    cell = board.split(f'data-symbol="{spot.symbol}"')[1].split("</td>")[0]
    assert '<span class="board-last">1.30</span>' in cell
    assert "+0.30" in cell


def test_sparkline_follows_hourly_closes_and_forward_curve_averages_regions(catalog, buyer, provider):
    now = timezone.now()
    spot = factories.open_instrument(tier="standard", region="cn-west-1", day=now.date())
    fwd_a = factories.open_instrument(tier="standard", region="cn-west-1", day=now.date() + dt.timedelta(days=3))
    fwd_b = factories.open_instrument(tier="standard", region="us-east-1", day=now.date() + dt.timedelta(days=3))
    _trade(buyer, provider, spot, "1.00")
    _trade(buyer, provider, fwd_a, "2.00")
    _trade(buyer, provider, fwd_b, "3.00")
    board = queries.market_board(now=now + dt.timedelta(seconds=1))
    cell = board.cells[("standard", "cn-west-1")]
    assert cell.row.last == Decimal("1.00") and cell.spark == ""  # one hour of trades: no line yet
    curve = board.curve
    day = (now.date() + dt.timedelta(days=3)).isoformat()
    standard = next(d for d in curve["datasets"] if d["label"] == "standard")
    assert standard["data"][curve["labels"].index(day)] == "2.50"
    # Two hours with trades draw a line of two points, the later one higher (y is inverted).
    later = queries.sparkline_points([Decimal("1.00"), Decimal("2.00")])
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in later.split())
    assert x0 < x1 and y1 < y0


def test_forward_curve_data_is_on_the_page(client, catalog, buyer, provider):
    fwd = factories.open_instrument(tier="frontier", region="cn-west-1")
    _trade(buyer, provider, fwd, "8.00")
    page = client.get(reverse("web:markets")).content.decode()
    data = json.loads(re.search(r'<script id="forward-curve" type="application/json">(.*?)</script>', page, re.S).group(1))
    frontier = next(d for d in data["datasets"] if d["label"] == "frontier")
    assert "8.00" in frontier["data"]
