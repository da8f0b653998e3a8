"""The instruments API lists the nearest delivery first, like the markets page, across pages."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace import services
from marketplace.models import Instrument
from marketplace.web import queries

pytestmark = pytest.mark.django_db


def test_instruments_api_and_markets_page_share_delivery_order(catalog):
    services.instruments_roll(days_ahead=3)
    client = APIClient()
    symbols, url = [], "/api/v1/instruments?limit=7"  # several pages: the cursor keeps the order
    while url:
        page = client.get(url).json()
        symbols += [r["symbol"] for r in page["results"]]
        url = page["next"]
    days = [s.rsplit(":", 1)[1] for s in symbols]
    assert len(symbols) == len(set(symbols)) == Instrument.objects.count() > 7
    assert days == sorted(days) and days[0] == timezone.now().date().isoformat()
    assert days[-1] == max(Instrument.objects.values_list("delivery_date", flat=True)).isoformat()
    board_days = [r.instrument.delivery_date.isoformat() for r in queries.market_overview()]
    assert board_days == sorted(board_days) and set(board_days) == set(days)
